"""The preflight's rules where the bad-input table does not reach: what passes, what "the same configuration"
means for a run folder, the tokenizer comparison, and that its light copies of the run's rules stay in step
with the run's own code (roles, data source)."""

from __future__ import annotations

import importlib
import json
import os
import stat
from pathlib import Path

import pytest
from test_bad_inputs import BASE, checkpoint

from ray_align.algorithms import MODULES
from ray_align.config import dump_config, load_config
from ray_align.preflight import PreflightError, preflight
from ray_align.preflight.data import data_source
from ray_align.preflight.resources import roles_of
from ray_align.preflight.run_folder import differences, run_identity
from ray_align.preflight.tokenizers import tokenizer_mismatch
from ray_align.run_dir import RunDir, atomic_write_json, clear_run_folder, start_run_folder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.chdir(REPO)


def job(tmp_path: Path, *overrides: str):
    path = tmp_path / "job.yaml"
    path.write_text(BASE.format(out=tmp_path / "run"))
    return load_config(path, overrides)


@pytest.mark.parametrize("algorithm", sorted(MODULES))
def test_roles_read_from_the_source_are_the_modules_roles(algorithm):
    assert roles_of(algorithm) == importlib.import_module(MODULES[algorithm]).ROLES


def test_unknown_algorithm_has_no_roles():
    assert roles_of("sft") is None


@pytest.mark.parametrize("source", [None, "builtin:quickstart", "builtin:mini_safety", "some/file.jsonl"])
def test_data_source_is_the_runs(source, tmp_path):
    from ray_align.algorithms.common import dataset_source

    config = job(tmp_path, *([f"data.source={source}"] if source else []))
    assert data_source(config) == dataset_source(source)


def test_the_quickstart_and_the_examples_pass(tmp_path):
    assert preflight(load_config(None, [f"output_dir={tmp_path / 'q'}"]), mode="run") == []
    for example in sorted((REPO / "examples").glob("*.yaml")):
        config = load_config(example, [f"output_dir={tmp_path / example.stem}"])
        assert all(w.startswith("could not verify: data.source") for w in preflight(config)), example


def test_pku_sample_is_read_and_checked_in_about_a_second(tmp_path, pku_dir):
    import time

    config = job(tmp_path, f"data.source={pku_dir}")
    start = time.perf_counter()
    assert preflight(config, mode="run") == []
    assert time.perf_counter() - start < 5.0


def test_identical_tokenizers_agree_and_different_ones_are_named(tmp_path):
    a = checkpoint(tmp_path / "a", {"x": 0, "y": 1})
    assert tokenizer_mismatch(a, checkpoint(tmp_path / "b", {"x": 0, "y": 1})) is None
    assert (
        tokenizer_mismatch(a, checkpoint(tmp_path / "c", {"x": 1, "y": 0})) == "2 of 2 tokens have other ids"
    )
    assert tokenizer_mismatch(a, checkpoint(tmp_path / "d", {"x": 0})) == "vocabularies of 2 and 1 tokens"


def test_user_scorers_sharing_the_policys_tokenizer_pass(tmp_path):
    policy, reward, cost = (checkpoint(tmp_path / n) for n in ("policy", "reward", "cost"))
    config = job(
        tmp_path,
        "models.tiny=false",
        f"models.policy={policy}",
        f"models.reward={reward}",
        f"models.costs=[{{name: safety, path: {cost}}}]",
    )
    assert preflight(config, mode="run") == []


def test_scorers_with_another_tokenizer_pass_and_critics_made_from_them_do_not(tmp_path):
    """Reward and cost models are bridged; a critic that starts from one still reads the policy's ids."""
    policy = checkpoint(tmp_path / "policy")
    reward = checkpoint(tmp_path / "reward", {"<pad>": 0, "b": 1})
    cost = checkpoint(tmp_path / "cost", {"<pad>": 0, "c": 1})
    scorers = [
        "models.tiny=false",
        f"models.policy={policy}",
        f"models.reward={reward}",
        f"models.costs=[{{name: safety, path: {cost}}}]",
    ]
    assert preflight(job(tmp_path, *scorers), mode="run") == []
    ppo_lag = ["algorithm=ppo_lag", "dual.constraints=[{name: safety, threshold: 0.0}]"]
    with pytest.raises(PreflightError) as refused:
        preflight(job(tmp_path, *scorers, *ppo_lag), mode="run")
    assert "models.critic (= models.reward): its tokenizer differs" in str(refused.value)
    assert "models.cost_critic (= models.costs.0.path): its tokenizer differs" in str(refused.value)


def test_a_policy_without_pad_token_trains_with_its_eos(tmp_path):
    policy = checkpoint(tmp_path / "policy", tokenizer_config={"eos_token": "</s>"})
    config = job(
        tmp_path, "models.tiny=false", f"models.policy={policy}", "algorithm=dpo", "dual.constraints=[]"
    )
    assert preflight(config, mode="run") == []


# --- the run folder


def test_settings_that_cannot_change_results_keep_the_identity(tmp_path):
    config = job(tmp_path)
    same = job(
        tmp_path,
        "logging.level=DEBUG",
        "name=other",
        "placement.trainer_ranks=2",
        "checkpoint.every=3",
        "output_dir=elsewhere",
        "ray.num_cpus=4",
    )
    assert run_identity(config) == run_identity(same)
    ppo = ["algorithm=ppo_lag", "dual.constraints=[{name: safety, threshold: 0.0}]"]
    assert run_identity(job(tmp_path, *ppo, "ppo.steps=2")) == run_identity(
        job(tmp_path, *ppo, "ppo.steps=3")
    )
    other = job(tmp_path, "dual.lr=0.05", "training.epochs=2")
    assert differences(config, other) == ["dual.lr: 0.1 → 0.05", "training.epochs: 1 → 2"]


def test_a_rerun_of_the_same_configuration_resumes_and_another_needs_overwrite(tmp_path):
    config = job(tmp_path)
    start_run_folder(config.output_dir, dump_config(config))
    RunDir(config.output_dir).log_metrics(0, "dpo", {"loss": 1.0})
    assert preflight(job(tmp_path, "logging.level=DEBUG"), mode="run") == []
    other = job(tmp_path, "can.beta=0.2")
    with pytest.raises(PreflightError, match=r"another configuration \(can.beta: 0.1 → 0.2\).*--overwrite"):
        preflight(other, mode="run")
    assert "`ray-align run` will refuse" in preflight(other, mode="check")[0]
    assert "will be cleared" in preflight(other, mode="run", overwrite=True)[0]
    out = start_run_folder(other.output_dir, dump_config(other), overwrite=True)
    assert sorted(p.name for p in out.root.iterdir()) == ["config.yaml"]
    assert load_config(out.path("config.yaml")).can.beta == 0.2


def test_clearing_refuses_a_folder_that_is_not_a_run_folder(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not a run folder"):
        clear_run_folder(tmp_path)
    assert (tmp_path / "thesis.tex").exists()


def test_outputs_get_the_same_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = start_run_folder(tmp_path / "run", "seed: 0\n")
        out.write_result({"lam": [1.0]})
        out.log_metrics(0, "dpo", {"loss": 1.0})
        atomic_write_json(out.path("stages", "dpo.done"), {})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.root.rglob("*") if p.is_file()}
    assert modes == dict.fromkeys(["config.yaml", "result.json", "metrics.jsonl", "dpo.done"], 0o644)
    assert json.loads(out.path("result.json").read_text()) == {"lam": [1.0]}
