"""The coordinator's λ trajectory equals the pure rule's, and a save/restore continues it exactly.

These run the coordinator class in-process; tests/integration/test_spine.py runs the same class as a Ray actor.
"""

from __future__ import annotations

import numpy as np
import pytest

from actors.coordinator import DualCoordinator, DualRuleSpec
from ray_align.config import JobConfig
from ray_align.config.load import apply_override, parse_override
from ray_align.dual import rules
from ray_align.dual.can import ScoredTable


def _costs(step: int) -> np.ndarray:
    rng = np.random.default_rng(step)
    return rng.normal(0.3, 1.0, size=(4, 2))  # 4 episodes, m = 2 constraints


def test_trajectory_equals_the_pure_rule_and_resumes_exactly(tmp_path):
    spec = DualRuleSpec(
        names=("harm", "humor"), rule="safe_rlhf", lam_init=1.0, lam_max=5.0, lr=0.1, window=8
    )
    coordinator = DualCoordinator(spec)
    rule = rules.safe_rlhf_log_lambda(0.1, 1.0, 5.0, np.zeros(2), window=8)
    state = rule.init(2)
    for step in range(5):
        expected, state = rule.update(state, _costs(step))
        np.testing.assert_allclose(coordinator.update(_costs(step)), expected, rtol=0, atol=0)
    path = coordinator.save(str(tmp_path / "dual.json"))

    resumed = DualCoordinator(spec)
    resumed.restore(path)
    for step in range(5, 9):
        expected, state = rule.update(state, _costs(step))
        np.testing.assert_array_equal(resumed.update(_costs(step)), expected)
        coordinator.update(_costs(step))
    np.testing.assert_array_equal(resumed.lam(), coordinator.lam())
    assert [h["step"] for h in resumed.history()] == list(range(10))


@pytest.mark.parametrize("rule", ["projected", "pid", "constant"])
def test_every_rule_is_reachable_from_the_config(rule):
    coordinator = DualCoordinator(
        DualRuleSpec(names=("safety",), rule=rule, lam_init=0.5, lam_max=5.0, lr=0.1)
    )
    lam = coordinator.update(np.array([1.0]))
    # projected: 0.5 − 0.1·1 = 0.4 (positive slack lowers λ); pid with ki = lr: 0.5 + 0.1·(1 − 0) = 0.6;
    # constant stays 0.5.
    assert lam[0] == pytest.approx({"projected": 0.4, "pid": 0.6, "constant": 0.5}[rule])


def test_solve_sets_lambda_and_records_it():
    # Two prompts, two responses each; g = [0, 1]: the margin form with b = 0.25 over the reference mean 0.5.
    table = ScoredTable.dense(
        np.array([[1.0, 0.0], [1.0, 0.0]]),
        np.array([[[0.0], [1.0]], [[0.0], [1.0]]]),
    )
    coordinator = DualCoordinator(DualRuleSpec(names=("safety",), rule="projected", lam_init=0.0))
    result = coordinator.solve(table, beta=1.0, margin=0.25)
    # E_{π_λ} g = σ((λ − 1)/β) must equal τ = 0.75 ⇒ λ* = 1 + β·log 3.
    assert result.lam[0] == pytest.approx(1.0 + np.log(3.0), abs=1e-6)
    np.testing.assert_allclose(coordinator.lam(), result.lam)
    assert coordinator.history()[-1]["event"] == "solve"


def test_nan_estimate_is_refused():
    coordinator = DualCoordinator(DualRuleSpec(names=("safety",)))
    with pytest.raises(ValueError, match="NaN or inf"):
        coordinator.update(np.array([[np.nan]]))


def _job_dual(*overrides: str):
    """The dual section of a ppo_lag job on the tiny family (one cost model, 'safety')."""
    tree = {"algorithm": "ppo_lag", "models": {"tiny": True}}
    for text in ["dual.constraints=[{name: safety, threshold: 0.5}]", "dual.lam_init=1.0", *overrides]:
        apply_override(tree, *parse_override(text))
    return JobConfig.model_validate(tree).dual


def test_pid_integral_gain_defaults_to_dual_lr_on_the_driver_path():
    """The spec the driver builds from the job's dual section (DualRuleSpec.from_config). dual.pid.ki unset:
    K_I = dual.lr = 0.3; K_P = 0.1 (the schema default), K_D = 0. One update with J_C = 1.5, d = 0.5, Δ = 1:
        I = 1 + 0.3·1 = 1.3,  λ = 0.1·1 + 1.3 = 1.4.
    An explicit dual.pid.ki = 0.05 wins over dual.lr: I = 1.05, λ = 1.15."""
    spec = DualRuleSpec.from_config(_job_dual("dual.rule=pid", "dual.lr=0.3"), ["safety"])
    assert DualCoordinator(spec).update(np.array([1.5]))[0] == pytest.approx(1.4)
    spec = DualRuleSpec.from_config(_job_dual("dual.rule=pid", "dual.lr=0.3", "dual.pid.ki=0.05"), ["safety"])
    assert DualCoordinator(spec).update(np.array([1.5]))[0] == pytest.approx(1.15)
    assert spec.thresholds == (0.5,)


def _one_constraint_table() -> ScoredTable:
    """Two prompts, two responses each, r = (1, 0), g = (0, 1): E_{π_λ} g = σ((λ − 1)/β)."""
    return ScoredTable.dense(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[[0.0], [1.0]], [[0.0], [1.0]]]))


def test_solve_caps_lambda_star_at_lam_max_so_the_projected_rule_does_not_jump(caplog, tmp_path):
    """Margin 0.25 over the reference mean 0.5 (β = 1): λ* = 1 + log 3 ≈ 2.0986 > λ_max = 1.5. The coordinator
    holds λ = 1.5 (the rule's own bound) and warns; the solution it returns is the one at λ = 1.5, whose gradient
    is the predicted shortfall σ(0.5) − 0.75 ≈ −0.1225 < 0. CAID's first dual step from there with a zero slack
    stays at 1.5: before the cap the coordinator held 2.0986 and that step jumped to 1.5."""
    coordinator = DualCoordinator(
        DualRuleSpec(names=("safety",), rule="projected", lam_init=0.0, lam_max=1.5)
    )
    with caplog.at_level("WARNING"):
        result = coordinator.solve(_one_constraint_table(), beta=1.0, margin=0.25)
    assert coordinator.lam()[0] == pytest.approx(1.5)
    assert result.lam[0] == pytest.approx(1.5)
    assert result.grad[0] == pytest.approx(1.0 / (1.0 + np.exp(-0.5)) - 0.75, abs=1e-12)
    assert "dual.lam_max" in caplog.text and "safety" in caplog.text
    record = coordinator.history()[-1]
    assert record["event"] == "solve" and record["lam_star"][0] == pytest.approx(1.0 + np.log(3.0), abs=1e-6)
    coordinator.save(str(tmp_path / "dual.json"))  # the record (numpy values included) is written as JSON
    assert coordinator.update(np.array([0.0]))[0] == pytest.approx(1.5)


def test_solve_that_does_not_converge_fails_or_warns_when_not_strict(caplog):
    """One Newton step from λ = 0 does not reach the KKT tolerance: a one-shot solve fails with a message that
    says so; strict=False (CAID's warm start, corrected by its iterations) warns and keeps the iterate."""
    coordinator = DualCoordinator(DualRuleSpec(names=("safety",), rule="projected", lam_init=0.0))
    with pytest.raises(ValueError, match="did not converge"):
        coordinator.solve(_one_constraint_table(), beta=1.0, margin=0.25, max_iter=1)
    assert coordinator.lam()[0] == 0.0  # λ untouched by a failed solve
    with caplog.at_level("WARNING"):
        result = coordinator.solve(_one_constraint_table(), beta=1.0, margin=0.25, max_iter=1, strict=False)
    assert not result.converged and "did not converge" in caplog.text
    assert coordinator.lam()[0] == pytest.approx(result.lam[0]) and result.lam[0] > 0
    assert coordinator.history()[-1]["converged"] is False


def test_an_unreachable_margin_is_the_users_error_not_a_crash():
    """The table's utilities are 0 and 1 (mean 0.5): no tilt reaches a mean above 1, so a margin of 0.6 over the
    reference mean is infeasible. That is the job's setting to change: UserError (exit 2), naming the key."""
    from ray_align.errors import UserError

    coordinator = DualCoordinator(DualRuleSpec(names=("safety",), rule="projected", lam_init=0.0))
    with pytest.raises(UserError, match=r"dual.constraints: infeasible.*Lower the margin"):
        coordinator.solve(_one_constraint_table(), beta=1.0, margin=0.6)
    assert coordinator.lam()[0] == 0.0
