"""Log-probs of selected target tokens through the LM head, chunk by chunk, with a hand-written backward.

A preference or policy loss only reads log p(token) at response positions, and only of the token that is
there. Computing the full-vocabulary log-softmax at every position and keeping it for the backward costs
B·T·V floats (8 rows × 256 positions × 49k vocabulary ≈ 400 MB in fp32, twice with its gradient).
:func:`target_logprobs` takes the N selected positions' hidden states [N,H] and their target tokens [N],
and per chunk of rows computes logits = h·Wᵀ (+ b), log p = logit[target] − logsumexp(logits). It keeps
only the inputs and the N log-sum-exps for the backward, which recomputes one chunk's logits at a time:

    ∂ log p / ∂ logits = onehot(target) − softmax(logits),   softmax = exp(logits − lse)
    grad_h = g · W,   grad_W = gᵀ · h,   grad_b = Σ g     (g = grad_out ⊙ (onehot − softmax), per chunk)

Peak memory is one chunk's [chunk, V] logits; values and gradients equal the plain computation
(tests/unit/test_chunked_logprobs.py). The softmax runs in float32 (float64 for float64 weights) like
token_logprobs; bf16 weights keep the matmuls in bf16 and accumulate the weight gradient in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    """The softmax's dtype: float32, or float64 for float64 weights."""
    return torch.promote_types(dtype, torch.float32)


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """[n,H] → [n,V] in _acc(dtype), the matmul in the weight's dtype (bf16 stays bf16 until the softmax)."""
    out = hidden.to(weight.dtype) @ weight.t()
    if bias is not None:
        out = out + bias
    return out.to(_acc(weight.dtype))


class _TargetLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        n = hidden.shape[0]
        out = torch.empty(n, dtype=_acc(weight.dtype), device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            logits = _logits(hidden[rows], weight, bias)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            out[rows] = logits.gather(-1, targets[rows, None])[:, 0] - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = _acc(weight.dtype)
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            h = hidden[rows].to(weight.dtype)
            g_out = grad_out[rows].to(acc)
            # g = grad_out ⊙ (onehot − softmax), built in place of the recomputed logits
            g = _logits(h, weight, bias).sub_(lse[rows, None]).exp_().mul_(-g_out[:, None])
            g.scatter_add_(-1, targets[rows, None], g_out[:, None])
            g = g.to(weight.dtype)
            if need_h:
                grad_h[rows] = (g @ weight).to(hidden.dtype)
            if need_w:  # accumulated in float32 over the chunks (a no-op cast for fp32 weights)
                grad_w.addmm_(g.t().to(acc), h.to(acc))
            if need_b:
                grad_b += g.to(acc).sum(0)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None


def target_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int, bias: Tensor | None = None
) -> Tensor:
    """log softmax(hidden·weightᵀ + bias)[target] per row: hidden [N,H], weight [V,H], targets [N] → [N] float32
    (float64 for float64 weights).

    Computed ``chunk_size`` rows at a time in forward and backward (see the module docstring); negative
    targets (an ignore index) give 0.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    valid = targets >= 0
    out = _TargetLogprobs.apply(hidden, weight, bias, targets.clamp_min(0), chunk_size)
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
