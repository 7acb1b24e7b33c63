"""Run outputs: atomic writes leave the old file or the new one, metrics append whole lines, pruning keeps the newest."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ray_align.run_dir import RunDir, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "result.json"
    atomic_write_json(path, {"lam": np.array([1.5, 0.25]), "step": np.int64(3)})
    atomic_write_json(path, {"lam": [2.0]})
    assert json.loads(path.read_text()) == {"lam": [2.0]}
    assert os.listdir(path.parent) == ["result.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})  # not serialisable: fails before the rename
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]


def test_metrics_round_trip_and_filter(tmp_path):
    run = RunDir(tmp_path)
    run.log_metrics(0, "dpo", {"loss": 0.7})
    run.log_metrics(1, "dpo", {"loss": 0.6})
    run.log_metrics(0, "caid", {"lambda": [1.0]})
    assert [m["loss"] for m in run.metrics("dpo")] == [0.7, 0.6]
    assert run.metrics("caid") == [{"step": 0, "stage": "caid", "lambda": [1.0]}]


def test_stages_and_pruning(tmp_path):
    run = RunDir(tmp_path)
    assert not run.done("dpo_h")
    run.mark_done("dpo_h", {"checkpoint": "x"})
    assert run.done("dpo_h") and run.stage_info("dpo_h") == {"checkpoint": "x"}
    for step in range(4):
        run.checkpoint(f"step_{step:06d}").mkdir(parents=True)
    run.prune_checkpoints("step_", keep=2)
    assert sorted(p.name for p in run.path("checkpoints").iterdir()) == ["step_000002", "step_000003"]


def test_a_line_cut_short_by_a_crash_is_skipped_and_not_joined_to_the_next(tmp_path):
    out = RunDir(tmp_path)
    out.log_metrics(1, "ppo_lag", {"kl": 0.0})
    with open(out.path("metrics.jsonl"), "a") as f:
        f.write('{"step": 2, "stage": "ppo')
    assert [r["step"] for r in out.metrics()] == [1]
    out = RunDir(tmp_path)  # the next attempt
    out.log_metrics(2, "ppo_lag", {"kl": 0.1})
    out.log_metrics(3, "ppo_lag", {"kl": 0.2})
    assert [r["step"] for r in out.metrics()] == [1, 2, 3]


def test_drop_metrics_of_several_stages_or_from_a_step(tmp_path):
    out = RunDir(tmp_path)
    for step in range(3):
        out.log_metrics(step, "caid", {})
        out.log_metrics(step, f"caid_dpo_{step}", {})
    out.drop_metrics("caid_dpo_1", "caid_dpo_2")
    out.drop_metrics("caid", from_step=2)
    assert [(r["stage"], r["step"]) for r in out.metrics()] == [("caid", 0), ("caid_dpo_0", 0), ("caid", 1)]


def test_pruning_orders_numbered_checkpoints_by_number(tmp_path):
    out = RunDir(tmp_path)
    for name in ("caid_iter_9999", "caid_iter_10000", "caid_iter_10001"):
        out.checkpoint(name).mkdir(parents=True)
    out.prune_checkpoints("caid_iter_", keep=2)
    assert sorted(p.name for p in out.path("checkpoints").iterdir()) == ["caid_iter_10000", "caid_iter_10001"]
