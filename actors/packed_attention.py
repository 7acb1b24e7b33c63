"""Packed sequences on CPU: every real token of a right-padded batch in one row, attention per sequence.

A DPO batch is 30% padding (docs/performance.md). Running each row alone removes it but turns every
matmul into B small ones, which on two cores was slower than the padded batch. Packing keeps one large
matmul per layer over the real tokens only: the rows are concatenated into one sequence of N tokens with
position ids restarting at 0 for each, and attention runs causally inside each sequence (the varlen
attention flash-attention does on GPUs; here one ``scaled_dot_product_attention`` per run of equal-length
sequences).

transformers calls the attention through its ``AttentionInterface`` by the name in
``config._attn_implementation``. :func:`use_packed_attention` registers ``"ray_align_packed"``: given
``cu_seq_lens_q`` (the sequence boundaries [0, n₀, n₀+n₁, …, N], the keyword flash-attention's varlen path
uses) it attends per sequence; without it, it is transformers' own SDPA attention and mask, so padded
batches, generation and every other caller behave exactly as under ``"sdpa"``. The name is registered once
per process and set on the model for good (not around one forward), so a layer recomputed under
activation checkpointing calls the same function with the same keywords.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKED = "ray_align_packed"
# Decoders whose attention is plain causal softmax attention through the interface (no sliding window by
# default, no soft-capping, sinks or position biases that the per-sequence call would drop).
PACKABLE = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _packed_sdpa(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
    """query [1, heads, N, d], key/value [1, kv_heads, N, d] → [1, N, heads, d], causal within each sequence.

    Consecutive sequences of one length run as one batch (a view, no copy): a task whose rows all have the
    same few lengths makes a few attention calls, not one per row."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    dropout, scale, outs = kwargs.get("dropout", 0.0), kwargs.get("scaling"), []
    for start, count, n in equal_length_runs(bounds.tolist()):
        q, k, v = (_run(x, start, count, n) for x in (query, key, value))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa
        )
        outs.append(out.transpose(1, 2).flatten(0, 1))  # [count·n, h, d]
    return torch.cat(outs)[None], None


def _run(x: Tensor, start: int, count: int, n: int) -> Tensor:
    """[1, h, N, d] → the view [count, h, n, d] of ``count`` sequences of ``n`` tokens from ``start``."""
    return x[0, :, start : start + count * n].unflatten(1, (count, n)).transpose(0, 1)


def equal_length_runs(bounds: list[int]) -> list[tuple[int, int, int]]:
    """(start, count, length) of each run of consecutive equal-length sequences, from boundaries [0, …, N]."""
    runs: list[tuple[int, int, int]] = []
    for start, end in pairwise(bounds):
        n = end - start
        if runs and runs[-1][2] == n:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, n)
        else:
            runs.append((start, 1, n))
    return runs


def use_packed_attention(model: nn.Module) -> bool:
    """Switch a model on SDPA attention to the packed-capable one; False (model unchanged) for another
    attention implementation, a model type outside PACKABLE, or a sliding window in use."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == PACKED:
        return True
    windowed = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    if current != "sdpa" or getattr(config, "model_type", None) not in PACKABLE or windowed:
        return False
    if PACKED not in AttentionInterface._global_mapping:
        AttentionInterface.register(PACKED, _packed_sdpa)
        AttentionMaskInterface.register(PACKED, sdpa_mask)  # padded batches get SDPA's own mask
    config._attn_implementation = PACKED
    return True


def packed_hidden(backbone: nn.Module, input_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """The first lengths[r] tokens of each row r of ``input_ids`` [B, T] through ``backbone`` as one packed
    sequence: (hidden [N, H], offsets [B]), row r's token t at hidden[offsets[r] + t]. Rows are packed
    shortest first, so rows of equal length sit together and share their attention calls."""
    order = torch.argsort(lengths, stable=True)
    sizes = lengths[order]
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    real = columns[None, :] < sizes[:, None]  # [B, T], rows in packing order
    bounds = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]).to(torch.int32)
    longest = int(sizes.max())
    out = backbone(
        input_ids=input_ids[order][real][None],
        position_ids=columns.expand_as(real)[real][None],
        # a 4-D mask is taken as already built: transformers skips its N×N packed-sequence mask (a quarter
        # of a tiny model's step), which the per-sequence attention does not read
        attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=input_ids.device),
        use_cache=False,
        cu_seq_lens_q=bounds,
        cu_seq_lens_k=bounds,
        max_length_q=longest,
        max_length_k=longest,
    )
    offsets = torch.empty_like(sizes)
    offsets[order] = bounds[:-1].to(sizes.dtype)
    return out.last_hidden_state[0], offsets
