"""Scoring a policy's samples with a model of another tokenizer: policy ids → text → the scorer's ids.

A reward or cost model with the policy's vocabulary reads the policy's token ids as they are. One with another
vocabulary (another model family, a BERT-style classifier) would read them as garbage, so its input is rebuilt
from text: the prompt and the response are decoded with the policy's tokenizer and encoded again with the
scorer's, through the scorer's chat template when it has one.

The decoded prompt carries the policy's prompt format. When the policy has a chat template, the user's message
is recovered by cutting the text the template puts around it, so that the scorer's own template wraps the bare
message; a prompt in another format (the PKU template, plain text) is passed as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_SENTINEL = "\u2063ray-align-message\u2063"  # never produced by decoding real prompts


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether two tokenizers map every token to the same id (their names or classes do not matter)."""
    return a is b or a.get_vocab() == b.get_vocab()


def template_frame(tokenizer: Any) -> tuple[str, str] | None:
    """(text before, text after) the user's message in the tokenizer's chat template with the generation
    prompt, or None when it has no template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    before, found, after = text.partition(_SENTINEL)
    return (before, after) if found else None


def user_message(prompt_text: str, frame: tuple[str, str] | None) -> str:
    """The message inside ``prompt_text`` when it is framed by ``frame``, else the text unchanged."""
    if frame is None:
        return prompt_text
    before, after = frame
    # a BOS the template writes may or may not be in the ids (tokenizers add it themselves): compare without it
    for head in (before, before.lstrip(), ""):
        if head and prompt_text.startswith(head) and prompt_text.endswith(after):
            return prompt_text[len(head) : len(prompt_text) - len(after)]
    return prompt_text


class TokenBridge:
    """Re-encodes (prompt ids, response ids) of the policy's tokenizer for a scorer's tokenizer.

    ``encode`` returns one id list per sample: the scorer's chat template over [user, assistant] when it has
    one, else the text pair in the tokenizer's own format when it has a separator token
    (``[CLS] prompt [SEP] response [SEP]`` for a BERT tokenizer), else prompt + response as one text (decoder
    tokenizers). Sequences longer than ``max_length`` keep their first token and their end (the response is what
    is judged).
    """

    def __init__(self, policy: Any, scorer: Any, max_length: int | None = None) -> None:
        self.policy, self.scorer = policy, scorer
        self.frame = template_frame(policy)
        self.chat = bool(getattr(scorer, "chat_template", None))
        self.pairs = getattr(scorer, "sep_token", None) is not None
        limit = getattr(scorer, "model_max_length", None) or 0
        self.max_length = max_length or (limit if 0 < limit < 1_000_000 else None)

    def texts(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> tuple[list[str], list[str]]:
        """The prompts (as user messages when the policy's template frames them) and responses, as text."""
        framed = self.policy.batch_decode([list(p) for p in prompt_ids], skip_special_tokens=False)
        plain = self.policy.batch_decode([list(p) for p in prompt_ids], skip_special_tokens=True)
        prompts = [
            message if (message := user_message(f, self.frame)) != f else p for f, p in zip(framed, plain)
        ]
        responses = self.policy.batch_decode([list(r) for r in response_ids], skip_special_tokens=True)
        return prompts, responses

    def encode_text(self, prompt: str, response: str) -> list[int]:
        if self.chat:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            ids = self.scorer.apply_chat_template(messages, tokenize=True, return_dict=False)
            ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        elif self.pairs:  # an encoder's own pair format
            ids = list(self.scorer(prompt, response)["input_ids"])
        else:  # a decoder reads the conversation as one text (a pair would repeat BOS between the two)
            ids = list(self.scorer(prompt + response)["input_ids"])
        if self.max_length and len(ids) > self.max_length:
            ids = ids[:1] + ids[len(ids) - self.max_length + 1 :]
        return ids

    def encode(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> list[list[int]]:
        prompts, responses = self.texts(prompt_ids, response_ids)
        return [self.encode_text(p, r) for p, r in zip(prompts, responses, strict=True)]


def reads_text_pairs(tokenizer: Any) -> bool:
    """Whether a scorer with this tokenizer reads (prompt, response) as a text pair: an encoder's tokenizer (a
    separator token, no chat template). Its vocabulary is never a causal policy's, so it is always scored
    through the bridge; a score model trained here from such a checkpoint is trained on that same encoding."""
    return getattr(tokenizer, "sep_token", None) is not None and not getattr(tokenizer, "chat_template", None)


def text_pair_examples(
    pairs: Any, tokenizer: Any, max_length: int | None = None
) -> list[dict[str, dict[str, list[int]]]]:
    """A pairs view (prompt, chosen, rejected) encoded as the bridge encodes a sample for this scorer: one
    {"chosen": example, "rejected": example} per row, the prompt part ending at the first separator."""
    from ray_align.data.formatting import join_example

    bridge = TokenBridge(tokenizer, tokenizer, max_length)

    def example(prompt: str, response: str) -> dict[str, list[int]]:
        ids = bridge.encode_text(prompt, response)
        cut = ids.index(tokenizer.sep_token_id) + 1 if tokenizer.sep_token_id in ids[:-1] else 1
        return join_example(ids[:cut], ids[cut:])

    return [
        {"chosen": example(row["prompt"], row["chosen"]), "rejected": example(row["prompt"], row["rejected"])}
        for row in pairs.select_columns(["prompt", "chosen", "rejected"])
    ]


def bridge_for(policy: Any, scorer: Any) -> TokenBridge | None:
    """A bridge when the scorer's vocabulary differs from the policy's; None when ids pass through untouched."""
    return None if same_vocabulary(policy, scorer) else TokenBridge(policy, scorer)
