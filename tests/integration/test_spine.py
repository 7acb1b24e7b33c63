"""The spine as the driver builds it: a placement file with 2 trainer ranks, 1 engine and 2 scorers runs one
generate → score → train → sync cycle, the coordinator runs as a Ray actor, and everything shuts down cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from base_job import BASE_JOB
from transformers import AutoTokenizer

from actors.build import build_cluster
from ray_align.algorithms.common import prompt_token_ids
from ray_align.cluster import Sampling
from ray_align.config import load_config
from ray_align.data.formatting import collate, join_example
from ray_align.dual import rules
from ray_align.losses.specs import SFTSpec
from ray_align.models.resolve import resolve_models

pytestmark = pytest.mark.integration
CLUSTERS = Path(__file__).resolve().parents[2] / "clusters"


ROLE_CLASSES = ("VLLMGenerator", "SequenceScorer", "TrainerRank", "DualCoordinator")


def _role_processes() -> set[int]:
    """PIDs of this Ray instance's workers that host one of our actors (Ray titles them "ray::ClassName...")."""
    import psutil
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    found = set()
    for proc in psutil.Process(raylet).children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        if title.startswith("ray::") and any(name in title for name in ROLE_CLASSES):
            found.add(proc.pid)
    return found


def test_one_cycle_on_the_two_rank_placement(ray_session, tiny_models, tmp_path):
    ray = ray_session
    config = load_config(
        BASE_JOB,
        [
            f"placement.file={CLUSTERS / 'local_cpu_2ranks.yaml'}",
            "training.zero_stage=3",
            "training.batch_size=4",
            "training.micro_batch_size=2",
            "training.lr=1e-3",
            "training.scheduler=constant",
            "training.warmup_ratio=0",
            "generation.max_tokens=6",
            "generation.temperature=0",
            "dual.rule=projected",
            "dual.lam_init=1.0",
            "dual.lr=0.5",
        ],
    )
    models = resolve_models(config.models, tiny_root=tiny_models.root)
    before = _role_processes()
    cluster, builder = build_cluster(config, models, ("generator", "scorer", "trainer"))
    try:
        assert builder.plan.count("trainer") == 2 and builder.plan.count("scorer") == 2
        # generate
        ids = prompt_token_ids(
            ["How do I bake bread?", "Tell me a joke.", "Hi", "What is 2+2?"], config, models.policy
        )
        rollouts = cluster.generator.generate(ids, Sampling(n=1, temperature=0.0, max_tokens=6, seed=0))
        assert len(rollouts) == 4 and all(len(r) >= 1 for r in rollouts.response_ids)
        # score: reward + one cost, split across the two scorer actors
        scores = cluster.scorer.score(rollouts.prompt_ids, rollouts.response_ids)
        assert scores.shape == (4, 2) and np.isfinite(scores).all()
        # dual step in the coordinator actor equals the pure rule
        u = np.array([scores[:, 1].mean()])
        rule = rules.projected_dual_descent(0.5, 1.0, 5.0)
        expected, _ = rule.update(rule.init(1), u)
        np.testing.assert_allclose(cluster.coordinator.update(u), expected)
        # train: one SFT step on the rollouts over two ZeRO-3 ranks
        trainer = cluster.new_trainer(models.policy, total_steps=1)
        initial = trainer.state_dict()
        examples = [join_example(p, r) for p, r in zip(rollouts.prompt_ids, rollouts.response_ids)]
        tokenizer = AutoTokenizer.from_pretrained(models.policy)
        stats = trainer.train_step(collate(examples, tokenizer.pad_token_id), SFTSpec())
        assert np.isfinite(stats["loss"])
        # sync: the engine now generates from the trained weights
        trained = trainer.state_dict()
        assert any(not torch.equal(initial[k], trained[k]) for k in initial)
        sync = cluster.generator.update_weights(trained)
        assert sync["bytes"] == sum(t.numel() * t.element_size() for t in trained.values())
    finally:
        builder.shutdown()
    # Clean shutdown: no process of ours is left, and the placement group is gone.
    deadline = time.time() + 30
    while time.time() < deadline and _role_processes() - before:
        time.sleep(0.5)
    assert not (_role_processes() - before)
    assert ray.util.placement_group_table(builder.pg)["state"] == "REMOVED"
