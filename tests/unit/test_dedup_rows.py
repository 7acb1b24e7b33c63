"""Identical rows run once (ModelOutputs' ``dedup_rows``): which rows count as the same, and that outputs,
losses and gradients equal the batch run row by row, for every output kind."""

from __future__ import annotations

import pytest
import torch
from test_chunked_logprobs import padded_pairs
from test_packed_attention import gqa_llama
from transformers import LlamaConfig, LlamaForSequenceClassification, LlamaForTokenClassification

from actors.model_outputs import ModelOutputs, unique_rows
from ray_align.losses.specs import DPOSpec


def test_unique_rows_compares_real_tokens_and_both_masks():
    ids = torch.tensor([[5, 6, 0], [5, 6, 9], [5, 6, 7], [5, 6, 0], [5, 6, 7]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]])
    target = torch.tensor([[1, 0], [1, 0], [1, 1], [1, 1], [0, 1]])
    first, inverse = unique_rows(ids, mask, target)
    # rows 0 and 1 differ only under padding: the same; row 3 has a real 0 where row 0 pads; row 4 another target
    assert inverse[0] == inverse[1]
    assert len(set(inverse.tolist())) == 4
    assert torch.equal(first[inverse], torch.tensor([0, 0, 2, 3, 4]))
    first, inverse = unique_rows(ids, mask, None)  # without a target mask rows 2 and 4 are the same
    assert torch.equal(first[inverse], torch.tensor([0, 0, 2, 3, 2]))


def repeated_pairs():
    """padded_pairs' 2 pairs, each repeated: rows [c0, c1, c0, c1, c0 | r0, r1, r0, r1, r0] (5 pairs, 4 distinct
    sequences), reference log-probs included."""
    rows = [0, 1, 0, 1, 0, 2, 3, 2, 3, 2]  # chosen, then rejected
    return {k: v[rows] for k, v in padded_pairs().items()}


def token_counts(module: ModelOutputs) -> list[int]:
    """Tokens the embedding layer saw per call (padded: rows × length; packed: the rows' summed lengths)."""
    seen: list[int] = []
    embed = module.hf_model().get_input_embeddings()
    embed.register_forward_hook(lambda _m, args, _out: seen.append(int(args[0].numel())))
    return seen


def test_dpo_loss_and_grads_equal_the_rows_run_one_by_one():
    batch, spec = repeated_pairs(), DPOSpec(beta=0.1)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    results = {}
    for dedup in (False, True):
        module = ModelOutputs(gqa_llama().train(), "logprobs", chunk_size=5, unpad=True, dedup_rows=dedup)
        tokens = token_counts(module)
        loss, _ = spec(module(*args), batch)
        results[dedup] = (loss, torch.autograd.grad(loss, list(module.parameters())), tokens)
    (want, want_grads, all_tokens), (got, grads, distinct_tokens) = results[False], results[True]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
    # packed, every row: 3·12 + 2·7 + 3·9 + 2·7 tokens; distinct: 12 + 7 + 9 + 7
    assert all_tokens == [91] and distinct_tokens == [35]


def test_values_and_scores_equal_the_rows_run_one_by_one():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=1,
        pad_token_id=0,
    )
    batch = repeated_pairs()
    for cls, output in ((LlamaForTokenClassification, "values"), (LlamaForSequenceClassification, "scores")):
        model = cls(config).float().eval()
        plain = ModelOutputs(model, output, chunk_size=5, dedup_rows=False)
        dedup = ModelOutputs(model, output, chunk_size=5, dedup_rows=True)
        with torch.no_grad():
            want = plain(batch["input_ids"], batch["attention_mask"])
            seen = token_counts(dedup)
            got = dedup(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        assert seen == [4 * 12], output  # 4 distinct rows of the padded batch


@pytest.mark.parametrize("training", [True, False])
def test_active_dropout_runs_every_row(training):
    model = gqa_llama()
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    module = ModelOutputs(model, "logprobs", chunk_size=5, unpad=True).train(training)
    tokens = token_counts(module)
    batch = repeated_pairs()
    with torch.no_grad():
        module(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert tokens == ([91] if training else [35])
