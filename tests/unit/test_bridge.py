"""Tokenizer bridging (ray_align.models.bridge) between two real tokenizers with different vocabularies."""

from __future__ import annotations

import pytest

from ray_align.models.bridge import TokenBridge, bridge_for, same_vocabulary, template_frame, user_message
from ray_align.models.tiny import PAD, TinySpec, build_tokenizer

OTHER_CORPUS = [
    "A different corpus gives a different vocabulary: cats, dogs, rivers, mountains and bread."
] * 4
SCORER_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }}\n{% endfor %}"
PROMPT, RESPONSE = "How do I bake bread?", " Mix flour, water and yeast."


@pytest.fixture(scope="module")
def policy():
    return build_tokenizer(TinySpec())


@pytest.fixture
def other():
    tok = build_tokenizer(TinySpec(vocab_size=300), corpus=OTHER_CORPUS)
    tok.chat_template = None
    return tok


def test_vocabularies_are_compared_not_names(policy, other):
    assert same_vocabulary(policy, build_tokenizer(TinySpec()))  # another object, same vocabulary
    assert not same_vocabulary(policy, other)
    assert bridge_for(policy, build_tokenizer(TinySpec())) is None  # same vocabulary: ids pass through
    assert isinstance(bridge_for(policy, other), TokenBridge)


def test_plain_prompt_is_re_encoded_as_one_text(policy, other):
    """A prompt in a non-chat format (PKU) is passed as text; a decoder tokenizer without a chat template reads
    prompt + response as one text."""
    prompt = f"BEGINNING OF CONVERSATION: USER: {PROMPT} ASSISTANT:"
    bridge = TokenBridge(policy, other)
    ids = bridge.encode([policy.encode(prompt)], [[*policy.encode(RESPONSE), policy.eos_token_id]])
    assert ids == [other(prompt + RESPONSE)["input_ids"]]
    assert other.decode(ids[0], skip_special_tokens=True) == prompt + RESPONSE


def test_chat_prompt_is_unwrapped_and_rewrapped_in_the_scorers_template(policy, other):
    """The policy's template is cut from the decoded prompt; the scorer's own template wraps the bare message."""
    other.chat_template = SCORER_TEMPLATE
    prompt_ids = policy.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    ids = TokenBridge(policy, other).encode([prompt_ids], [policy.encode(RESPONSE)])
    text = other.decode(ids[0])
    assert text == f"[user]: {PROMPT}\n[assistant]: {RESPONSE}\n"


def test_user_message_leaves_unframed_text_alone(policy):
    frame = template_frame(policy)
    assert frame is not None and frame[0].startswith("<|user|>")
    assert user_message(f"{frame[0]}hi{frame[1]}", frame) == "hi"
    assert user_message("USER: hi ASSISTANT:", frame) == "USER: hi ASSISTANT:"
    assert user_message("anything", None) == "anything"


def test_long_sequences_keep_their_first_token_and_their_end(policy, other):
    bridge = TokenBridge(policy, other, max_length=8)
    full = other("x " * 20 + RESPONSE)["input_ids"]
    ids = bridge.encode_text("x " * 20, RESPONSE)
    assert len(ids) == 8 and ids[0] == full[0] and ids[1:] == full[-7:]


def test_pad_token_is_not_needed_to_decode(policy, other):
    """Special tokens of the policy (pad, EOS) never reach the scorer as text."""
    prompt_ids, response_ids = (
        [policy.encode("hello")],
        [[*policy.encode(RESPONSE), policy.convert_tokens_to_ids(PAD)]],
    )
    prompts, responses = TokenBridge(policy, other).texts(prompt_ids, response_ids)
    assert prompts == ["hello"] and responses == [RESPONSE]


def test_an_encoder_tokenizer_gets_a_text_pair(policy, other):
    """A tokenizer with a separator token (BERT's [SEP]) encodes (prompt, response) in its own pair format."""
    other.sep_token = other.eos_token
    assert TokenBridge(policy, other).encode_text("hello", RESPONSE) == other("hello", RESPONSE)["input_ids"]
