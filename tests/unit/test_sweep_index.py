"""The sweep's index, Pareto front, figures and sweep.md (ray_align/sweep/index.py, plots.py, report.py), on
hand-made point folders: result.json, eval/eval.json and the dual's π_ref table written by the test."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_report import png_size

from ray_align.dual.can import solve_dual
from ray_align.dual.predict import predict
from ray_align.dual.table import read_scored_table, write_scored_table
from ray_align.sweep.index import index_frame, metric_columns, pareto_mask, point_rows
from ray_align.sweep.report import console_lines, write_sweep_outputs

BETA = 0.5


def test_pareto_front_by_hand():
    """Points (x, y): a (0, 3), b (1, 2), c (1, 1) dominated by b, d (2, 0), e (0.5, 1.5) dominated by b,
    f (2, 0) the same as d (neither dominates the other), g (NaN, 9) unknown: never on the front."""
    x = [0, 1, 1, 2, 0.5, 2, np.nan]
    y = [3, 2, 1, 0, 1.5, 0, 9]
    assert pareto_mask(x, y).tolist() == [True, True, False, True, False, True, False]


def test_metric_columns_flatten_estimates():
    metrics = {"reward": {"estimate": 1.0, "low": 0.5, "high": 1.5, "n": 4}, "kl": {"estimate": None}}
    out = metric_columns(metrics)
    assert out["reward"] == 1.0 and out["reward.low"] == 0.5 and out["reward.high"] == 1.5
    assert np.isnan(out["kl"]) and np.isnan(out["kl.low"])


def _estimate(value: float, half: float = 0.05) -> dict:
    return {"estimate": value, "low": value - half, "high": value + half, "n": 12}


def _table(path):
    """12 prompts × 8 responses where reward and safety pull against each other."""
    rng = np.random.default_rng(0)
    n, k = 12, 8
    reward = rng.normal(size=n * k)
    safety = -0.7 * reward + rng.normal(size=n * k)
    write_scored_table(path, np.repeat(np.arange(n), k), reward, {"safety": safety})


def _point(root, name: str, margin: float, gain: tuple[float, float], policies=("final",)) -> dict:
    """A finished MoCAN point: its table, λ* for ``margin`` on it, and an evaluation with (margin, reward) gains."""
    folder = root / "points" / name
    _table(folder / "tables" / "reference_samples.parquet")
    table, _ = read_scored_table(folder / "tables" / "reference_samples.parquet", ["safety"])
    lam = float(solve_dual(table, BETA, margin=[margin]).lam[0])
    result = {"checkpoint": "c", "lambda": {"safety": lam}, "predicted_margin": {"safety": margin}}
    (folder / "result.json").write_text(json.dumps(result))
    metrics = {"utility_gain.safety": _estimate(gain[0]), "reward_gain": _estimate(gain[1])}
    metrics |= {"win_rate": _estimate(0.6), "safer.safety": _estimate(0.55), "kl": _estimate(0.3)}
    docs = {"reference": {"metrics": {"reward": _estimate(0.0)}}}
    docs |= {p: {"metrics": metrics} for p in policies}
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "eval.json").write_text(json.dumps({"reference": "reference", "policies": docs}))
    return {"name": name, "folder": str(folder), "values": {"m": margin}, "status": "done", "beta": BETA}


def test_point_rows_carry_lambda_prediction_and_metrics(tmp_path):
    point = _point(tmp_path, "margin=0.2", 0.2, (0.18, 0.4))
    (row,) = point_rows(point, "mocan")
    table, _ = read_scored_table(
        tmp_path / "points" / "margin=0.2" / "tables" / "reference_samples.parquet", ["safety"]
    )
    p = predict(table, BETA, [row["lambda.safety"]])
    assert row["policy"] == "final" and row["grid.m"] == 0.2
    assert row["predicted.margin.safety"] == pytest.approx(0.2, abs=1e-6)  # λ* meets the margin exactly
    assert row["predicted.reward_gain"] == pytest.approx(p.reward - p.ref_reward)
    assert row["utility_gain.safety"] == 0.18 and row["reward_gain.high"] == pytest.approx(0.45)


def test_a_failed_point_has_one_row_and_no_metrics(tmp_path):
    point = {"name": "margin=9", "folder": str(tmp_path / "nowhere"), "values": {}, "status": "dual failed"}
    (row,) = point_rows(point, "mocan")
    assert row["status"] == "dual failed" and "lambda.safety" not in row and "reward_gain" not in row


def test_sacpo_merges_are_rows_of_their_point(tmp_path):
    point = _point(tmp_path, "merges", 0.1, (0.1, 0.1), policies=("final", "p_sacpo_q0.25", "p_sacpo_q0.75"))
    rows = point_rows(point, "sacpo")
    assert [r["policy"] for r in rows] == ["final", "p_sacpo_q0.25", "p_sacpo_q0.75"]


def _sweep(tmp_path):
    """Four points: (margin, reward) gains (0.1, 0.5), (0.2, 0.45), (0.3, 0.3) and (0.15, 0.2) (dominated)."""
    gains = {0.1: (0.1, 0.5), 0.2: (0.2, 0.45), 0.3: (0.3, 0.3), 0.4: (0.15, 0.2)}
    points = [_point(tmp_path, f"margin={m}", m, g) for m, g in gains.items()]
    points.append({"name": "margin=9", "folder": str(tmp_path / "x"), "values": {}, "status": "dual failed"})
    meta = {
        "name": "t",
        "algorithm": "mocan",
        "job": None,
        "mode": "shared",
        "shared": "π_ref's scored samples",
        "reason": "",
        "grid": {"dual.constraints.0.margin": [0.1, 0.2, 0.3, 0.4, 9]},
        "constraints": ["safety"],
        "timing": {
            "shared": 3.0,
            "trainings_wall": 30.0,
            "trainings_sum": 100.0,
            "evaluations_sum": 10.0,
            "wall": 60.0,
            "parallel": 4,
        },
        "points": points,
    }
    return meta, {p["name"]: BETA for p in points}


def test_index_marks_the_pareto_front(tmp_path):
    meta, _ = _sweep(tmp_path)
    frame = index_frame(meta["points"], "mocan", "safety")
    assert frame.set_index("point")["pareto"].to_dict() == {
        "margin=0.1": True,
        "margin=0.2": True,
        "margin=0.3": True,
        "margin=0.4": False,
        "margin=9": False,
    }


def test_sweep_outputs(tmp_path):
    meta, betas = _sweep(tmp_path)
    frame = write_sweep_outputs(tmp_path, meta, betas)
    assert pd.read_parquet(tmp_path / "points.parquet")["point"].tolist() == frame["point"].tolist()
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert doc["pareto"] == ["margin=0.1", "margin=0.2", "margin=0.3"]
    assert doc["files"] == ["points.parquet", "sweep.md", "frontier.png", "lambda.png", "win_rates.png"]
    for name in ("frontier.png", "lambda.png", "win_rates.png"):
        assert png_size(tmp_path / name) == (640, 400)
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary file
    md = (tmp_path / "sweep.md").read_text()
    assert "| trainings, wall time (4 at a time) | 30.0 |" in md
    assert "| margin=0.2 | done |" in md and "0.200 [0.150, 0.250]" in md
    assert "`margin=9`: dual failed" in md
    assert "![trade-off frontier" in md
    lines = console_lines(frame, ["safety"])
    assert lines[0].startswith("margin=0.1") and lines[0].endswith("· Pareto")
