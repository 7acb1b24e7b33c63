"""Prompt templates, tokenisation with a response mask, truncation, and the padding collates."""

from __future__ import annotations

import pytest
import torch
from data_fixtures import tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_align.data.formatting import (
    PKU_TEMPLATE,
    collate,
    collate_pairs,
    fit_lengths,
    format_prompt,
    format_response,
    tokenize_pair,
    tokenize_prompt,
    tokenize_prompt_response,
    tokenizer_pad_id,
    truncate_left,
)

PROMPT = "how do I bake bread?"
RESPONSE = "Mix flour, water and yeast."


def _ids(text: str, tok) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------- templates


def test_pku_template_text():
    assert format_prompt("hi there") == "BEGINNING OF CONVERSATION: USER: hi there ASSISTANT:"
    assert PKU_TEMPLATE.format(prompt="x").endswith("ASSISTANT:")


def test_chat_template_uses_the_tokenizer_with_a_generation_prompt():
    """The fixture template renders '<|role|>content\\n' per message, then '<|assistant|>'."""
    tok = tiny_tokenizer()
    assert format_prompt("hi", "chat", tok) == "<|user|>hi\n<|assistant|>"
    assert (
        format_prompt("hi", "chat", tok, system="be safe") == "<|system|>be safe\n<|user|>hi\n<|assistant|>"
    )


def test_pku_response_follows_after_one_space():
    """'ASSISTANT:' + ' answer'; a response that already starts with whitespace gets no second one."""
    assert format_response("Sure.") == " Sure."
    assert format_response(" Sure.") == " Sure."
    assert format_response("Sure.", "chat") == "Sure."


def test_template_errors():
    with pytest.raises(ValueError, match="unknown template"):
        format_prompt("hi", "alpaca")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chat_template"):
        format_prompt("hi", "chat", None)


# ------------------------------------------------------------------------------------------- tokenisation


def test_untruncated_example_masks_exactly_the_response_and_eos():
    """prompt ids = encode(template text); response ids = encode(' ' + response) + [eos=2]."""
    tok = tiny_tokenizer()
    ex = tokenize_prompt_response(tok, PROMPT, RESPONSE, max_length=512)
    prompt_ids = _ids(format_prompt(PROMPT), tok)
    response_ids = [*_ids(" " + RESPONSE, tok), 2]
    assert ex["input_ids"] == prompt_ids + response_ids
    assert ex["response_mask"] == [0] * len(prompt_ids) + [1] * len(response_ids)
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])
    masked = [i for i, m in zip(ex["input_ids"], ex["response_mask"]) if m]
    assert tok.decode(masked) == " " + RESPONSE + "<eos>"


def test_chat_template_example_decodes_back():
    tok = tiny_tokenizer()
    ex = tokenize_prompt_response(tok, PROMPT, RESPONSE, template="chat")
    n_prompt = ex["response_mask"].index(1)
    assert tok.decode(ex["input_ids"][:n_prompt]) == f"<|user|>{PROMPT}\n<|assistant|>"
    assert tok.decode(ex["input_ids"][n_prompt:]) == RESPONSE + "<eos>"


@pytest.mark.parametrize(
    ("n_prompt", "n_response", "max_length", "min_prompt", "expected"),
    [
        (10, 5, 20, 4, (10, 5)),  # fits: nothing cut
        (10, 5, 12, 4, (7, 5)),  # prompt cut to 12 - 5 = 7 >= 4, response intact
        (10, 15, 12, 4, (4, 8)),  # prompt floor 4, response gets 12 - 4 = 8
        (3, 15, 12, 4, (3, 9)),  # short prompt: floor = min(3, 4) = 3
    ],
)
def test_fit_lengths_closed_form(n_prompt, n_response, max_length, min_prompt, expected):
    assert fit_lengths(n_prompt, n_response, max_length, min_prompt) == expected


def test_fit_lengths_needs_room_for_a_response():
    with pytest.raises(ValueError, match="no room"):
        fit_lengths(10, 5, 4, 4)


def test_truncate_left_keeps_a_leading_bos():
    assert truncate_left([1, 10, 11, 12, 13], 3, bos_token_id=1) == [1, 12, 13]
    assert truncate_left([10, 11, 12, 13], 3, bos_token_id=1) == [11, 12, 13]
    assert truncate_left([10, 11], 5, bos_token_id=None) == [10, 11]


def test_long_prompt_is_cut_from_the_left_first():
    """max_length = R + 5: the prompt keeps its last 5 tokens, the response (with EOS) is intact."""
    tok = tiny_tokenizer()
    prompt_ids = _ids(format_prompt(PROMPT), tok)
    response_ids = [*_ids(" " + RESPONSE, tok), 2]
    ex = tokenize_prompt_response(
        tok, PROMPT, RESPONSE, max_length=len(response_ids) + 5, min_prompt_tokens=3
    )
    assert ex["input_ids"] == prompt_ids[-5:] + response_ids
    assert ex["response_mask"] == [0] * 5 + [1] * len(response_ids)


def test_long_response_is_cut_from_the_right_after_the_prompt_floor():
    """max_length 8, min_prompt_tokens 3: prompt keeps its last 3, response its first 5 (EOS lost)."""
    tok = tiny_tokenizer()
    prompt_ids = _ids(format_prompt(PROMPT), tok)
    response_ids = _ids(" " + RESPONSE, tok)
    assert len(response_ids) > 5 and len(prompt_ids) > 3
    ex = tokenize_prompt_response(tok, PROMPT, RESPONSE, max_length=8, min_prompt_tokens=3)
    assert ex["input_ids"] == prompt_ids[-3:] + response_ids[:5]
    assert ex["response_mask"] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert 2 not in ex["input_ids"]


def test_bos_survives_left_truncation():
    """With a BOS-adding tokenizer the kept prompt is [bos] + the last 4 prompt tokens."""
    tok = tiny_tokenizer(add_bos=True)
    prompt_ids = tok(format_prompt(PROMPT))["input_ids"]
    assert prompt_ids[0] == 1
    ex = tokenize_prompt_response(tok, PROMPT, RESPONSE, max_length=10, min_prompt_tokens=5)
    assert ex["input_ids"][:5] == [1, *prompt_ids[-4:]]
    assert tokenize_prompt(tok, PROMPT, max_prompt_length=3) == [1, *prompt_ids[-2:]]


def test_pair_shares_one_prompt_cut_fitted_to_the_longer_response():
    """max_length = R_long + 6: both rows keep the same last 6 prompt tokens; the longer response fills the
    rest exactly (ending in EOS), the shorter one leaves room unused rather than keeping more prompt."""
    tok = tiny_tokenizer()
    long_answer = "The quick brown fox jumps over the lazy dog."
    prompt_ids = _ids(format_prompt(PROMPT), tok)
    n_long = len(_ids(" " + long_answer, tok)) + 1
    pair = tokenize_pair(tok, PROMPT, "Mix flour", long_answer, max_length=n_long + 6, min_prompt_tokens=2)
    chosen, rejected = pair["chosen"], pair["rejected"]
    assert chosen["input_ids"][:6] == rejected["input_ids"][:6] == prompt_ids[-6:]
    assert chosen["response_mask"].index(1) == rejected["response_mask"].index(1) == 6
    assert len(rejected["input_ids"]) == n_long + 6 and rejected["input_ids"][-1] == 2
    assert chosen["input_ids"][6:] == [*_ids(" Mix flour", tok), 2]


@settings(max_examples=60, deadline=None)
@given(
    prompt=st.text(alphabet="abc xyz?!", min_size=1, max_size=60),
    response=st.text(alphabet="abc xyz.,", min_size=1, max_size=60),
    max_length=st.integers(min_value=5, max_value=70),
)
def test_truncation_invariants(prompt, response, max_length):
    """For any lengths: total <= max_length; prompt part a suffix of the full prompt ids, response part a
    prefix of the full response ids (EOS included); the mask is 1 exactly on the response part."""
    tok = tiny_tokenizer()
    ex = tokenize_prompt_response(tok, prompt, response, max_length=max_length, min_prompt_tokens=4)
    full_prompt = _ids(format_prompt(prompt), tok)
    full_response = [*_ids(format_response(response), tok), 2]
    n_prompt = ex["response_mask"].index(1)
    assert len(ex["input_ids"]) == min(max_length, len(full_prompt) + len(full_response))
    assert ex["response_mask"] == [0] * n_prompt + [1] * (len(ex["input_ids"]) - n_prompt)
    assert n_prompt >= min(4, len(full_prompt))
    assert ex["input_ids"][:n_prompt] == full_prompt[len(full_prompt) - n_prompt :]
    response_part = ex["input_ids"][n_prompt:]
    assert response_part == full_response[: len(response_part)]


# ------------------------------------------------------------------------------------------- collate


def test_collate_hand_example():
    """Rows [5,6,7,8] mask [0,0,1,1] and [5,9,10] mask [0,1,1], pad 0 -> T = 4.
    response_mask[:, t] = token mask at t+1: row 0 -> [0,1,1]; row 1 -> [1,1,0] (the pad is not a target)."""
    batch = collate(
        [
            {"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 1], "response_mask": [0, 0, 1, 1]},
            {"input_ids": [5, 9, 10], "attention_mask": [1, 1, 1], "response_mask": [0, 1, 1]},
        ],
        pad_token_id=0,
    )
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7, 8], [5, 9, 10, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert torch.equal(batch["response_mask"], torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]))
    assert batch["input_ids"].dtype == torch.long and batch["response_mask"].dtype == torch.float32


def test_collate_shapes_and_shift_on_real_examples():
    """B examples -> [B, T] and [B, T-1]; the shifted mask sums to each example's response length."""
    tok = tiny_tokenizer()
    examples = [tokenize_prompt_response(tok, PROMPT, r) for r in ("Mix.", RESPONSE, "The quick brown fox.")]
    batch = collate(examples, tokenizer_pad_id(tok))
    width = max(len(ex["input_ids"]) for ex in examples)
    assert batch["input_ids"].shape == (3, width) and batch["response_mask"].shape == (3, width - 1)
    assert batch["response_mask"].sum(1).tolist() == [float(sum(ex["response_mask"])) for ex in examples]
    for i, ex in enumerate(examples):
        full = torch.zeros(width)
        full[: len(ex["response_mask"])] = torch.tensor(ex["response_mask"], dtype=torch.float32)
        assert torch.equal(batch["response_mask"][i], full[1:])


def test_collate_pairs_stacks_chosen_then_rejected():
    """P = 2 pairs -> rows [chosen_0, chosen_1, rejected_0, rejected_1]."""
    tok = tiny_tokenizer()
    pairs = [tokenize_pair(tok, PROMPT, f"yes {i}", f"no {i}") for i in range(2)]
    batch = collate_pairs(pairs, tokenizer_pad_id(tok))
    order = [pairs[0]["chosen"], pairs[1]["chosen"], pairs[0]["rejected"], pairs[1]["rejected"]]
    for row, ex in enumerate(order):
        n = len(ex["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == ex["input_ids"]


def test_collate_errors():
    with pytest.raises(ValueError, match="empty"):
        collate([], 0)
    with pytest.raises(ValueError, match="differ in length"):
        collate([{"input_ids": [1, 2], "attention_mask": [1, 1], "response_mask": [0]}], 0)


def test_pad_id_is_required():
    tok = tiny_tokenizer()
    assert tokenizer_pad_id(tok) == 0

    class NoPad:
        pad_token_id = None
        eos_token_id = None

    with pytest.raises(ValueError, match="no pad_token"):
        tokenizer_pad_id(NoPad())


def test_pad_id_falls_back_to_eos_then_to_the_configured_token():
    """Llama/Mistral tokenizers have no pad token: padding uses EOS, or models.pad_token when set."""
    tok = tiny_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None
    assert tokenizer_pad_id(tok) == tok.eos_token_id
    assert tokenizer_pad_id(tok, tok.bos_token) == tok.bos_token_id
    with pytest.raises(ValueError, match="not a token"):
        tokenizer_pad_id(tok, "<no such token>")
