"""PeCAID (CAID's preference form) through the real actors lands on the exact optimum of the one-token task (m = 1).

The data is the stepwise suite's preference file (test_known_optimum_stepwise: every prompt and answer pair
N_PAIR times, stratified Bradley–Terry labels on the task's r and g, one-token responses without EOS).

Exact targets. DPO_H and DPO_S (β, from π_ref) fit π_ref e^{r/β}/Z and π_ref e^{g/β}/Z, so the implicit scores
are β ĥ_r = r − β log Z_H(x) and β ĥ_g = g − β log Z_S(x) up to the DPO stages' fit error. Read from the two
checkpoints on the answers (implicit_dual says why), they define a dual D̃ whose minimiser λ̃* is what the
iterations can reach (its per-prompt constants cancel in the margin form); λ* is the task's exact optimum. So:
- the iterations: λ_T against λ̃* (below), the final policy against π̃ = π_ref e^{ĥ_r + λ_{T−1}ĥ_g}/Z, the
  target of the last DPO;
- the method: λ_T against λ*, the policy against π* and its exact slack on the task's g.

Tolerance of λ_T − λ̃* (docs/known-optimum.md, "PeCAID"). With H = ∇²D̃(λ̃*) and η = dual.lr, each iteration is
λ_{t+1} − λ̃* ≈ (1 − ηH)(λ_t − λ̃*) − η ξ_t − ηH e_τ, where ξ_t is the on-policy sample's noise (sd σ_u =
sqrt(Σ_x ρ_x² Var_{π̃}(ĝ)/K)) and e_τ = (τ̂ − τ)/H the fixed error of step 0's τ̂ (sd sqrt(Σ ρ² Var_ref ĝ/K)/H).
λ_0 is the warm start, CAN's λ̂ on the same K samples (se_0 from `can_lambda_standard_error`). Adding the
terms' sd's (they are correlated, so no cancellation is assumed):
    sd_T ≤ (1 − ηH)^T se_0 + η σ_u sqrt(Σ_{s<T} (1 − ηH)^{2s}) + (1 − (1 − ηH)^T) se_τ,
held to 4 sd_T, plus the inexact maximiser: a DPO stage ends at TV ≈ 0.01–0.02 from its target (stepwise
suite), which moves Ê_π ĝ by at most 2·TV·max|ĝ − E ĝ| ≈ 0.04 and λ's fixed point by that over H: 0.06.
λ_T − λ*: that, plus |λ̃* − λ*| (the DPO_H/DPO_S fit error), held to PeCAN's 0.1.
Policies: TV ≤ 0.05 per DPO stage, as the stepwise suite; slack ≥ −0.05.

Measured (2-core CPU machine, 24 GB, no GPU; these settings): λ_T = 1.482 against λ̃* = 1.471 (tolerance
0.23) and λ* = 1.496; TV 0.020 to π*, slack −0.011. With lr 2e-3, 30 epochs and K = 512: λ_T = 1.4685 against
λ̃* = 1.4681, TV 0.025.
"""

from __future__ import annotations

import numpy as np
import pytest
from known_optimum import (
    Reference,
    build_reference,
    evaluate,
    job_config,
    policy_probs,
    write_preference_pairs,
)
from scipy.optimize import brentq

from actors.launch import run_job
from ray_align.algorithms.rollout import DUAL_FILE
from ray_align.run_dir import RunDir
from ray_align.tasks import fixed_points
from ray_align.tasks import known_optimum as ko

pytestmark = pytest.mark.integration

N_PAIR = 50  # rows per (prompt, unordered answer pair), as the stepwise suite
K = 256  # π_ref and on-policy samples per prompt (K/2 relabelled pairs each)
T, ETA = 2, 0.5
DPO = (
    "data.response_eos=false",
    "training.lr=3e-3",
    "training.scheduler=cosine",
    "training.epochs=20",
    "training.batch_size=256",
    "training.micro_batch_size=256",
)
TV_STEP = 0.05
LAMBDA_TOL = 0.1  # λ_T against λ*, as PeCAN's λ̂
MAXIMISER = 0.06  # the inexact inner DPO's share of λ_T − λ̃* (module doc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """The m = 1 reference with the preference file as its data."""
    root = tmp_path_factory.mktemp("known-optimum-pecaid")
    base = build_reference(root, 1)
    data = root / "pairs.jsonl"
    write_preference_pairs(data, base.task, N_PAIR)
    return Reference(
        base.task, base.policy, str(data), base.answer_ids, base.prompt_ids, base.pi_ref, base.optimum
    )


def on_answers(pi: np.ndarray, ref: Reference) -> np.ndarray:
    """π restricted to the answers and renormalised [X, A]."""
    pi = pi[:, ref.answer_ids]
    return pi / pi.sum(axis=1, keepdims=True)


def implicit_tables(ref: Reference, policies: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(β ĥ_r, β ĥ_g) [X, A]: the implicit scores of the run's DPO_H and DPO_S on the answers."""
    log_ref = np.log(on_answers(ref.pi_ref, ref))
    probs = {k: on_answers(policy_probs(policies[k], ref.prompt_ids), ref) for k in ("helpfulness", "safety")}
    beta = ref.task.beta
    return beta * (np.log(probs["helpfulness"]) - log_ref), beta * (np.log(probs["safety"]) - log_ref)


def implicit_dual(ref: Reference, r_hat: np.ndarray, g_hat: np.ndarray, lam_max: float) -> dict:
    """λ̃* of the dual on (r̂, ĝ) [X, A] with the task's margin, and what the tolerance needs at λ̃*: H, σ_u,
    se_τ. On the answers: DPO_H, DPO_S and every PeCAID step see answer pairs only, so the few 1e-5 of mass
    outside them have implicit scores no step fits (over the whole vocabulary they moved λ̃* by 0.06)."""
    beta, b, rho = ref.task.beta, ref.task.margins[0], ref.task.rho
    pi_ref = on_answers(ref.pi_ref, ref)

    def tilted(lam: float) -> np.ndarray:
        return ko.tilted_policy(pi_ref, r_hat + lam * g_hat, beta)

    def gradient(lam: float) -> float:  # ∇D̃ = E_ρ E_π ĝ − E_ρ E_ref ĝ − b
        return float(rho @ ((tilted(lam) - pi_ref) * g_hat).sum(axis=1)) - b

    lam = 0.0 if gradient(0.0) >= 0 else brentq(gradient, 0.0, lam_max, xtol=1e-10)

    def variance(pi: np.ndarray) -> np.ndarray:  # Var_π(ĝ) per prompt
        mean = (pi * g_hat).sum(axis=1, keepdims=True)
        return (pi * (g_hat - mean) ** 2).sum(axis=1)

    var_pi, var_ref = variance(tilted(lam)), variance(pi_ref)
    hess = float(rho @ var_pi) / beta
    return {
        "lam": lam,
        "tilted": tilted,
        "H": hess,
        "sigma_u": float(np.sqrt(rho**2 @ var_pi / K)),
        "se_tau": float(np.sqrt(rho**2 @ var_ref / K)) / hess,
    }


def iteration_tolerance(dual: dict, se_0: float) -> float:
    """4 sd_T (module doc) plus the inexact maximiser's share."""
    c = 1.0 - ETA * dual["H"]
    noise = ETA * dual["sigma_u"] * np.sqrt(sum(c ** (2 * s) for s in range(T)))
    return 4 * (abs(c) ** T * se_0 + noise + (1 - c**T) * dual["se_tau"]) + MAXIMISER


def test_pecaid_reaches_the_optimum(ray_session, reference, tmp_path):
    """Warm start from PeCAN's λ̂, then T × (DPO at λ_t → on-policy sample scored by β ĥ_g → dual step)."""
    lam_max = 10.0
    config = job_config(
        reference,
        tmp_path / "pecaid",
        "caid",
        "caid.form=preference",
        f"caid.samples_per_prompt={K}",
        "caid.num_prompts=3",
        f"caid.iterations={T}",
        "caid.epochs_per_iteration=30",
        "dual.rule=projected",
        f"dual.lr={ETA}",
        f"dual.lam_max={lam_max}",
        "checkpoint.every=1",
        *DPO,
    )
    result = run_job(config)
    lam = result["lambda"]["safety"]
    r_hat, g_hat = implicit_tables(reference, result["policies"])
    dual = implicit_dual(reference, r_hat, g_hat, lam_max)
    se_0 = float(
        fixed_points.can_lambda_standard_error(reference.task, reference.pi_ref, K, reference.answer_ids)[0]
    )
    tol = iteration_tolerance(dual, se_0)
    trained_at = result["iterations"][-1]["lambda"][0]  # λ_{T−1}: the last DPO's target
    pi = policy_probs(result["checkpoint"], reference.prompt_ids)
    outcome = evaluate(reference, result["checkpoint"])
    lam_star = float(reference.optimum.lam_star[0])
    print("pecaid", lam, dual["lam"], lam_star, tol, result["iterations"], outcome)
    assert len(result["iterations"]) == T
    assert abs(lam - dual["lam"]) <= tol, (lam, dual["lam"], tol)
    assert ko.tv_distance(on_answers(pi, reference), dual["tilted"](trained_at))[1] <= TV_STEP
    assert abs(lam - lam_star) <= LAMBDA_TOL, (lam, lam_star)
    assert outcome["tv"] <= TV_STEP, outcome
    assert np.all(outcome["slack"] >= -0.05), outcome
    # an iteration checkpoint per iteration; the last one holds the final λ
    last = RunDir(config.output_dir).checkpoint(f"pecaid_iter_{T:04d}")
    assert (last / DUAL_FILE).is_file()
