"""models.reference is π_ref everywhere, pad tokens, score heads and the reference's dtype.

The DPO tests drive ``dpo_run`` with a stand-in trainer (plain Python: the question is which checkpoint the
reference log-probs come from and what the batches are padded with, not the DeepSpeed maths, which
tests/integration/test_trainer.py covers).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from base_job import BASE_JOB

from ray_align.algorithms.common import generators_on_reference
from ray_align.algorithms.dpo import dpo_run
from ray_align.algorithms.preference import Pairs
from ray_align.cluster import Cluster
from ray_align.config.load import load_config
from ray_align.data.formatting import join_example
from ray_align.run_dir import RunDir

# sequence log-prob per response token of each checkpoint the stand-in trainer is started on
LOGP_PER_TOKEN = {"policy": -0.5, "reference": -2.0}


class StandInTrainer:
    def __init__(self, path: str, events: list):
        self.path, self.events, self.batches = path, events, []
        self.per_token = LOGP_PER_TOKEN["reference" if path.endswith("reference") else "policy"]
        events.append(("start", path))

    def logprobs(self, batch):
        self.batches.append(batch)
        return torch.full((batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1), self.per_token)

    def train_step(self, batch, spec):
        self.batches.append(batch)
        self.events.append(("train", batch["ref_logps"].tolist()))
        return {"loss": 0.5}

    def save(self, path: str) -> str:
        return path

    def shutdown(self) -> None:
        self.events.append(("stop", self.path))


def _cluster(policy: str, events: list, trainers: list) -> Cluster:
    def new_trainer(path, kind, **kwargs):
        trainers.append(StandInTrainer(str(path), events))
        return trainers[-1]

    return Cluster(coordinator=None, constraint_names=[], policy_path=policy, new_trainer=new_trainer)


def _pairs() -> Pairs:
    # two pairs, 3-token responses chosen, 2-token rejected
    return Pairs(
        [
            {"chosen": join_example([5, 6], [7, 8, 9]), "rejected": join_example([5, 6], [10, 11])},
            {"chosen": join_example([5], [12, 13, 14]), "rejected": join_example([5], [15, 16])},
        ]
    )


def _run(tmp_path, policy: str, reference: str | None, *overrides: str):
    config = load_config(BASE_JOB, ["training.batch_size=2", "training.epochs=1", *overrides])
    events, trainers = [], []
    dpo_run(
        config,
        _cluster(policy, events, trainers),
        RunDir(tmp_path / "run"),
        model_path=policy,
        pairs=_pairs(),
        beta=0.1,
        stage="dpo",
        reference_path=reference,
    )
    return events, trainers


@pytest.fixture
def folders(tmp_path, tiny_models):
    policy = shutil.copytree(tiny_models.policy, tmp_path / "policy")
    reference = shutil.copytree(tiny_models.policy, tmp_path / "reference")
    return str(policy), str(reference)


def test_dpo_reference_log_probs_come_from_models_reference(tmp_path, folders):
    policy, reference = folders
    events, _ = _run(tmp_path, policy, reference)
    # the reference is loaded, read and freed before the policy's trainer starts
    assert [e for e in events if e[0] != "train"] == [
        ("start", reference),
        ("stop", reference),
        ("start", policy),
        ("stop", policy),
    ]
    ref_logps = next(e[1] for e in events if e[0] == "train")  # chosen (3 tokens) then rejected (2 tokens)
    np.testing.assert_allclose(sorted(ref_logps), sorted([-6.0, -6.0, -4.0, -4.0]))


def test_dpo_without_a_separate_reference_uses_the_initial_weights(tmp_path, folders):
    policy, _ = folders
    for reference in (None, policy):
        events, trainers = _run(tmp_path / str(reference is None), policy, reference)
        assert len(trainers) == 1
        ref_logps = next(e[1] for e in events if e[0] == "train")
        np.testing.assert_allclose(sorted(ref_logps), sorted([-1.5, -1.5, -1.0, -1.0]))


def test_dpo_pads_with_eos_when_the_tokenizer_has_no_pad_token(tmp_path, folders):
    """Llama/Mistral tokenizers have no pad token: batches are padded with EOS (or models.pad_token)."""
    from transformers import AutoTokenizer

    policy, _ = folders
    tokenizer = AutoTokenizer.from_pretrained(policy)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    tokenizer.pad_token = None
    tokenizer.save_pretrained(policy)
    assert AutoTokenizer.from_pretrained(policy).pad_token_id is None
    for overrides, pad in (((), eos), ((f"models.pad_token={tokenizer.bos_token}",), bos)):
        _, trainers = _run(tmp_path / str(pad), policy, None, *overrides)
        batch = trainers[0].batches[0]
        padded = batch["attention_mask"] == 0
        assert padded.any() and (batch["input_ids"][padded] == pad).all()


class RecordingGenerator:
    def __init__(self):
        self.loaded = []

    def update_weights(self, state_dict):
        self.loaded.append(state_dict)
        return {"seconds": 0.0}


def test_generators_sample_models_reference(tmp_path, folders):
    """MoCAN, PeCAN and CAID sample "π_ref" from the generators: they must hold models.reference."""
    from safetensors.torch import load_file

    policy, reference = folders
    for path, loads in ((None, 0), (policy, 0), (reference, 1)):
        config = load_config(BASE_JOB, [f"models.reference={path}"] if path else [])
        generator = RecordingGenerator()
        cluster = Cluster(coordinator=None, constraint_names=[], policy_path=policy, generator=generator)
        generators_on_reference(config, cluster)
        assert len(generator.loaded) == loads
    expected = load_file(f"{reference}/model.safetensors")
    assert generator.loaded[0].keys() == expected.keys()


@pytest.mark.parametrize("kind", ["sequence_score", "token_value"])
def test_score_and_value_models_created_here_have_one_output(tiny_models, kind):
    """Starting a reward model (or critic) from a causal LM: transformers' default would give two labels."""
    from actors.model_outputs import load_model
    from actors.train_config import TrainConfig

    model = load_model(str(tiny_models.policy), kind, TrainConfig())
    head = model.score if hasattr(model, "score") else model.classifier
    assert head.out_features == 1 and model.config.num_labels == 1


class RecordingBuilder:
    """ClusterBuilder.reference with the actor start recorded instead of sent to Ray."""

    def __init__(self, config, models):
        from actors.build import ClusterBuilder

        self.builder = ClusterBuilder(config, models, plan=None)
        self.started = []
        self.builder._actor = lambda cls, role, index, *args, **kwargs: self.started.append((args, kwargs))


@pytest.mark.parametrize(("train_dtype", "dtype"), [("fp32", "float32"), ("bf16", "bfloat16")])
def test_reference_model_runs_in_the_training_dtype(tiny_models, train_dtype, dtype):
    """With bf16 training, an fp32 reference makes the KL non-zero at step 0."""
    from ray_align.models.resolve import resolve_models

    config = load_config(BASE_JOB, [f"training.dtype={train_dtype}"])
    models = resolve_models(config.models, seed=config.seed, tiny_root=tiny_models.root)
    recorder = RecordingBuilder(config, models)
    recorder.builder.reference()
    (args, kwargs), *_ = recorder.started
    assert args[-1] == models.reference and kwargs["dtype"] == dtype


def test_bf16_reference_matches_a_bf16_actor(tiny_models):
    """The bf16 reference gives exactly the bf16 actor's log-probs; an fp32 one (the old default) does not."""
    from transformers import AutoModelForCausalLM

    from actors.scorer import ReferenceScorer
    from ray_align.losses.logprobs import next_token_logprobs

    ids = torch.tensor([[1, 40, 41, 42, 43, 2]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    actor = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32)
    for param in actor.parameters():  # DeepSpeed's bf16: parameters cast, buffers (rotary) kept in fp32
        param.data = param.data.to(torch.bfloat16)
    with torch.no_grad():
        expected = next_token_logprobs(actor(**batch).logits, ids).float()
    got = ReferenceScorer(str(tiny_models.policy), dtype="bfloat16").logprobs(batch)
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=0)
    fp32 = ReferenceScorer(str(tiny_models.policy)).logprobs(batch)
    assert not torch.equal(fp32, expected)


def test_kto_reference_log_probs_come_from_models_reference(tmp_path, folders):
    from ray_align.algorithms.kto import Singletons, kto_run

    policy, reference = folders
    examples = [join_example([5, 6], [7, 8, 9]), join_example([5], [10, 11])]
    data = Singletons(examples, np.array([True, False]), mismatched=examples[::-1])
    config = load_config(BASE_JOB, ["training.batch_size=2", "training.epochs=1"])
    events, trainers = [], []
    kto_run(
        config,
        _cluster(policy, events, trainers),
        RunDir(tmp_path / "run"),
        model_path=policy,
        data=data,
        beta=0.1,
        stage="kto",
        reference_path=reference,
    )
    assert [e for e in events if e[0] != "train"][:2] == [("start", reference), ("stop", reference)]
    ref_logps = next(e[1] for e in events if e[0] == "train")
    np.testing.assert_allclose(sorted(ref_logps), [-6.0, -4.0])  # 3 and 2 response tokens under π_ref
