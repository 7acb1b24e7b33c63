"""The iterative methods are deterministic for a seed: two runs of CAID and of PPO-Lagrangian on the one-token
task (m = 2, so λ is a vector) log the same λ history, bit for bit. Also: CAID resumes from its last complete
iteration checkpoint.

What makes that hold: vLLM samples with a per-request seed (generation.seed + the step or iteration), the
trainers run on CPU torch with dropout off and a seeded data order, the dual rules are plain float64 numpy in
one coordinator actor, and every reduction over ranks or engines is in a fixed order. The runs are short: the
point is equality, not convergence (the convergence tests are test_known_optimum_dual.py and
test_known_optimum_ppo_lag.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from known_optimum import build_reference, job_config

from actors.launch import run_job
from ray_align.preflight import PreflightError
from ray_align.run_dir import RunDir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return build_reference(tmp_path_factory.mktemp("known-optimum-determinism"), 2)


def _twice(reference, root, algorithm: str, *overrides: str, **kwargs) -> list[Path]:
    """The output folders of two runs of the same job."""
    outs = [root / f"{algorithm}{i}" for i in range(2)]
    for out in outs:
        run_job(job_config(reference, out, algorithm, *overrides, **kwargs))
    return outs


CAID = (
    "can.samples_per_prompt=64",
    "caid.samples_per_prompt=64",
    "caid.num_prompts=3",
    "caid.iterations=3",
    "caid.epochs_per_iteration=4",
    "dual.rule=projected",
    "dual.lr=0.5",
    "training.lr=5e-3",
    "training.batch_size=32",
    "training.micro_batch_size=32",
    "checkpoint.every=1",
)


@pytest.fixture(scope="module")
def caid_runs(ray_session, reference, tmp_path_factory) -> list[Path]:
    return _twice(reference, tmp_path_factory.mktemp("caid"), "caid", *CAID)


def _caid_history(out: Path) -> list[tuple]:
    return [(r["lambda"], r["slack"], r["next_lambda"]) for r in RunDir(out).metrics("caid")]


def test_caid_lambda_history_is_reproducible(caid_runs):
    history = _caid_history(caid_runs[0])
    assert len(history) == 3
    assert history == _caid_history(caid_runs[1])
    assert history[0][2] != history[-1][2]  # λ moved: the equality is not that of a frozen run


def test_caid_resumes_after_its_last_complete_iteration(ray_session, reference, caid_runs, tmp_path):
    """A copy of a finished run loses what the last iteration wrote after its metric rows (its iteration and
    final checkpoints): the rerun restores θ and λ from caid_iter_0002 and trains iteration 2 only."""
    out = tmp_path / "caid"
    shutil.copytree(caid_runs[0], out)
    for name in ("caid", "caid_iter_0003"):
        shutil.rmtree(out / "checkpoints" / name)
    before = _caid_history(out)
    dpo_before = RunDir(out).metrics("caid_dpo_2")
    result = run_job(job_config(reference, out, "caid", *CAID))
    assert result["resumed_from_iteration"] == 2
    after = _caid_history(out)
    assert len(after) == 3 and after[:2] == before[:2]
    assert after[2][0] == before[2][0]  # iteration 2 trained at the restored λ_2 ...
    dpo_after = RunDir(out).metrics("caid_dpo_2")
    assert len(dpo_after) == len(dpo_before)  # (one attempt's rows)
    # ... from the restored θ_2: same weights, labels and batch, so the same loss before the first update
    assert dpo_after[0]["loss"] == pytest.approx(dpo_before[0]["loss"], rel=1e-6)
    assert [it["iteration"] for it in result["iterations"]] == [0, 1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["caid", "caid_iter_0002", "caid_iter_0003"]


def test_caid_with_other_settings_is_refused_or_starts_over(ray_session, reference, caid_runs, tmp_path):
    """A run folder belongs to one configuration: other settings are refused (nothing touched), and with
    overwrite the folder is cleared and the run starts over."""
    out = tmp_path / "caid"
    shutil.copytree(caid_runs[0], out)
    config = job_config(reference, out, "caid", *CAID, "caid.iterations=1")
    with pytest.raises(PreflightError, match=r"caid.iterations: 3 → 1.*--overwrite"):
        run_job(config)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["caid", "caid_iter_0002", "caid_iter_0003"]
    result = run_job(config, overwrite=True)
    assert result["resumed_from_iteration"] == 0 and len(result["iterations"]) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["caid", "caid_iter_0001"]


def test_ppo_lag_lambda_history_is_reproducible(ray_session, reference, tmp_path):
    outs = _twice(
        reference,
        tmp_path,
        "ppo_lag",
        "ppo.steps=4",
        "ppo.rollout_batch_size=48",
        "ppo.ppo_epochs=2",
        "training.batch_size=24",
        "training.micro_batch_size=24",
        "training.lr=5e-4",
        "training.critic_lr=1e-3",
        "dual.rule=safe_rlhf",
        "dual.lr=0.5",
        "dual.lam_init=0.5",
        "dual.window=96",
        constraint_form="threshold",
        critics=True,
    )
    keys = ("lambda_safety", "lambda_humour", "kl", "reward")
    history, again = ([tuple(r[k] for k in keys) for r in RunDir(out).metrics("ppo_lag")] for out in outs)
    assert len(history) == 4
    assert history == again
    assert history[0][:2] != history[-1][:2]
