"""PeCAID (`algorithm: caid`, `caid.form: preference`): its pure steps against hand values, and how the config,
the driver and the preflight tell it from MoCAID (module, roles, the options it reads, its constraint)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from base_job import BASE_JOB

from ray_align.algorithms import MODULES, PECAID, job_module, module_name
from ray_align.algorithms.caid import iteration_line
from ray_align.algorithms.pecaid import on_policy_slack, oriented
from ray_align.config import ConfigError, load_config
from ray_align.preflight.findings import Findings
from ray_align.preflight.models import needed_checkpoints
from ray_align.preflight.resources import check_algorithm, roles_of

PECAID_JOB = ("algorithm=caid", "caid.form=preference", "dual.rule=projected")


def config(*overrides: str):
    return load_config(BASE_JOB, list(overrides))


# ---------------------------------------------------------------------------------------------- pure steps


def test_on_policy_slack_is_beta_h_g_averaged_per_prompt_first_minus_tau():
    """Prompt 0 has samples h_g = 1, 3 (mean 2), prompt 1 one sample h_g = −1: Ê_x Ê_π[β h_g] = β·(2 − 1)/2."""
    h_g = np.array([1.0, -1.0, 3.0])
    index = np.array([0, 1, 0])
    beta, tau = 0.5, np.array([0.1])
    np.testing.assert_allclose(on_policy_slack(h_g, index, tau, beta), [0.5 * 0.5 - 0.1])


def test_on_policy_slack_takes_one_column_per_constraint():
    h_g = np.array([[1.0, 0.0], [3.0, 2.0], [-1.0, 4.0]])
    index = np.array([0, 0, 1])
    u = on_policy_slack(h_g, index, np.array([0.0, 1.0]), beta=2.0)
    # per prompt: (2, 1) and (−1, 4); mean (0.5, 2.5); × β = (1, 5); − τ
    np.testing.assert_allclose(u, [1.0, 4.0])


def test_oriented_swaps_the_reference_log_probs_of_pairs_whose_chosen_is_y1():
    first = [{"id": 0}, {"id": 1}, {"id": 2}]
    second = [{"id": 10}, {"id": 11}, {"id": 12}]
    chosen = [first[0], second[1], first[2]]
    ref = np.array([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])
    np.testing.assert_array_equal(oriented(ref, first, chosen), [[-1.0, -2.0], [-4.0, -3.0], [-5.0, -6.0]])


def test_iteration_line_names_the_method():
    record = {"lambda": [1.0], "next_lambda": [1.25], "slack": [-0.5], "mean_reward": 0.3}
    line = iteration_line(2, 4, ["safety"], record, method="pecaid")
    assert line == "pecaid iteration 2/4 · λ safety 1 → 1.25 · slack safety -0.5 · reward 0.3"


# ---------------------------------------------------------------------------------------------- config


def test_caid_form_picks_the_module_and_its_roles():
    moc, pec = config("algorithm=caid", "dual.rule=projected"), config(*PECAID_JOB)
    assert moc.caid.form == "model" and module_name(moc) == MODULES["caid"]
    assert module_name(pec) == PECAID and job_module(pec).ROLES == ("generator", "trainer")
    assert roles_of("caid", PECAID) == importlib.import_module(PECAID).ROLES
    assert check_algorithm(pec, Findings("check")) == ("generator", "trainer")  # no scorer
    assert "scorer" in check_algorithm(moc, Findings("check"))


def test_pecaid_needs_no_reward_or_cost_model():
    """Without models.tiny and with no reward model, MoCAID is refused for lacking one; PeCAID loads the policy
    (and π_ref) only."""
    for overrides, refused in ((("algorithm=caid", "dual.rule=projected"), True), (PECAID_JOB, False)):
        cost = "models.costs=[{name: safety, function: 'ray_align.tasks.answer_scorer:default_safety'}]"
        job = config(*overrides, "models.tiny=false", "models.policy=/some/policy", cost)
        found = Findings("check")
        roles = check_algorithm(job, found)
        wanted = [c.key for c in needed_checkpoints(job, roles, found) if c is not None]
        assert any("models.reward" in p for p in found.problems) is refused, found.problems
        if not refused:
            assert wanted == ["models.policy"]


def test_pecan_label_is_read_by_pecaid_and_refused_for_mocaid():
    assert config(*PECAID_JOB, "can.pecan_label=reference").can.pecan_label == "reference"
    with pytest.raises(
        ConfigError, match=r"can.pecan_label \(read by pecan, caid with caid.form: preference\)"
    ):
        config("algorithm=caid", "dual.rule=projected", "can.pecan_label=reference")
    with pytest.raises(ConfigError, match=r"caid.form \(read by caid\)"):
        config("algorithm=mocan", "caid.form=preference")


@pytest.mark.parametrize(
    "constraints",
    [
        "[{name: safety, threshold: 0.0}]",
        "[{name: safety, margin: 0.1}, {name: humour, margin: 0.1}]",
    ],
    ids=["threshold", "two"],
)
def test_pecaid_takes_one_margin_constraint(constraints):
    costs = "models.costs=[{name: safety, path: x}, {name: humour, path: y}]"
    with pytest.raises(ConfigError, match=r"caid\.form preference"):
        config(*PECAID_JOB, costs, f"dual.constraints={constraints}")


def test_pecaid_constraint_names_the_safety_preference_not_a_scorer():
    """MoCAID's constraint must name a cost model; PeCAID's is the dataset's safety preference."""
    bare = (
        "models.tiny=false",
        "models.policy=/some/policy",
        "dual.constraints=[{name: safety, margin: 0.1}]",
    )
    assert config(*PECAID_JOB, *bare).dual.constraints[0].name == "safety"
    with pytest.raises(ConfigError, match="has no scorer"):
        config("algorithm=caid", "dual.rule=projected", *bare)
