"""Packed sequences (actors.packed_attention): one sequence of the rows' real tokens, attention per row, gives
the padded batch's hidden states, losses and gradients; padded batches through the switched model are
unchanged; the per-sequence path is the one that runs."""

from __future__ import annotations

import pytest
import torch
from test_chunked_logprobs import padded_pairs
from transformers import LlamaConfig, LlamaForCausalLM

import actors.packed_attention as packed_attention
from actors.model_outputs import ModelOutputs
from actors.packed_attention import PACKED, packed_hidden, use_packed_attention
from ray_align.losses.specs import DPOSpec


def gqa_llama(attn: str = "sdpa", layers: int = 2) -> LlamaForCausalLM:
    """A random Llama with grouped-query attention (4 query heads share 2 key/value heads), tied head."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,  # padded_pairs' token ids are below 500
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).float()


def count_sdpa_calls(monkeypatch) -> list[int]:
    """Record (batch, query length) of every call of torch's SDPA function (the packed path's and any other)."""
    calls, real = [], packed_attention.F.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        calls.append((query.shape[0], query.shape[2]))  # (sequences, length)
        return real(query, *args, **kwargs)

    monkeypatch.setattr(packed_attention.F, "scaled_dot_product_attention", spy)
    return calls


def test_packed_hidden_equals_the_padded_batch(monkeypatch):
    model = gqa_llama().eval()
    reference = gqa_llama().eval()  # same seed and weights, left on SDPA
    assert use_packed_attention(model) and model.config._attn_implementation == PACKED
    batch = padded_pairs()
    lengths = batch["attention_mask"].sum(-1)
    with torch.no_grad():
        padded = reference.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        calls = count_sdpa_calls(monkeypatch)  # torch's own function: every SDPA call from here on
        hidden, offsets = packed_hidden(model.base_model, batch["input_ids"], lengths)
    for r, n in enumerate(lengths.tolist()):
        got = hidden[offsets[r] : offsets[r] + n]
        torch.testing.assert_close(got, padded.last_hidden_state[r, :n], atol=1e-5, rtol=1e-5)
    # shortest first, equal lengths in one call: per layer one call of the two 7-token rows, then 9, then 12
    assert calls == [(2, 7), (1, 9), (1, 12)] * 2


def test_a_switched_model_runs_padded_batches_as_sdpa():
    model, reference = gqa_llama().eval(), gqa_llama().eval()
    use_packed_attention(model)
    batch = padded_pairs(seed=1)
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        want = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_dpo_loss_and_grads_packed_equal_full_logits_on_the_padded_batch(monkeypatch, checkpointing):
    """ModelOutputs' fast path (packed, response positions only, GQA, tied head; with activation checkpointing
    the layers are recomputed through the same attention) has the plain loss and gradients."""
    batch, spec = padded_pairs(), DPOSpec(beta=0.1)
    plain = gqa_llama().train()
    logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    want_loss, _ = spec(logps * batch["attention_mask"][:, 1:], batch)
    want = torch.autograd.grad(want_loss, list(plain.parameters()))

    model = gqa_llama().train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fast = ModelOutputs(model, "logprobs", chunk_size=5, unpad=True)
    calls = count_sdpa_calls(monkeypatch)
    got_loss, _ = spec(fast(batch["input_ids"], batch["attention_mask"], batch["response_mask"]), batch)
    got = torch.autograd.grad(got_loss, list(model.parameters()))
    torch.testing.assert_close(got_loss, want_loss, atol=1e-6, rtol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
    # rows of 12, 7, 9, 7 tokens: 3 calls a layer × 2 layers, again in the recompute
    assert len(calls) == 3 * 2 * (2 if checkpointing else 1)


def test_only_sdpa_models_are_switched():
    eager = gqa_llama(attn="eager")
    assert not use_packed_attention(eager) and eager.config._attn_implementation == "eager"
    assert not ModelOutputs(eager, "logprobs", chunk_size=5, unpad=True).unpad  # the padded batch runs


def test_equal_length_runs():
    assert packed_attention.equal_length_runs([0, 3, 6, 7, 9, 11, 13]) == [(0, 2, 3), (6, 1, 1), (7, 3, 2)]


def test_a_sliding_window_or_an_unlisted_model_type_keeps_sdpa():
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    small = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    mistral = MistralForCausalLM(MistralConfig(**small, intermediate_size=32, sliding_window=8))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
    for model in (mistral, gpt2):
        model.config._attn_implementation = "sdpa"
        assert not use_packed_attention(model) and model.config._attn_implementation == "sdpa"
