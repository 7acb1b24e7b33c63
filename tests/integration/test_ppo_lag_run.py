"""PPO-Lagrangian end to end through the real driver: vLLM rollouts, reward/cost scorers, reference, DeepSpeed
actor and critics, the dual coordinator; then a resumed run in the same folder.

Two constraints (the tiny cost model under two names, thresholds 0.0 and 0.2), so λ is a vector and there are two
cost critics. Run 1: 2 steps. Run 2: ppo.steps=3 in the same output folder resumes from step_000002 and runs
step 3. Each run starts every role (about 1.5–2 minutes on a 2-core machine).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from base_job import BASE_JOB
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from actors.launch import run_job
from ray_align.config import load_config
from ray_align.dual import rules
from ray_align.models.resolve import resolve_models
from ray_align.run_dir import RunDir

pytestmark = pytest.mark.integration

NAMES = ["safety", "harm"]
THRESHOLDS = [0.0, 0.2]
LR, LAM_INIT, LAM_MAX, WINDOW = 0.5, 1.0, 5.0, 6  # window 6 < 12 episodes: the window drops old episodes


def _overrides(root, cost_path: str, steps: int) -> list[str]:
    costs = ", ".join(f"{{name: {n}, path: {cost_path}}}" for n in NAMES)
    constraints = ", ".join(f"{{name: {n}, threshold: {d}}}" for n, d in zip(NAMES, THRESHOLDS))
    return [
        "algorithm=ppo_lag",
        f"output_dir={root}",
        "models.tiny=true",
        f"models.costs=[{costs}]",
        f"dual.constraints=[{constraints}]",
        f"dual.lr={LR}",
        f"dual.lam_init={LAM_INIT}",
        f"dual.lam_max={LAM_MAX}",
        f"dual.window={WINDOW}",
        f"ppo.steps={steps}",
        "ppo.rollout_batch_size=4",
        "training.batch_size=2",
        "training.micro_batch_size=2",
        "training.lr=1e-3",  # large enough that the policy visibly leaves π_ref in one step
        "training.scheduler=constant",
        "generation.max_tokens=8",
        "checkpoint.every=1",
        "checkpoint.keep=2",
    ]


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_lag_run")
    cost_path = resolve_models(load_config(BASE_JOB, ["models.tiny=true"]).models).constraints[0].path
    first = run_job(load_config(BASE_JOB, _overrides(root, cost_path, steps=2)))
    history_after_first = json.loads((root / "dual.json").read_text())["history"]
    second = run_job(load_config(BASE_JOB, _overrides(root, cost_path, steps=3)))
    return RunDir(root), first, second, history_after_first


def _episode_costs(out: RunDir, step: int) -> np.ndarray:
    """Per-episode costs [n, m] of one step, read back from its rollout table (utility columns = −cost)."""
    table = pq.read_table(out.path("tables", "rollouts", f"step_{step:06d}.parquet")).to_pydict()
    return -np.stack([np.asarray(table[n]) for n in NAMES], axis=1)


def test_one_metrics_line_per_step_with_finite_values(runs):
    out, *_ = runs
    rows = out.metrics("ppo_lag")
    assert [r["step"] for r in rows] == [1, 2, 3]
    keys = ["reward", "kl", "actor_loss", "clip_frac", "approx_kl", "reward_critic_loss", "sync_bytes"]
    keys += [f"{p}_{n}" for n in NAMES for p in ("cost", "lambda")] + [f"cost_critic_{n}_loss" for n in NAMES]
    for row in rows:
        assert all(np.isfinite(row[k]) for k in keys), row
        assert row["sync_bytes"] > 0 and row["sync_seconds"] >= 0
        for j, n in enumerate(NAMES):  # the logged mean cost is the mean of the step's episodes
            assert row[f"cost_{n}"] == pytest.approx(_episode_costs(out, row["step"])[:, j].mean())
    # Step 1: the actor IS π_ref, and its log-probs (DeepSpeed actor) and the reference's (HF model) are taken at
    # the same token positions, so KL(π_old‖π_ref) is 0 up to float noise.
    assert abs(rows[0]["kl"]) < 1e-5


def test_lambda_follows_the_safe_rlhf_rule_on_the_logged_costs(runs):
    """Replaying ray_align.dual.rules.safe_rlhf_log_lambda on the episodes of steps 1, 2, 3 (the λ update of
    step k sees step k's costs, before its actor step) gives the coordinator's history, across the resume."""
    out, *_ = runs
    history = json.loads(out.path("dual.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    rule = rules.safe_rlhf_log_lambda(LR, LAM_INIT, LAM_MAX, np.array(THRESHOLDS), WINDOW)
    state, expected = rule.init(len(NAMES)), [np.full(len(NAMES), LAM_INIT)]
    for step in (1, 2, 3):
        lam, state = rule.update(state, _episode_costs(out, step))
        expected.append(lam)
    np.testing.assert_allclose([h["lam"] for h in history], expected, rtol=1e-9)
    logged = [[r[f"lambda_{n}"] for n in NAMES] for r in out.metrics("ppo_lag")]
    np.testing.assert_allclose(logged, expected[1:], rtol=1e-9)
    assert not np.allclose(expected[-1], LAM_INIT)  # λ moved: the check is not vacuous


def test_checkpoints_load_with_transformers_and_hold_trained_weights(runs):
    out, _, second, _ = runs
    names = sorted(p.name for p in out.path("checkpoints").iterdir() if not p.name.startswith("."))
    assert names == ["step_000002", "step_000003"]  # keep=2 pruned step_000001
    assert second["checkpoint"] == str(out.checkpoint("step_000003"))
    policy = resolve_models(load_config(BASE_JOB, ["models.tiny=true"]).models).policy
    initial = AutoModelForCausalLM.from_pretrained(policy).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(out.checkpoint("step_000003")).state_dict()
    assert initial.keys() == trained.keys()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    for folder in ("reward", *(f"cost_{n}" for n in NAMES)):
        critic = AutoModelForTokenClassification.from_pretrained(
            out.checkpoint("step_000003") / "critics" / folder
        )
        assert critic.config.num_labels == 1
    assert (out.checkpoint("step_000003") / "dual.json").is_file()


def test_resume_continues_the_step_count_and_the_actor(runs):
    """Run 2 resumed after step 2 and ran only step 3. Its actor started from step_000002, not from π_ref: had it
    restarted from π_ref, its log-probs would equal the reference's and step 3's KL would be 0 as at step 1."""
    out, first, second, history_after_first = runs
    assert (first["resumed_from_step"], second["resumed_from_step"]) == (0, 2)
    history = json.loads(out.path("dual.json").read_text())["history"]
    assert history[:3] == history_after_first
    assert abs(out.metrics("ppo_lag")[2]["kl"]) > 1e-4
    assert second["lambda"] == dict(zip(NAMES, history[-1]["lam"]))
