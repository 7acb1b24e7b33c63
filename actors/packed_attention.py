"""Packed sequences on CPU: every real token of a right-padded batch in one row, attention per sequence.

A DPO batch is 30% padding (docs/performance.md). Running each row alone removes it but turns every
matmul into B small ones, which on two cores was slower than the padded batch. Packing keeps one large
matmul per layer over the real tokens only: the rows are concatenated into one sequence of N tokens with
position ids restarting at 0 for each, and attention runs causally inside each sequence (the varlen
attention flash-attention does on GPUs; here one ``scaled_dot_product_attention`` per sequence).

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


def _packed_sdpa(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
    """query [1, heads, N, d], key/value [1, kv_heads, N, d] → [1, N, heads, d], causal within each sequence."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    scale, cut = kwargs.get("scaling"), bounds.tolist()
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scale, enable_gqa=gqa
        )
        for s, e in pairwise(cut)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def use_packed_attention(model: nn.Module) -> bool:
    """Switch a model on SDPA attention to the packed-capable one; False (model unchanged) for any other
    attention implementation or a model that does not dispatch through transformers' interface."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == PACKED:
        return True
    if current != "sdpa" or not getattr(model, "_supports_attention_backend", False):
        return False
    if PACKED not in AttentionInterface._global_mapping:
        AttentionInterface.register(PACKED, _packed_sdpa)
        AttentionMaskInterface.register(PACKED, sdpa_mask)  # padded batches get SDPA's own mask
    config._attn_implementation = PACKED
    return True


def packed_hidden(backbone: nn.Module, input_ids: Tensor, lengths: list[int]) -> Tensor:
    """Last hidden states [N, H] of the first lengths[i] tokens of each row of ``input_ids`` [B, T],
    concatenated row after row (N = Σ lengths), computed as one packed sequence."""
    device = input_ids.device
    flat = torch.cat([input_ids[r, :n] for r, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    bounds = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    out = backbone(
        input_ids=flat,
        position_ids=positions,
        use_cache=False,
        cu_seq_lens_q=bounds,
        cu_seq_lens_k=bounds,
        max_length_q=max(lengths),
        max_length_k=max(lengths),
    )
    return out.last_hidden_state[0]
