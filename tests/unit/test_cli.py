"""The command line: `check` answers fast without starting Ray, with exit codes 0 and 2."""

from __future__ import annotations

import subprocess
import sys
import time

import yaml


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray_align", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_the_commands():
    out = _run("--help")
    assert out.returncode == 0
    for command in ("check", "run", "dual", "tiny-models"):
        assert command in out.stdout


def test_check_misspelt_key_exits_2_fast_without_ray(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("dual:\n  lamda_init: 1.0\n")
    start = time.perf_counter()
    out = _run("check", str(job))
    elapsed = time.perf_counter() - start
    assert out.returncode == 2
    assert "dual.lamda_init: unknown key" in out.stderr
    assert elapsed < 5.0  # interpreter start included; the check itself imports no torch/Ray (next test)


def test_check_imports_no_heavy_packages(tmp_path):
    """The preflight reads the dataset and the model folders, still without torch, Ray, vLLM or DeepSpeed."""
    job = tmp_path / "job.yaml"
    job.write_text(f"algorithm: sample_score\noutput_dir: {tmp_path / 'run'}\n")
    code = (
        f"import sys; from ray_align.cli import main; rc = main(['check', {str(job)!r}]);"
        "heavy = [m for m in ('ray', 'torch', 'vllm', 'deepspeed') if m in sys.modules]; print(heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_check_valid_prints_resolved_config(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("algorithm: mocan\ndual:\n  constraints: [{name: safety, margin: 1.0}]\n")
    out = _run("check", str(job), "can.beta=0.05")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["algorithm"] == "mocan" and resolved["can"]["beta"] == 0.05
    assert resolved["dual"]["constraints"] == [{"name": "safety", "margin": 1.0, "threshold": None}]
