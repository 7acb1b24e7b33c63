"""Response-only chunked log-probs (ray_align.losses.chunked) and the trainer model's fast path equal the plain
full-logits computation: values and gradients, with padding, several chunk sizes, bf16 within its precision."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from actors.model_outputs import ModelOutputs, is_right_padded
from ray_align.losses.chunked import target_logprobs
from ray_align.losses.specs import DPOSpec


def plain_logprobs(hidden, weight, targets, bias=None):
    """log_softmax of the full logits, gathered: the reference the chunked Function must equal."""
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    return torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]


def leaves(n=23, h=16, v=97, dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g, dtype=dtype) / 2).requires_grad_()
    b = torch.randn(v, generator=g, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets


def value_and_grads(fn, hidden, weight, b, targets):
    """Σ_i w_i·logp_i with fixed random weights w (so every row's gradient is scaled differently)."""
    w = torch.linspace(-1.0, 2.0, targets.shape[0])
    out = fn(hidden, weight, targets, b)
    params = [p for p in (hidden, weight, b) if p is not None]
    grads = torch.autograd.grad((out * w).sum(), params)
    return out.detach(), grads


@pytest.mark.parametrize("chunk_size", [1, 4, 23, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_grads_equal_the_plain_computation(chunk_size, bias):
    hidden, weight, b, targets = leaves(bias=bias)
    want, want_grads = value_and_grads(plain_logprobs, hidden, weight, b, targets)
    got, got_grads = value_and_grads(
        lambda h, w, t, b: target_logprobs(h, w, t, chunk_size, bias=b), hidden, weight, b, targets
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_float64_gradcheck():
    """The hand-written backward is the derivative of the forward (finite differences in float64)."""
    hidden, weight, b, targets = leaves(n=7, h=5, v=11, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda h, w, b: target_logprobs(h, w, targets, 3, bias=b), (hidden, weight, b)
    )


def test_ignore_index_rows_give_zero_and_no_gradient():
    hidden, weight, _, targets = leaves(bias=False)
    targets[[0, 5]] = -100
    out = target_logprobs(hidden, weight, targets, 4)
    assert out[0] == 0 and out[5] == 0
    (grad,) = torch.autograd.grad(out.sum(), [hidden])
    assert grad[0].abs().sum() == 0 and grad[5].abs().sum() == 0 and grad[1].abs().sum() > 0


def test_bf16_matches_within_bf16_precision():
    """bf16 weights: matmuls in bf16, softmax in float32; equal to the plain bf16 computation within bf16's
    ~3 significant digits, and the output stays float32."""
    hidden, weight, b, targets = leaves(dtype=torch.bfloat16, bias=False)
    want, (want_h, want_w) = value_and_grads(plain_logprobs, hidden, weight, b, targets)
    got, (got_h, got_w) = value_and_grads(
        lambda h, w, t, b: target_logprobs(h, w, t, 5), hidden, weight, b, targets
    )
    assert got.dtype == torch.float32 and got_h.dtype == got_w.dtype == torch.bfloat16
    torch.testing.assert_close(got, want.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_h.float(), want_h.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_w.float(), want_w.float(), atol=2e-2, rtol=2e-2)


def test_saves_no_logits_for_backward():
    """Saved for backward: the inputs and a few floats per row (lse, targets, the ignore mask), never the
    [rows, V] logits the plain computation keeps."""
    hidden, weight, _, targets = leaves(n=64, v=5000, bias=False)

    def saved_numel(fn):
        saved = []

        def pack(t):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(hidden, weight, targets)
        return sum(saved)

    assert (
        saved_numel(lambda h, w, t: target_logprobs(h, w, t, 16)) <= hidden.numel() + weight.numel() + 3 * 64
    )
    assert saved_numel(plain_logprobs) >= 64 * 5000


# ---- the trainer model's forward: response positions only, each row at its own length ------------------------


def padded_pairs(seed=0):
    """2 pairs, right-padded to 12 tokens: rows of length 12, 7, 9, 7 (rows 1 and 3 share one unpadded forward,
    row 2 between them); response from position 3."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([12, 7, 9, 7])
    attention_mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    input_ids = torch.randint(4, 500, (4, 12), generator=g).masked_fill(attention_mask == 0, 0)
    is_response = attention_mask.clone()
    is_response[:, :3] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": is_response[:, 1:].float(),
        "ref_logps": torch.tensor([-30.0, -20.0, -25.0, -8.0]),
    }


def full_logits_logprobs(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("chunk_size", [2, 64])
def test_model_outputs_dpo_loss_and_grads_equal_full_logits(tiny_models, unpad, chunk_size):
    """A DPO loss on the fast path (response positions only, rows unpadded) has the loss and parameter
    gradients of the plain one (HF forward on the padded batch, full-vocabulary log-softmax)."""
    batch, spec = padded_pairs(), DPOSpec(beta=0.1)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32)
    model.train()
    want_loss, _ = spec(full_logits_logprobs(model, batch), batch)
    want = torch.autograd.grad(want_loss, list(model.parameters()))
    fast = ModelOutputs(model, "logprobs", chunk_size, unpad=unpad)
    outputs = fast(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    got_loss, _ = spec(outputs, batch)
    got = torch.autograd.grad(got_loss, list(model.parameters()))
    torch.testing.assert_close(got_loss, want_loss, atol=1e-6, rtol=1e-6)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
    assert (outputs[batch["response_mask"] == 0] == 0).all()


def test_model_outputs_without_target_mask_cover_every_real_target(tiny_models):
    """No target mask (reference / old log-probs): every position whose target is a real token."""
    batch = padded_pairs(seed=1)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32).eval()
    with torch.no_grad():
        got = ModelOutputs(model, "logprobs", 5)(batch["input_ids"], batch["attention_mask"])
        want = full_logits_logprobs(model, batch)
    valid = batch["attention_mask"][:, 1:].bool()
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=0)
    assert (got[~valid] == 0).all()


def test_right_padding_detection():
    assert is_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]]))
    assert not is_right_padded(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left padding: the padded batch runs
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))
