"""SequenceScorer with reward/cost models of another tokenizer (decoder and BERT-style encoder), in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.scorer import SequenceScorer
from ray_align.models.tiny import TinySpec, build_score_model, build_tokenizer

OTHER = TinySpec(vocab_size=300, seed=7)
CORPUS = ["A different corpus gives a different vocabulary: cats, dogs, rivers, mountains and bread."] * 4
PROMPTS = ["BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:", "USER: hi ASSISTANT:"]
RESPONSES = [" Mix flour, water and yeast.", " Hello there, friend."]


@pytest.fixture(scope="module")
def other_scorers(tmp_path_factory):
    """A Llama score model with a chat template and a BERT classifier without one, both with a tokenizer of
    another vocabulary than the policy's."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("other-scorers")
    tok = build_tokenizer(OTHER, corpus=CORPUS)
    decoder = build_score_model(OTHER, tok, root / "decoder", seed_offset=1)
    torch.manual_seed(0)
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
            pad_token_id=tok.pad_token_id,
        )
    )
    bert.save_pretrained(root / "encoder")
    tok.chat_template = None
    tok.save_pretrained(root / "encoder")
    return tok, decoder, root / "encoder"


def _policy_ids(tiny_models):
    from transformers import AutoTokenizer

    policy = AutoTokenizer.from_pretrained(tiny_models.policy)
    prompts = [policy.encode(p) for p in PROMPTS]
    responses = [[*policy.encode(r), policy.eos_token_id] for r in RESPONSES]
    return prompts, responses


def test_same_vocabulary_passes_ids_through(tiny_models):
    prompts, responses = _policy_ids(tiny_models)
    bridged = SequenceScorer([tiny_models.reward], policy_tokenizer=str(tiny_models.policy))
    plain = SequenceScorer([tiny_models.reward])
    assert bridged.bridged() == [False]
    np.testing.assert_array_equal(bridged.score(prompts, responses), plain.score(prompts, responses))


def test_other_vocabulary_is_scored_on_re_encoded_text(tiny_models, other_scorers):
    """Each model scores what its own tokenizer makes of the text, not the policy's ids."""
    tok, decoder, encoder = other_scorers
    prompts, responses = _policy_ids(tiny_models)
    scorer = SequenceScorer([tiny_models.reward, decoder, encoder], policy_tokenizer=str(tiny_models.policy))
    assert scorer.bridged() == [False, True, True]
    got = scorer.score(prompts, responses)  # [n, 3]
    assert got.shape == (2, 3)

    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(decoder)
    templated = [
        chat.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], return_dict=False
        )
        for p, r in zip(PROMPTS, RESPONSES)
    ]
    expected_decoder = SequenceScorer([decoder]).score([[]] * 2, templated)
    np.testing.assert_allclose(got[:, 1], expected_decoder, rtol=1e-5)

    from transformers import AutoModelForSequenceClassification

    own = [tok(p + r)["input_ids"] for p, r in zip(PROMPTS, RESPONSES)]
    bert = AutoModelForSequenceClassification.from_pretrained(encoder).eval()
    with torch.no_grad():
        expected_encoder = [bert(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in own]
    np.testing.assert_allclose(got[:, 2], expected_encoder, rtol=1e-5)


def test_the_cluster_gives_score_models_the_policys_tokenizer(tiny_models):
    """ClusterBuilder.scorer passes models.policy, so the actors can tell which scorers need the bridge."""
    from base_job import BASE_JOB

    from actors.build import ClusterBuilder
    from ray_align.config.load import load_config
    from ray_align.models.resolve import resolve_models

    class OnePerRole:
        def count(self, role):
            return 1

    config = load_config(BASE_JOB)
    models = resolve_models(config.models, seed=config.seed, tiny_root=tiny_models.root)
    builder = ClusterBuilder(config, models, plan=OnePerRole())
    started = []
    builder._actor = lambda cls, role, index, *args, **kwargs: started.append((cls, args)) or object()
    builder._wait_ready = lambda handles, role: None
    builder.scorer()
    (cls, args), *_ = started
    assert cls is SequenceScorer and args[-1] == models.policy


def test_a_classifier_with_two_outputs_is_refused(tmp_path, tiny_models):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_models.reward, num_labels=2)
    two = AutoModelForSequenceClassification.from_config(config)
    two.save_pretrained(tmp_path / "two")
    AutoTokenizer.from_pretrained(tiny_models.reward).save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="has 2 outputs"):
        SequenceScorer([tmp_path / "two"])
