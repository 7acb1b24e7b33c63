"""Bad flags and files of the other subcommands (`dual`, `tiny-models`) and of the command line itself: exit 2,
one message naming the problem, no traceback. Plus the headline cases end to end in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_align.cli import main


@pytest.fixture
def table(tmp_path) -> Path:
    """A valid scored table: 4 prompts × 2 samples, reward and one utility column."""
    rng = np.random.default_rng(0)
    path = tmp_path / "samples.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt_id": np.repeat(np.arange(4), 2),
                "reward": rng.normal(size=8),
                "safety": rng.normal(size=8),
            }
        ),
        path,
    )
    return path


def _nan_table(tmp: Path) -> Path:
    path = tmp / "nan.parquet"
    pq.write_table(
        pa.table({"prompt_id": [0, 0, 1, 1], "reward": [0.0, np.nan, 1.0, 2.0], "safety": [0.0] * 4}), path
    )
    return path


DUAL = "dual {table} --n-boot 0"
# (name, arguments with {table} and {tmp}, key words)
CASES = [
    ("beta NaN", f"{DUAL} --beta nan --constraint safety:0.1", ("--beta", "finite")),
    ("beta negative", f"{DUAL} --beta -1 --constraint safety:0.1", ("--beta",)),
    ("margin inf", f"{DUAL} --constraint safety:inf", ("safety:inf", "finite")),
    ("margin not a number", f"{DUAL} --constraint safety:abc", ("'abc'", "not a number")),
    ("threshold NaN", f"{DUAL} --threshold safety:nan", ("safety:nan", "finite")),
    ("constraint twice", f"{DUAL} --constraint safety:0.1 --threshold safety:0", ("given twice",)),
    ("no constraint", DUAL, ("--constraint",)),
    ("level outside (0, 1)", f"{DUAL} --constraint safety:0.1 --level 1.5", ("--level",)),
    ("n-boot negative", "dual {table} --constraint safety:0.1 --n-boot -1", ("--n-boot",)),
    ("json into a missing folder", f"{DUAL} --constraint safety:0.1 --json {{tmp}}/no/out.json", ("--json",)),
    ("plot onto a folder", f"{DUAL} --constraint safety:0.1 --plot {{tmp}}", ("--plot",)),
    ("sweep with NaN", f"{DUAL} --constraint safety:0.1 --sweep safety:0:nan:5", ("--sweep", "finite")),
    ("sweep of another name", f"{DUAL} --constraint safety:0.1 --sweep harm:0:1:5", ("--sweep", "harm")),
    ("table missing", "dual {tmp}/none.parquet --constraint safety:0.1", ("no such file",)),
    ("table lacks the column", "dual {table} --constraint harm:0.1 --n-boot 0", ("missing column", "harm")),
    ("table not Parquet", "dual {tmp}/job.txt --constraint safety:0.1", ("not a readable Parquet",)),
    ("table with NaN scores", "dual {nan} --constraint safety:0.1 --n-boot 0", ("non-finite", "reward")),
    ("tiny-models into a file", "tiny-models {tmp}/job.txt", ("tiny-models", "is a file")),
    ("tiny-models negative seed", "tiny-models {tmp}/m --seed -1", ("--seed",)),
]


@pytest.mark.parametrize(("name", "args", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_flag_exits_2_with_a_message(name, args, words, table, tmp_path, capsys):
    (tmp_path / "job.txt").write_text("not a table")
    argv = args.format(table=table, tmp=tmp_path, nan=_nan_table(tmp_path)).split()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in: {err}"


@pytest.mark.parametrize("argv", [["run", "--overwrit"], ["run", "--over"], ["check"], ["nope"]])
def test_a_malformed_command_line_exits_2_with_usage(argv, capsys, monkeypatch):
    for name in ("ray", "vllm", "deepspeed"):  # were the command line accepted, no run could start
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: ray-align" in err and "Traceback" not in err


_PROBE = (
    "import sys, time; from ray_align.cli import main; rc = main(sys.argv[1:]); "
    "print([m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules]); sys.exit(rc)"
)


def _fresh(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    return out, time.perf_counter() - start


@pytest.mark.parametrize(
    ("job", "words"),
    [
        ("models: {tiny: true, policy: /no/such/model}\n", ("models.policy", "no such folder")),
        ("data: {source: broken.jsonl}\n", ("row 0", "not valid JSON")),
        ("models: {tiny: true}\nray: {address: '127.0.0.1:9'}\n", ("ray.address", "cannot reach")),
    ],
    ids=["missing model path", "broken dataset line", "unreachable cluster"],
)
def test_run_refuses_in_seconds_in_a_fresh_process_without_ray(job, words, tmp_path):
    """The issue's cases end to end: one `error:` line, exit 2, no Ray/vLLM/DeepSpeed imported, nothing written."""
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x"\n')
    path = tmp_path / "job.yaml"
    path.write_text(f"algorithm: sample_score\noutput_dir: {tmp_path / 'run'}\n{job}")
    out, seconds = _fresh("run", str(path), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words)
    assert out.stdout.strip() == "[]"  # no heavy package was imported
    assert not (tmp_path / "run").exists()
    assert seconds < 30  # interpreter start and imports included; the preflight itself takes about a second
