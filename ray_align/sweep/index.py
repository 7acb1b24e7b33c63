"""The sweep's index: one row per evaluated policy of every point, the Pareto front, sweep.json and points.parquet.

Rows are read back from the points' run folders (result.json, eval/eval.json and the dual's table), so a
point reused from an earlier attempt enters the index exactly like one trained now. Columns:

    point, policy, status, folder, grid.<key>         which point, which of its policies (final, p_sacpo_q…)
    lambda.<c>                                         λ the point trained at (λ* for MoCAN/PeCAN)
    predicted.reward_gain, predicted.margin.<c>,       the dual's prediction for π_λ* on the π_ref table
    predicted.kl                                       (MoCAN, PeCAN; PeCAN's in units of β·h)
    <metric>, <metric>.low, <metric>.high              every metric of the point's evaluation (docs/eval.md)
    pareto                                             not dominated in (utility gain of the first
                                                       constraint, reward gain) by another row
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ray_align.dual.predict import predict
from ray_align.dual.table import DualInputError, read_scored_table

logger = logging.getLogger(__name__)

# The one-shot methods' π_ref table in a run folder, by algorithm
TABLES = {
    "mocan": Path("tables", "reference_samples.parquet"),
    "pecan": Path("tables", "pecan_samples.parquet"),
}


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; left out of the index", path)
        return None


def pareto_mask(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """True where no other point is at least as good in both x and y and better in one (both maximised).
    A point with a non-finite coordinate is never on the front and never dominates."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        others = ok & (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        front[i] = not others.any()
    return front


def metric_columns(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """{"reward": {"estimate", "low", "high"}} → {"reward": e, "reward.low": l, "reward.high": h} (NaN for null)."""
    out = {}
    for key, e in metrics.items():
        for suffix, field in (("", "estimate"), (".low", "low"), (".high", "high")):
            value = e.get(field)
            out[key + suffix] = float("nan") if value is None else float(value)
    return out


def predicted_columns(
    folder: Path, algorithm: str, beta: float, lam: Mapping[str, float]
) -> dict[str, float]:
    """The dual's prediction at λ on the point's own π_ref table: reward gain, margins, KL."""
    relative = TABLES.get(algorithm)
    names = list(lam)
    if relative is None or not names or not (folder / relative).is_file():
        return {}
    try:
        table, _ = read_scored_table(folder / relative, names)
    except DualInputError as e:
        logger.warning("no prediction for %s: %s", folder, e)
        return {}
    p = predict(table, beta, np.array([lam[n] for n in names], dtype=np.float64))
    out = {"predicted.reward_gain": p.reward - p.ref_reward, "predicted.kl": p.kl}
    out |= {f"predicted.margin.{n}": float(m) for n, m in zip(names, p.margin)}
    return out


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)


def point_rows(point: Mapping[str, Any], algorithm: str) -> list[dict[str, Any]]:
    """The rows of one point ({"name", "folder", "values", "status", "beta"}): one per evaluated policy other
    than the reference, or one row ("final") when there is no evaluation."""
    folder = Path(point["folder"])
    base = {"point": point["name"], "status": point["status"], "folder": str(folder)}
    base |= {f"grid.{k}": _scalar(v) for k, v in point.get("values", {}).items()}
    result = read_json(folder / "result.json") if point["status"] == "done" else None
    lam = {k: v for k, v in ((result or {}).get("lambda") or {}).items() if isinstance(v, (int, float))}
    base |= {f"lambda.{k}": float(v) for k, v in lam.items()}
    summary = read_json(folder / "eval" / "eval.json") if result else None
    policies = [p for p in (summary or {}).get("policies", {}) if p != (summary or {}).get("reference")]
    rows = []
    for policy in policies or ["final"]:
        row = {**base, "policy": policy}
        if policy == "final" and lam and result:
            row |= predicted_columns(folder, algorithm, point["beta"], lam)
        if summary:
            row |= metric_columns(summary["policies"][policy]["metrics"])
        rows.append(row)
    return rows


def index_frame(points: Sequence[Mapping[str, Any]], algorithm: str, constraint: str) -> pd.DataFrame:
    """Every point's rows, with the Pareto flag on (utility gain · constraint, reward gain)."""
    rows = [r for p in points for r in point_rows(p, algorithm)]
    frame = pd.DataFrame(rows)
    x, y = f"utility_gain.{constraint}", "reward_gain"
    if x in frame.columns and y in frame.columns:
        done = frame["status"] == "done"
        frame["pareto"] = pareto_mask(frame[x].where(done), frame[y].where(done))
    else:
        frame["pareto"] = False
    return frame


def finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
