"""Options nothing reads are refused before anything starts: a setting the job's algorithm never reads (the
table in ray_align/config/usage.py), the unwired PTX coefficient, and algorithms that do not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_align.config import ConfigError, JobConfig, load_config
from ray_align.config.load import apply_override, parse_override
from ray_align.config.schema import Algorithm
from ray_align.config.usage import PECAID, READ_BY, readers

ROOT = Path(__file__).resolve().parents[2]


def _job(algorithm: str, *overrides: str) -> JobConfig:
    """A job on the tiny family (one cost model, 'safety'), independent of the built-in job."""
    tree: dict = {"algorithm": algorithm, "models": {"tiny": True}}
    constraint = "threshold: 0.0" if algorithm == "ppo_lag" else "margin: 0.1"
    for text in [f"dual.constraints=[{{name: safety, {constraint}}}]", *overrides]:
        apply_override(tree, *parse_override(text))
    return JobConfig.model_validate(tree)


def _refusal(algorithm: str, *overrides: str) -> str:
    with pytest.raises(ValueError) as info:
        _job(algorithm, *overrides)
    return str(info.value)


def test_an_option_of_another_algorithm_is_refused_naming_who_reads_it():
    msg = _refusal("mocan", "caid.iterations=2", "dpo.beta=0.2")
    assert "algorithm 'mocan' never reads" in msg
    assert "caid.iterations (read by caid)" in msg and "dpo.beta (read by dpo)" in msg
    assert "ppo.steps (read by ppo_lag)" in _refusal("caid", "dual.rule=projected", "ppo.steps=3")
    assert "models.critic (read by ppo_lag)" in _refusal("sacpo", "models.critic=/some/critic")


def test_a_key_entry_overrides_its_section_entry():
    """kto.* is read by SACPO's KTO steps, except kto.beta (they take sacpo.beta / beta_over_lambda); DPO's loss
    options are read by every method that trains with DPO, dpo.beta only by plain DPO."""
    _job("sacpo", "kto.kl_estimate=batch", "kto.undesirable_weight=2.0")
    assert "kto.beta (read by kto)" in _refusal("sacpo", "kto.beta=0.2")
    _job("mocan", "dpo.loss_type=ipo", "dpo.label_smoothing=0.1")
    assert readers("kto.beta") == ("kto",) and readers("kto.desirable_weight") == ("kto", "sacpo")
    assert readers("training.lr") is None and readers("can.num_prompts") is None


def test_options_at_their_defaults_or_read_by_the_algorithm_pass():
    _job("mocan", "caid.iterations=4", "ppo.steps=100", "kto.beta=0.1")  # the defaults: nothing is set
    _job("caid", "dual.rule=projected", "caid.iterations=2", "dpo.loss_type=ipo")
    _job("ppo_lag", "ppo.steps=3", "dual.window=64", "dual.rule=pid", "dual.pid.kp=0.5", "models.critic=/c")


def test_the_table_names_real_options_and_algorithms():
    algorithms = set(Algorithm.__args__)
    config = JobConfig()
    for option, read_by in READ_BY.items():
        section, _, key = option.partition(".")
        assert hasattr(config, section) and (not key or key in type(getattr(config, section)).model_fields)
        assert set(read_by) <= algorithms | {PECAID}, option  # PeCAID: caid with caid.form preference
    assert "eval" not in {option.partition(".")[0] for option in READ_BY}


@pytest.mark.parametrize("job", [*sorted((ROOT / "examples").glob("*.yaml")), None], ids=str)
def test_every_example_and_the_built_in_job_validate(job):
    load_config(job)


def test_sft_is_not_an_algorithm_and_the_message_lists_those_that_are(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("algorithm: sft\nmodels: {tiny: true}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "algorithm" in msg and "'sft'" in msg and "'dpo'" in msg and "'ppo_lag'" in msg


def test_ptx_coefficient_is_refused_until_ptx_data_exists():
    msg = _refusal("ppo_lag", "ppo.ptx_coef=16")
    assert "PTX" in msg and "set 0" in msg
    assert _job("ppo_lag", "ppo.ptx_coef=0").ppo.ptx_coef == 0.0


def test_generation_n_is_gone_each_method_sets_its_own_samples():
    with pytest.raises(ValueError, match=r"generation\.n|extra"):
        _job("mocan", "generation.n=4")
