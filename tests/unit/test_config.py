"""Job configuration: every bad input fails before anything starts, with the key path in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_align.config import ConfigError, JobConfig, dump_config, load_config
from ray_align.config.load import apply_override, parse_override


def _write(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def _error(tmp_path, text: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), overrides)
    return str(info.value)


def test_default_config_is_the_tiny_quickstart():
    config = load_config(None)
    assert isinstance(config, JobConfig)
    assert config.models.tiny and config.algorithm == "mocan"
    assert config.models.constraint_names == ["harm"]
    assert config.dual.constraints[0].name == "harm"
    assert config.models.reward_function == "ray_align.tasks.quickstart:helpfulness"
    assert config.eval.enabled and config.data.eval_fraction > 0  # it ends with a held-out evaluation


def test_schema_defaults_are_the_published_values():
    config = JobConfig()
    assert config.dpo.beta == 0.1 and config.can.beta == 0.1
    assert (config.ppo.clip_eps, config.ppo.value_clip, config.ppo.kl_coef) == (0.2, 5.0, 0.01)
    assert (config.dual.lam_init, config.dual.lam_max, config.dual.lr, config.dual.window) == (
        1.0,
        5.0,
        0.1,
        128,
    )
    assert (config.ppo.gamma, config.ppo.gae_lambda, config.ppo.clip_range_score) == (1.0, 0.95, 50.0)


def test_misspelt_key_names_the_path_and_the_accepted_keys(tmp_path):
    msg = _error(tmp_path, "dual:\n  lrr: 0.1\n")
    assert "dual.lrr: unknown key" in msg
    assert "lr," in msg and "lam_max" in msg


def test_wrong_type_names_the_path(tmp_path):
    msg = _error(tmp_path, "training:\n  epochs: many\n")
    assert "training.epochs" in msg and "'many'" in msg


def test_invalid_literal_lists_the_accepted_values(tmp_path):
    msg = _error(tmp_path, "generation:\n  engine: tgi\n")
    assert "generation.engine" in msg and "'vllm', 'hf' or 'auto'" in msg


def test_non_positive_beta_is_refused(tmp_path):
    msg = _error(tmp_path, "dpo:\n  beta: 0\n")
    assert "dpo.beta" in msg and "greater than 0" in msg


def test_lam_max_below_lam_init_is_refused(tmp_path):
    msg = _error(tmp_path, "dual:\n  lam_init: 6\n  lam_max: 5\n")
    assert "dual.lam_max (5.0) must be >= dual.lam_init (6.0)" in msg


def test_margin_for_a_constraint_with_no_scorer_is_refused(tmp_path):
    text = "algorithm: mocan\ndual:\n  constraints: [{name: humor, margin: 0.3}]\n"
    msg = _error(tmp_path, text)
    assert "dual.constraints.0.name: 'humor' has no scorer" in msg and "known: ['safety']" in msg


def test_constraint_needs_exactly_one_bound(tmp_path):
    msg = _error(tmp_path, "dual:\n  constraints: [{name: safety, margin: 1, threshold: 0}]\n")
    assert "exactly one of 'margin' or 'threshold'" in msg


def test_constrained_algorithm_without_constraint_is_refused(tmp_path):
    msg = _error(tmp_path, "algorithm: ppo_lag\n")
    assert "algorithm 'ppo_lag' needs at least one entry in dual.constraints" in msg


def test_unknown_algorithm_lists_the_algorithms(tmp_path):
    msg = _error(tmp_path, "algorithm: trpo\n")
    assert "algorithm" in msg and "'mocan'" in msg and "'sacpo'" in msg


def test_policy_required_without_tiny(tmp_path):
    msg = _error(tmp_path, "models:\n  tiny: false\n")
    assert "models.policy" in msg


def test_several_errors_are_reported_together(tmp_path):
    msg = _error(tmp_path, "dpo: {beta: -1}\ntraining: {zero_stage: 5}\n")
    assert "dpo.beta" in msg and "training.zero_stage" in msg


def test_dotted_overrides_apply_with_yaml_types(tmp_path):
    path = _write(tmp_path, "algorithm: mocan\ndual:\n  constraints: [{name: safety, margin: 1.0}]\n")
    config = load_config(path, ["dual.lr=0.05", "dual.constraints.0.margin=2.5", "generation.stop=[a, b]"])
    assert config.dual.lr == 0.05
    assert config.dual.constraints[0].margin == 2.5
    assert config.generation.stop == ["a", "b"]


def test_override_with_unknown_key_fails_like_the_file(tmp_path):
    msg = _error(tmp_path, "seed: 0\n", "dual.lrr=0.05")
    assert "dual.lrr: unknown key" in msg


@pytest.mark.parametrize("bad", ["dual.lr", "=3", "dual..lr=3"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match=r"expected KEY\.PATH=VALUE"):
        parse_override(bad)


def test_override_index_out_of_range():
    tree = {"dual": {"constraints": [{"name": "safety"}]}}
    with pytest.raises(ConfigError, match="not an index"):
        apply_override(tree, ["dual", "constraints", "3", "margin"], 1.0)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="job file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_dump_round_trips(tmp_path):
    config = load_config(None, ["dual.lr=0.2"])
    again = load_config(_write(tmp_path, dump_config(config)))
    assert again == config


@pytest.mark.parametrize("job", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml")))
def test_example_job_files_validate(job):
    config = load_config(job)
    assert config.name == job.stem.replace("_", "-")


def test_ppo_lag_needs_cost_thresholds_and_a_cost_rule(tmp_path):
    msg = _error(tmp_path, "algorithm: ppo_lag\ndual:\n  constraints: [{name: safety, margin: 0.5}]\n")
    assert "set `threshold` instead of `margin` for ['safety']" in msg
    msg = _error(
        tmp_path,
        "algorithm: ppo_lag\ndual:\n  rule: projected\n  constraints: [{name: safety, threshold: 0}]\n",
    )
    assert "dual.rule: ppo_lag updates λ from costs" in msg
