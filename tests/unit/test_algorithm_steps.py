"""Pure steps shared by the methods: batching, pair orientation, slack, dual bounds, model resolution, launch errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from base_job import BASE_JOB

from ray_align.algorithms.caid import slack
from ray_align.algorithms.preference import batches, labelled_pairs, split_example, steps_for
from ray_align.algorithms.sample_score import dual_bounds
from ray_align.config import load_config
from ray_align.models.resolve import resolve_models


def test_batches_are_full_and_cover_every_epoch():
    out = batches(n=10, batch_size=4, epochs=2, seed=0)
    assert len(out) == steps_for(10, 4, 2) == 6
    assert all(len(b) == 4 for b in out)
    for epoch in (out[:3], out[3:]):
        assert set(np.concatenate(epoch)) == set(range(10))  # the last batch wraps around
    assert [b.tolist() for b in out] == [b.tolist() for b in batches(10, 4, 2, seed=0)]


def test_split_example_and_orientation():
    example = {"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 1], "response_mask": [0, 0, 1, 1]}
    assert split_example(example) == ([5, 6], [7, 8])
    a, b = {"input_ids": [1]}, {"input_ids": [2]}
    hard = labelled_pairs([a, a], [b, b], np.array([1, 0]), soft=False)
    assert hard.pairs == [{"chosen": b, "rejected": a}, {"chosen": a, "rejected": b}] and hard.labels is None
    soft = labelled_pairs([a], [b], np.array([0.2]), soft=True)
    # P(y1 ≻ y0) = 0.2: y0 is the likelier winner and "chosen" with P(chosen ≻ rejected) = 0.8.
    assert soft.pairs == [{"chosen": a, "rejected": b}] and soft.labels.tolist() == pytest.approx([0.8])


def test_caid_slack_averages_prompts_first():
    # prompt 0: utilities 1 and 3 (mean 2); prompt 1: one utility 0. Prompt mean = (2 + 0) / 2 = 1; minus τ = 0.25.
    u = slack(np.array([[1.0], [3.0], [0.0]]), np.array([0, 0, 1]), tau=np.array([0.25]))
    assert u.tolist() == [0.75]


def test_dual_bounds_margin_threshold_and_mixed():
    config = load_config(BASE_JOB, ["dual.constraints=[{name: safety, margin: 0.5}]"])
    assert dual_bounds(config, ["safety"]) == {"margin": [0.5], "threshold": None}
    config = load_config(BASE_JOB, ["dual.constraints=[{name: safety, threshold: 0.2}]"])
    # cost threshold E[c] ≤ 0.2 is the utility threshold E[g] ≥ −0.2
    assert dual_bounds(config, ["safety"]) == {"margin": None, "threshold": [-0.2]}


def test_resolve_models_defaults(tmp_path):
    config = load_config(BASE_JOB)
    models = resolve_models(config.models, tiny_root=tmp_path / "tiny")
    assert models.reference == models.policy
    assert models.constraint_names == ["safety"] and models.constraints[0].path.endswith("cost")
    custom = load_config(
        BASE_JOB,
        [
            "models.tiny=false",
            "models.policy=/m/p",
            "models.reward_function=pkg:r",
            "models.costs=[{name: harm, function: 'pkg:c'}]",
            "dual.constraints=[{name: harm, margin: 1}]",
        ],
    )
    resolved = resolve_models(custom.models)
    assert (resolved.policy, resolved.reward, resolved.reward_function) == ("/m/p", None, "pkg:r")
    assert resolved.constraints[0].function == "pkg:c"


def test_unreachable_ray_address_fails_fast():
    from ray_align.preflight.resources import unreachable_cluster

    start = time.perf_counter()
    problem = unreachable_cluster("127.0.0.1:9", timeout_s=2.0)
    assert problem and "cannot reach the Ray cluster at '127.0.0.1:9'" in problem
    assert unreachable_cluster("auto") is None
    assert time.perf_counter() - start < 5.0


def test_reference_logps_pad_the_last_chunk_to_full_size():
    """Every forward sees a full batch (so it divides over the ranks); padded rows are dropped again."""
    import torch

    from ray_align.algorithms.preference import example_logps

    class RowEcho:  # a trainer whose log-prob of a row is its first token id, at the response position
        def __init__(self):
            self.sizes: list[int] = []

        def logprobs(self, batch):
            self.sizes.append(batch["input_ids"].shape[0])
            return batch["input_ids"][:, :1].float().expand(-1, batch["input_ids"].shape[1] - 1).clone()

    examples = [{"input_ids": [i, 9], "attention_mask": [1, 1], "response_mask": [0, 1]} for i in range(5)]
    trainer = RowEcho()
    assert example_logps(trainer, examples, pad_id=0, batch_size=2).tolist() == [0, 1, 2, 3, 4]
    assert trainer.sizes == [2, 2, 2]
    assert torch.is_tensor(trainer.logprobs({"input_ids": torch.zeros(1, 2, dtype=torch.long)}))
