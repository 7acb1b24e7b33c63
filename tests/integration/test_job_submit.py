"""The cluster path as users run it: ``ray start --head``, then ``ray job submit`` of a job and of a broken one.

A real head on 127.0.0.1 with its own temp dir and ports (tests/integration/local_ray_cluster.py). The first
job is submitted from the repository root with ``--working-dir .`` (a developer's checkout); the second from a
folder that holds nothing but a job file, as a user whose nodes have ray-align installed submits it: the
runtime_env carries the working dir and environment variables only, no packages. docs/clusters.md gives the same
commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from base_job import BASE_JOB
from local_ray_cluster import LocalRayCluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}  # what docs/clusters.md shows


def submit(cluster: LocalRayCluster, job_id: str, cwd: Path, *entrypoint: str):
    return cluster.job(
        "submit",
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps(RUNTIME_ENV),
        "--",
        *entrypoint,
        cwd=cwd,
    )


def test_submitted_job_succeeds_and_a_broken_one_fails_with_its_error(tmp_path):
    out = tmp_path / "run"  # absolute: outputs land where the test can read them (docs/clusters.md, paths)
    user_dir = tmp_path / "project"
    user_dir.mkdir()
    broken = Path(BASE_JOB).read_text().replace("lr: 1.0e-3", "lr: fast")
    (user_dir / "broken.yaml").write_text(broken)
    cluster = LocalRayCluster()
    try:
        cluster.start_head(num_cpus=4, resources={"head": 1})
        done = submit(cluster, "good", ROOT, "ray-align", "run", "tests/base_job.yaml", f"output_dir={out}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert cluster.status("good") == "SUCCEEDED"
        result = json.loads((out / "result.json").read_text())
        assert result["pairs"] == 16 and result["steps"] == 4 and result["lambda"]["safety"] > 0
        assert (Path(result["checkpoint"]) / "model.safetensors").is_file()
        assert "ray-align mocan: done" in cluster.job("logs", "good").stdout

        failed = submit(cluster, "broken", user_dir, "ray-align", "run", "broken.yaml")
        assert failed.returncode != 0
        assert cluster.status("broken") == "FAILED"
        logs = cluster.job("logs", "broken").stdout
        assert "invalid job configuration" in logs and "training.lr: Input should be a valid number" in logs
        assert cluster.processes()
    finally:
        cluster.stop()
    assert not cluster.processes()
