"""MoCAN and CAID through the real actors land on the exact optimum of the one-token task (m = 1 and m = 2).

Tolerances, and why (docs/known-optimum.md has the formulas):
- λ: CAN's λ̂ comes from K = 256 samples per prompt; its standard error `se` is the delta-method value of
  `can_lambda_standard_error`. We allow 4·se + 0.02 (4 se: a false alarm about once in 15,000 runs).
- policy: 300 DPO steps on soft labels reach TV ≈ 0.01 to π_λ̂ on this machine; λ̂'s own error moves π_λ̂ by a
  few thousandths. We allow TV ≤ 0.05 to π* over the whole vocabulary, and constraint slack ≥ −0.05 (the
  exact slack of π* is 0). TV over the whole vocabulary also bounds the mass DPO may push outside the answers
  (DPO constrains only log-ratios between answers; see known_optimum._fit_reference).
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from known_optimum import DUAL_DPO, build_reference, caid_overrides, evaluate, job_config

from actors.launch import run_job
from ray_align.tasks import fixed_points

pytestmark = pytest.mark.integration

K = 256
DPO = DUAL_DPO


@pytest.fixture(scope="module", params=[1, 2], ids=["m1", "m2"])
def reference(request, tmp_path_factory):
    return build_reference(tmp_path_factory.mktemp(f"known-optimum-m{request.param}"), request.param)


def _lambda_tolerance(ref) -> np.ndarray:
    return 4 * fixed_points.can_lambda_standard_error(ref.task, ref.pi_ref, K, ref.answer_ids) + 0.02


def test_mocan_reaches_the_optimum(ray_session, reference, tmp_path):
    config = job_config(
        reference, tmp_path / "mocan", "mocan", f"can.samples_per_prompt={K}", "training.epochs=100", *DPO
    )
    result = run_job(config)
    lam = np.array(list(result["lambda"].values()))
    np.testing.assert_array_less(np.abs(lam - reference.optimum.lam_star), _lambda_tolerance(reference))
    outcome = evaluate(reference, result["checkpoint"])
    assert outcome["tv"] <= 0.05, outcome
    assert np.all(outcome["slack"] >= -0.05), outcome


CAID = (f"can.samples_per_prompt={K}", *caid_overrides(K, iterations=2, epochs=100))
ETA = 0.5


def test_caid_reaches_the_optimum(ray_session, reference, tmp_path):
    """Warm start from λ̂, then 2 × (100 DPO epochs at λ_t → on-policy sample → dual step). η = 0.5 < 2/L here
    (ηL ≈ 0.34 for m = 1, 0.27 for m = 2, L the largest eigenvalue of ∇²D(λ*) at the task's target π_ref)."""
    result = run_job(job_config(reference, tmp_path / "caid", "caid", *CAID))
    lam = np.array(list(result["lambda"].values()))
    np.testing.assert_array_less(np.abs(lam - reference.optimum.lam_star), _lambda_tolerance(reference) + 0.1)
    outcome = evaluate(reference, result["checkpoint"])
    assert outcome["tv"] <= 0.05, outcome
    assert np.all(outcome["slack"] >= -0.05), outcome
    assert len(result["iterations"]) == 2


@pytest.mark.parametrize("reference", [2], ids=["m2"], indirect=True)  # m = 2 only, for CI time
def test_caid_async_rollout_reaches_the_optimum(ray_session, reference, tmp_path):
    """caid.async_rollout (m = 2 only, for CI time): θ_t is sampled during its DPO and λ steps on its slack, one
    iteration late (stable for ηL < 1; ≈ 0.27 here), none from π_ref; θ_T is sampled at the end and takes the T-th
    step. Same tolerances as the synchronous loop. A rerun resumes after the last iteration: it syncs the loaded
    θ_T into the engines and repeats the final sample and step, bit for bit."""
    config = job_config(
        reference, tmp_path / "caid", "caid", *CAID, "caid.async_rollout=true", "checkpoint.every=2"
    )
    result = run_job(config)
    lam = np.array(list(result["lambda"].values()))
    np.testing.assert_array_less(np.abs(lam - reference.optimum.lam_star), _lambda_tolerance(reference) + 0.1)
    outcome = evaluate(reference, result["checkpoint"])
    assert outcome["tv"] <= 0.05, outcome
    assert np.all(outcome["slack"] >= -0.05), outcome
    first, second = result["iterations"]
    final = result["final_step"]
    assert first["slack_policy"] is None and first["next_lambda"] == first["lambda"]  # no step from π_ref
    # θ_1 was sampled during the second DPO: the iteration waited for less than the sampling took
    assert second["slack_policy"] == 1 and second["sample_wait_seconds"] < second["sample_seconds"]
    assert final["slack_policy"] == 2 and final["lambda"] == second["next_lambda"]
    for step in (second, final):
        expected = np.maximum(np.array(step["lambda"]) - ETA * np.array(step["slack"]), 0.0)
        np.testing.assert_allclose(step["next_lambda"], expected, rtol=1e-6)
    assert list(result["final_slack"].values()) == final["slack"] and list(lam) == final["next_lambda"]
    assert result["train_seconds"] >= sum(r["train_seconds"] for r in result["iterations"]) - 1e-3

    again = run_job(config)
    assert again["resumed_from_iteration"] == 2 and again["iterations"] == result["iterations"]
    for key in ("slack", "lambda", "next_lambda", "mean_reward"):
        assert again["final_step"][key] == final[key], key


def test_sampling_and_the_dual_are_deterministic(ray_session, reference, tmp_path):
    """Two runs with the same seed: the same scored table and the same λ̂, bit for bit."""
    runs = [
        run_job(job_config(reference, tmp_path / f"run{i}", "sample_score", "can.samples_per_prompt=64"))
        for i in range(2)
    ]
    assert runs[0]["lambda"] == runs[1]["lambda"]
    tables = [pq.read_table(r["table"]).drop(["response"]) for r in runs]
    assert tables[0].equals(tables[1])
