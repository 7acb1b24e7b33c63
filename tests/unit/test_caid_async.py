"""caid.async_rollout's schedule: which policy's slack takes each dual step, and what the delay does to the loop."""

from __future__ import annotations

import numpy as np
import pytest
from base_job import BASE_JOB

from ray_align.algorithms.caid import iteration_line, measured_policy
from ray_align.config import ConfigError, load_config


def test_the_synchronous_loop_measures_the_policy_it_just_trained():
    assert [measured_policy(it, overlap=False) for it in range(4)] == [1, 2, 3, 4]


def test_the_overlapped_loop_measures_the_policy_it_starts_from_and_never_pi_ref():
    assert [measured_policy(it, overlap=True) for it in range(4)] == [None, 1, 2, 3]


def dual_loop(
    overlap: bool, eta_l: float, iterations: int, lam0: float, lam_star: float = 1.0, b: float = 0.5
):
    """The CAID loop with an exact inner maximiser on a dual of curvature L = 1: θ_j, trained at λ, has slack
    u(θ_j) = L (λ − λ*); θ_0 = π_ref has slack −b. Returns λ after every dual step (the last: θ_T's)."""
    trained_at = [None]  # trained_at[j]: the λ θ_j maximises; θ_0 = π_ref

    def u(j: int) -> float:
        return -b if j == 0 else trained_at[j] - lam_star

    lam, path = lam0, []
    for it in range(iterations):
        j = measured_policy(it, overlap)
        trained_at.append(lam)  # DPO θ_it → θ_{it+1} at λ_it
        if j is not None:
            lam = max(0.0, lam - eta_l * u(j))
            path.append(lam)
    if overlap:  # θ_T's own sample, after the loop
        lam = max(0.0, lam - eta_l * u(iterations))
        path.append(lam)
    return np.asarray(path)


def test_the_final_step_gives_both_loops_the_same_number_of_dual_steps():
    assert len(dual_loop(False, 0.5, 5, 1.2)) == len(dual_loop(True, 0.5, 5, 1.2)) == 5


def test_the_delayed_dual_step_is_the_two_term_recursion():
    """Async: e_{t+1} = e_t − ηL e_{t−1} (e = λ − λ*), from e_1 = e_0 (no step from π_ref)."""
    e0, c = 0.3, 0.4
    path = dual_loop(True, c, 6, 1.0 + e0) - 1.0
    e = [e0, e0]
    for _ in range(6):
        e.append(e[-1] - c * e[-2])
    np.testing.assert_allclose(path, e[2:], atol=1e-12)


@pytest.mark.parametrize("eta_l", [0.3, 0.9])
def test_both_loops_converge_when_eta_l_is_below_one(eta_l):
    for overlap in (False, True):
        assert abs(dual_loop(overlap, eta_l, 300, 1.4)[-1] - 1.0) < 1e-3


def test_the_delay_halves_the_stable_step_size():
    """Synchronous projected descent is stable for ηL < 2; one iteration's delay, only for ηL < 1."""
    assert abs(dual_loop(False, 1.5, 60, 1.4)[-1] - 1.0) < 1e-3
    overlapped = dual_loop(True, 1.5, 60, 1.4)
    assert np.abs(overlapped[-10:] - 1.0).max() > 0.1  # oscillates (growing until the projection at 0 bites)


def test_pi_refs_slack_never_moves_the_warm_start():
    """Started at λ* (the warm start), the overlapped loop stays there: −b of π_ref is never used."""
    np.testing.assert_allclose(dual_loop(True, 0.5, 4, 1.0, b=5.0), 1.0)


def test_an_iteration_without_a_dual_step_logs_no_slack():
    record = {"lambda": [1.5], "next_lambda": [1.5], "slack": None, "mean_reward": None}
    line = iteration_line(1, 3, ["safety"], record)
    assert line == "caid iteration 1/3 · λ safety 1.5 → 1.5 · slack none (no dual step from θ_0 = π_ref)"


def test_pecaid_refuses_async_rollout_before_anything_starts():
    base = ("algorithm=caid", "dual.rule=projected", "caid.async_rollout=true")
    assert load_config(BASE_JOB, list(base)).caid.async_rollout
    pecaid = (*base, "caid.form=preference", "dual.constraints=[{name: safety, margin: 0.1}]")
    with pytest.raises(ConfigError, match=r"caid\.async_rollout: only MoCAID"):
        load_config(BASE_JOB, list(pecaid))
