"""An actor that dies mid-run: one readable message (role, node, the actor's own error), exit 1, the run folder
keeps what finished, and rerunning the same command resumes from the last finished stage.

`ray-align run` runs a PeCAN job (two DPO stages, then sampling with the vLLM generator, then a last DPO) in a
subprocess; once the first stage is recorded, the test kills the generator's worker process (SIGKILL, as the
OOM killer would). The driver notices when PeCAN next calls the generator, after the second stage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from actors.failures import _field, _own_error

pytestmark = pytest.mark.integration

JOB = """\
algorithm: pecan
output_dir: {out}
models: {{tiny: true}}
data: {{eval_fraction: 0.0, max_prompts: 8, max_length: 96, max_prompt_length: 48}}
generation: {{max_tokens: 8}}
can: {{beta: 0.1, num_prompts: 4, samples_per_prompt: 2}}
dual: {{constraints: [{{name: safety, margin: 0.0}}]}}  # feasible on any sample
training: {{batch_size: 8, micro_batch_size: 8, epochs: 1}}
eval: {{enabled: false}}
"""


def _run(job: Path, *, kill_after: Path | None = None) -> tuple[subprocess.CompletedProcess, int | None]:
    """`ray-align run JOB`; with ``kill_after``, SIGKILL the generator's worker once that file exists."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray_align", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=job.parent,
    )
    killed = None
    if kill_after is not None:
        deadline = time.monotonic() + 240
        while not kill_after.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = _kill_generator(proc.pid)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), killed


def _kill_generator(driver_pid: int) -> int | None:
    """SIGKILL the worker (a descendant of our driver) that hosts the vLLM generator; its pid."""
    for child in psutil.Process(driver_pid).children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if title.startswith("ray::VLLMGenerator"):
            os.kill(child.pid, signal.SIGKILL)
            return child.pid
    return None


def test_a_killed_generator_is_reported_in_one_message_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(out=out))
    start = time.perf_counter()
    first, killed = _run(job, kill_after=out / "stages" / "pecan_helpfulness.done")
    first_seconds = time.perf_counter() - start
    assert killed is not None, first.stderr[-3000:]

    # 1. the message: one `error:` paragraph naming the role, the node and the actor's own end; exit 1
    assert first.returncode == 1, first.stderr[-3000:]
    errors = [line for line in first.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, first.stderr[-3000:]
    message = errors[0]
    assert "generator (vLLM engine) actor (VLLMGenerator" in message and f"pid {killed}" in message
    assert "on node " in message and "its process ended" in message
    assert "rerun the same command to resume" in message
    assert "Traceback" not in first.stderr

    # 2. the run folder keeps what finished, and claims no result
    assert (out / "stages" / "pecan_helpfulness.done").is_file()
    assert (out / "checkpoints" / "pecan_helpfulness" / "config.json").is_file()
    assert not (out / "result.json").exists()
    weights = out / "checkpoints" / "pecan_helpfulness" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    # 3. the same command again resumes: the finished stages are reused, not trained again
    start = time.perf_counter()
    second, _ = _run(job)
    second_seconds = time.perf_counter() - start
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing" in second.stderr and "pecan_helpfulness" in second.stderr
    assert weights.stat().st_mtime_ns == stamp
    assert (out / "result.json").is_file()
    print(f"\n{message}\nfirst run (killed) {first_seconds:.1f} s, resumed run {second_seconds:.1f} s")


# Ray's own reports, as the driver receives them (Ray 2.60), for the parts of the message that need no cluster.
KILLED = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: VLLMGenerator\n\tactor_id: cf42\n"
    "\tpid: 6113\n\tnamespace: x\n\tip: 10.0.0.7\nThe actor is dead because its worker process has died. Worker "
    "exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2. End "
    "of file. Some common causes include: (1) the process was killed by the OOM killer"
)
INIT_FAILED = (
    "The actor died because of an error raised in its creation task, ray::SequenceScorer.__init__() (pid=6114, "
    'ip=10.0.0.8, actor_id=97e5)\n  File "actors/scorer.py", line 8, in __init__\n'
    "OSError: /models/rm does not appear to have a file named config.json"
)


class _Died(Exception):
    actor_init_failed = False


class _InitFailed(Exception):
    actor_init_failed = True


def test_the_actors_own_error_is_read_from_rays_report():
    assert (_field(KILLED, "class_name"), _field(KILLED, "pid"), _field(KILLED, "ip")) == (
        "VLLMGenerator",
        "6113",
        "10.0.0.7",
    )
    assert _own_error(_Died(), KILLED) == (
        "its process ended (SYSTEM_ERROR: Worker unexpectedly exits with a connection error code 2. End of "
        "file.): killed, out of memory, or crashed"
    )
    assert (_field(INIT_FAILED, "pid"), _field(INIT_FAILED, "ip")) == ("6114", "10.0.0.8")
    assert _own_error(_InitFailed(), INIT_FAILED) == (
        "its constructor raised OSError: /models/rm does not appear to have a file named config.json"
    )


def test_scores_never_hold_a_column_nobody_wrote():
    """A reward column without a scorer is refused when the scorer is built (it was uninitialised memory)."""
    from actors.build import JointScorer

    with pytest.raises(ValueError, match=r"no scorer for score column\(s\) \[0\]"):
        JointScorer(parts=[(None, [1], [1.0])], width=2)
