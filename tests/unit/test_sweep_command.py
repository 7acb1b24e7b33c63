"""`ray-align sweep` on the command line: bad input exits 2 with one message before Ray is imported; the sweep
folder is new, empty or an earlier sweep."""

from __future__ import annotations

import subprocess
import sys

import pytest
from base_job import BASE_JOB

from ray_align.errors import UserError
from ray_align.sweep.command import check_sweep_folder


def _main(*args: str) -> subprocess.CompletedProcess:
    code = (
        "import sys; from ray_align.cli import main; rc = main(sys.argv[1:]);"
        "print([m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules]); sys.exit(rc)"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "dual.constraints.0.margn=0.1,0.2"], "dual.constraints.0.margn: unknown key"),
        (["--grid", "dual.constraints.0.margin=high,0.2"], "Input should be a valid number"),
        (["algorithm=dpo", "--grid", "dpo.beta=0.1,0.2"], "algorithm 'dpo' is not supported"),
    ],
)
def test_bad_input_exits_2_before_ray(tmp_path, args, message):
    out = _main("sweep", BASE_JOB, f"output_dir={tmp_path / 's'}", *args)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"  # nothing heavy was imported


def test_overrides_may_follow_the_grid(tmp_path):
    """`sweep JOB --grid K=V1,V2 KEY=VALUE`: the override after the option is still an override."""
    out = _main("sweep", BASE_JOB, "--grid", "can.beta=0.1,0.2", "algorithm=dpo", f"output_dir={tmp_path}")
    assert out.returncode == 2 and "algorithm 'dpo' is not supported" in out.stderr


def test_sweep_folder_rules(tmp_path):
    check_sweep_folder(tmp_path / "new")
    check_sweep_folder(tmp_path)  # empty
    (tmp_path / "points").mkdir()
    check_sweep_folder(tmp_path)  # an earlier sweep: resumed
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    with pytest.raises(UserError, match="holds a run"):
        check_sweep_folder(run)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no sweep"):
        check_sweep_folder(other)
    with pytest.raises(UserError, match="is a file"):
        check_sweep_folder(other / "notes.txt")
