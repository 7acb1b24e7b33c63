"""Prompt templates, (prompt, response) tokenisation with a response mask, and padding collates.

Templates (selected by name):
    "pku"   BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:     (Safe RLHF / PKU-SafeRLHF models)
            the response follows after one space; the tokenizer adds its own special tokens (e.g. BOS).
    "chat"  tokenizer.apply_chat_template([{"role": "user", ...}], add_generation_prompt=True); the template
            owns the special tokens, so the text is encoded with add_special_tokens=False.

Prompt and response are encoded separately and concatenated as ids, as a generator would produce them, so the
response mask is exact: 1 on every response token (EOS included), 0 on prompt tokens. Responses end with EOS
unless `append_eos=False` (config `data.response_eos`). When prompt + response
is longer than `max_length`, the prompt is cut from the left first (a leading BOS is kept) down to
`min_prompt_tokens`, then the response is cut from the right (losing its EOS: the answer did not end there).

Collates right-pad to [B, T] and give `response_mask` [B, T-1] for next-token targets, following the
project-wide convention logprobs[:, t] = log p(input_ids[:, t+1] | input_ids[:, :t+1]):
response_mask[:, t] = 1 iff token t+1 is a response token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import datasets

if TYPE_CHECKING:  # torch is imported where a batch is built, so reading and validating data stays light
    import torch

TemplateName = Literal["pku", "chat"]
TEMPLATES: tuple[str, ...] = ("pku", "chat")
PKU_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
DEFAULT_MIN_PROMPT_TOKENS = 16

Example = dict[str, list[int]]


# ---------------------------------------------------------------------------------------------- text


def format_prompt(
    prompt: str, template: TemplateName = "pku", tokenizer: Any = None, system: str | None = None
) -> str:
    """The prompt text to condition on; "chat" needs a tokenizer with a chat template."""
    if template == "pku":
        if system is not None:
            raise ValueError("the 'pku' template has no system message; use template='chat'")
        return PKU_TEMPLATE.format(prompt=prompt)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "template 'chat' needs a tokenizer with a chat_template; use template='pku' otherwise"
            )
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def format_response(response: str, template: TemplateName = "pku") -> str:
    """The response text as appended after the prompt: "pku" puts one space after 'ASSISTANT:'."""
    if template == "pku" and not response[:1].isspace():
        return " " + response
    return response


# ---------------------------------------------------------------------------------------------- ids


def encode_prompt(
    tokenizer: Any, prompt: str, template: TemplateName = "pku", system: str | None = None
) -> list[int]:
    """Token ids of the formatted prompt (untruncated)."""
    text = format_prompt(prompt, template, tokenizer, system)
    return list(tokenizer(text, add_special_tokens=template == "pku")["input_ids"])


def encode_response(
    tokenizer: Any, response: str, template: TemplateName = "pku", append_eos: bool = True
) -> list[int]:
    """Token ids of the response followed by EOS (untruncated).

    append_eos=False leaves EOS out: for responses that generation cuts at a length instead of ending them
    (e.g. the one-token task's max_tokens = 1), so trained and generated responses are the same tokens.
    """
    ids = list(tokenizer(format_response(response, template), add_special_tokens=False)["input_ids"])
    if not append_eos:
        if not ids:
            raise ValueError("an empty response has no tokens to train without EOS; drop it or keep data.response_eos")
        return ids
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token; responses must end with EOS (or set data.response_eos=false)")
    return [*ids, tokenizer.eos_token_id]


def fit_lengths(n_prompt: int, n_response: int, max_length: int, min_prompt_tokens: int) -> tuple[int, int]:
    """(prompt tokens kept, response tokens kept) so that their sum is at most `max_length`.

    The prompt shrinks first, down to min(n_prompt, min_prompt_tokens); the response gives up the rest.
    """
    if n_prompt < 1 or n_response < 1:
        raise ValueError(f"need at least one prompt and one response token, got {n_prompt} and {n_response}")
    if n_prompt + n_response <= max_length:
        return n_prompt, n_response
    floor = min(n_prompt, min_prompt_tokens)
    if max_length <= floor:
        raise ValueError(f"max_length={max_length} leaves no room for a response after {floor} prompt tokens")
    keep_prompt = max(floor, max_length - n_response)
    return keep_prompt, max_length - keep_prompt


def truncate_left(ids: list[int], keep: int, bos_token_id: int | None) -> list[int]:
    """The last `keep` ids, keeping a leading BOS (a model conditioned without its BOS drifts)."""
    if keep >= len(ids):
        return list(ids)
    if bos_token_id is not None and ids and ids[0] == bos_token_id and keep >= 1:
        return [ids[0], *ids[len(ids) - keep + 1 :]]
    return list(ids[len(ids) - keep :])


def join_example(prompt_ids: list[int], response_ids: list[int]) -> Example:
    """input_ids, attention_mask and response_mask (1 exactly on response tokens), all of length P + R."""
    return {
        "input_ids": [*prompt_ids, *response_ids],
        "attention_mask": [1] * (len(prompt_ids) + len(response_ids)),
        "response_mask": [0] * len(prompt_ids) + [1] * len(response_ids),
    }


def _check_lengths(max_length: int, min_prompt_tokens: int) -> None:
    if min_prompt_tokens < 1 or max_length <= min_prompt_tokens:
        raise ValueError(f"need 1 <= min_prompt_tokens < max_length, got {min_prompt_tokens}, {max_length}")


def tokenize_prompt_response(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    template: TemplateName = "pku",
    max_length: int = 512,
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS,
    append_eos: bool = True,
) -> Example:
    """One (prompt, response) example of at most `max_length` tokens (see the module doc for truncation)."""
    _check_lengths(max_length, min_prompt_tokens)
    prompt_ids = encode_prompt(tokenizer, prompt, template)
    response_ids = encode_response(tokenizer, response, template, append_eos)
    keep_p, keep_r = fit_lengths(len(prompt_ids), len(response_ids), max_length, min_prompt_tokens)
    return join_example(truncate_left(prompt_ids, keep_p, tokenizer.bos_token_id), response_ids[:keep_r])


def tokenize_pair(
    tokenizer: Any,
    prompt: str,
    chosen: str,
    rejected: str,
    *,
    template: TemplateName = "pku",
    max_length: int = 512,
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS,
    append_eos: bool = True,
) -> dict[str, Example]:
    """{"chosen": example, "rejected": example} sharing one prompt cut (fitted to the longer response), so a
    preference loss compares the two responses under the same conditioning."""
    _check_lengths(max_length, min_prompt_tokens)
    prompt_ids = encode_prompt(tokenizer, prompt, template)
    responses = {"chosen": encode_response(tokenizer, chosen, template, append_eos)}
    responses["rejected"] = encode_response(tokenizer, rejected, template, append_eos)
    longest = max(len(ids) for ids in responses.values())
    keep_p, keep_r = fit_lengths(len(prompt_ids), longest, max_length, min_prompt_tokens)
    kept_prompt = truncate_left(prompt_ids, keep_p, tokenizer.bos_token_id)
    return {name: join_example(kept_prompt, ids[:keep_r]) for name, ids in responses.items()}


def tokenize_pairs(pairs: datasets.Dataset, tokenizer: Any, **kwargs: Any) -> list[dict[str, Example]]:
    """`tokenize_pair` over a pairs view (columns prompt, chosen, rejected); kwargs go to `tokenize_pair`."""
    return [
        tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], **kwargs)
        for row in pairs.select_columns(["prompt", "chosen", "rejected"])
    ]


def tokenize_prompt(
    tokenizer: Any, prompt: str, *, template: TemplateName = "pku", max_prompt_length: int = 512
) -> list[int]:
    """Prompt ids for generation, cut from the left (keeping BOS) to at most `max_prompt_length`."""
    return truncate_left(
        encode_prompt(tokenizer, prompt, template), max_prompt_length, tokenizer.bos_token_id
    )


# ---------------------------------------------------------------------------------------------- collate


def tokenizer_pad_id(tokenizer: Any, pad_token: str | None = None) -> int:
    """The id padding uses: ``pad_token`` (``models.pad_token``) when given, else the tokenizer's pad token,
    else its EOS token (Llama and Mistral tokenizers ship without a pad token; padded positions are masked, so
    any real id serves). An error when there is none of these."""
    if pad_token is not None:
        ids = tokenizer.convert_tokens_to_ids([pad_token])
        if not ids or ids[0] is None or ids[0] == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"models.pad_token {pad_token!r} is not a token of the policy's tokenizer")
        return int(ids[0])
    for pad_id in (tokenizer.pad_token_id, getattr(tokenizer, "eos_token_id", None)):
        if pad_id is not None:
            return int(pad_id)
    raise ValueError(
        "tokenizer has no pad_token and no eos_token; set models.pad_token to a token of its vocabulary"
    )


def collate(examples: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into a batch.

    Returns input_ids [B, T] (int64, padded with `pad_token_id`), attention_mask [B, T] (int64) and
    response_mask [B, T-1] (float32), where response_mask[:, t] is the response mask of token t+1 — the
    target of logprobs[:, t]. T is the longest example.
    """
    import torch

    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    width = max(len(ex["input_ids"]) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    token_mask = torch.zeros((len(examples), width), dtype=torch.float32)
    for i, ex in enumerate(examples):
        n = len(ex["input_ids"])
        if len(ex["attention_mask"]) != n or len(ex["response_mask"]) != n:
            raise ValueError(f"example {i}: input_ids, attention_mask and response_mask differ in length")
        input_ids[i, :n] = torch.tensor(ex["input_ids"], dtype=torch.long)
        attention_mask[i, :n] = torch.tensor(ex["attention_mask"], dtype=torch.long)
        token_mask[i, :n] = torch.tensor(ex["response_mask"], dtype=torch.float32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": token_mask[:, 1:].contiguous(),
    }


def collate_pairs(
    pairs: Sequence[Mapping[str, Mapping[str, Sequence[int]]]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Batch of P pairs as 2P rows: [chosen_0 .. chosen_{P-1}, rejected_0 .. rejected_{P-1}] (see `collate`).

    A loss splits the per-row results with `x[:P], x[P:]`.
    """
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    return collate(rows, pad_token_id)
