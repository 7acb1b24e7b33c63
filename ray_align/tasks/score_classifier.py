"""Sequence classifiers whose score IS a table of the known-optimum task: real reward and cost model checkpoints.

``build_table_classifier`` writes a one-layer Llama ``AutoModelForSequenceClassification`` (``num_labels: 1``)
whose score, read at the last token as the scorer actor reads it, is values[x, a] when the sequence is prompt x
followed by answer a, and value_out when the last token is not an answer. Its weights are set, not trained:

    embedding    e_slot(v) + M·e_Z: one slot per answer, per prompt's distinctive tokens, one for all others;
                 the large constant M·e_Z makes every RMSNorm divide by (almost) the same number
    attention    one head; the query is constant (read from e_Z) and only distinctive tokens have a key, with a
                 logit of 40, so the last position copies the prompt's indicator e_P[x] (RoPE is made inert by
                 a huge rope_theta on the dimension pair the query and keys use)
    MLP          unit (x, a): gate ±B from e_P[x] (SiLU(B) ≈ B, SiLU(−B) ≈ 0), up = 1 on answer a, writes
                 values[x, a] to the score dimension S (and √(K² − v²) to T, so the final norm's input has the
                 same length for every score v); one more unit writes value_out when the token is no answer
    head         reads S, scaled by the final norm's constant

The score is exact up to float32 rounding and terms of order e^{−B} (about 1e-6, measured in
tests/unit/test_score_classifier.py). A prompt's distinctive tokens are the tokens of its formatted ids found
in no other prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig

ANCHOR = 1000.0  # M
GATE = 30.0  # B
ATTENTION_LOGIT = 40.0


def distinctive_tokens(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[int]) -> list[set[int]]:
    """Per prompt, its token ids that no other prompt has (answers excluded); raises when a prompt has none."""
    sets = [set(ids) - set(answer_ids) for ids in prompt_ids]
    out = [s - set().union(*(t for j, t in enumerate(sets) if j != i)) for i, s in enumerate(sets)]
    if not all(out):
        raise ValueError("every prompt needs a token that no other prompt has")
    return out


def _config(tokenizer, hidden: int, intermediate: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=512,
        rope_theta=1e9,
        rms_norm_eps=1e-12,
        num_labels=1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_table_classifier(
    path: str | Path,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[int],
    values: np.ndarray,
    value_out: float,
) -> Path:
    """Write the classifier (with ``tokenizer``) to ``path``; values [X, A] per (prompt, answer)."""
    values = np.asarray(values, dtype=np.float64)
    n_x, n_a = values.shape
    distinct = distinctive_tokens(prompt_ids, answer_ids)
    # dimensions: answer slots, distinctive slots, "other", anchor Z, prompt indicators P, score S and T
    slot_a, slot_d, other = 0, n_a, n_a + n_x
    z, p, s = other + 1, other + 2, other + 2 + n_x
    hidden = 32
    model = AutoModelForSequenceClassification.from_config(_config(tokenizer, hidden, n_x * n_a + 1))
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        base, layer = model.model, model.model.layers[0]
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, base.norm):
            norm.weight.fill_(1.0)
        emb = base.embed_tokens.weight
        emb[:, other] = 1.0
        for a, token in enumerate(answer_ids):
            emb[token, other], emb[token, slot_a + a] = 0.0, 1.0
        for x, tokens in enumerate(distinct):
            for token in tokens:
                emb[token, other], emb[token, slot_d + x] = 0.0, 1.0
        emb[:, z] = ANCHOR
        # each norm's input is unit entries + M·e_Z with a known sum of squares: scale by its rms
        rms_in, rms_mid = (float(np.sqrt((ANCHOR**2 + n) / hidden)) for n in (1.0, 2.0))
        attn, mlp = layer.self_attn, layer.mlp
        rope = hidden // 2 - 1  # the pair (rope, rope + d/2) has the lowest RoPE frequency, 1e9^(−(d−2)/d)
        q = k = float(np.sqrt(ATTENTION_LOGIT * np.sqrt(hidden)))  # logit = q·k/√d_head
        attn.q_proj.weight[rope, z] = q * rms_in / ANCHOR
        for x in range(n_x):
            attn.k_proj.weight[rope, slot_d + x] = k * rms_in
            attn.v_proj.weight[p + x, slot_d + x] = rms_in
            attn.o_proj.weight[p + x, p + x] = 1.0
        silu_b = GATE * float(torch.sigmoid(torch.tensor(GATE, dtype=torch.float64)))
        # the score v goes to S and sqrt(K² − v²) to T, so the final norm's input always has M² + 2 + K²
        top = float(max(np.abs(values).max(), abs(value_out)))

        def write(unit: int, value: float) -> None:
            mlp.down_proj.weight[s, unit] = value / silu_b
            mlp.down_proj.weight[s + 1, unit] = np.sqrt(top**2 - value**2) / silu_b

        for x in range(n_x):
            for a in range(n_a):
                unit = x * n_a + a
                mlp.gate_proj.weight[unit, p + x] = 2.0 * GATE * rms_mid
                mlp.gate_proj.weight[unit, z] = -GATE * rms_mid / ANCHOR
                mlp.up_proj.weight[unit, slot_a + a] = rms_mid
                write(unit, values[x, a])
        out_unit = n_x * n_a  # fires (gate +B) on every token that is not an answer
        mlp.gate_proj.weight[out_unit, z] = GATE * rms_mid / ANCHOR
        mlp.up_proj.weight[out_unit, other] = rms_mid
        for x in range(n_x):
            mlp.up_proj.weight[out_unit, slot_d + x] = rms_mid
        write(out_unit, value_out)
        model.score.weight[0, s] = float(np.sqrt((ANCHOR**2 + 2.0 + top**2) / hidden))
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
