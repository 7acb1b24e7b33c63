"""The sweep's figures: the trade-off frontier (predicted curve, achieved points), λ per point, win rates.

Same canvas as the run report (ray_align.report.plots: 640 × 400 px, Agg, atomic writes). Axes are gains over
the reference, as in a run's tradeoff.png: x = E_π[g] − E_ref[g] of the first constraint (higher = safer),
y = E_π[r] − E_ref[r]. The predicted curve is the dual's on the π_ref training prompts; the achieved points are
paired gains on the held-out prompts, with their bootstrap intervals.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ray_align.dual.predict import sweep
from ray_align.dual.table import DualInputError, read_scored_table
from ray_align.report.plots import _figure, save_png
from ray_align.sweep.index import TABLES


@dataclass(frozen=True)
class Curve:
    label: str
    x: np.ndarray  # predicted utility gain of the first constraint
    y: np.ndarray  # predicted reward gain


def row_label(row: pd.Series) -> str:
    return str(row["point"]) if row["policy"] == "final" else f"{row['point']} {row['policy']}"


def predicted_curves(
    frame: pd.DataFrame, betas: dict[str, float], algorithm: str, names: list[str]
) -> list[Curve]:
    """One curve per distinct (π_ref table, β, λ of the other constraints) among the finished points: λ_1 over
    [0, max(1, 1.5 · the largest λ*_1 on it)]. MoCAN only: PeCAN's table is in units of β·h, which are not the
    evaluation's scores, and the other methods solve no dual."""
    relative = TABLES.get(algorithm)
    lam_cols = [f"lambda.{n}" for n in names]
    if algorithm != "mocan" or frame.empty or not all(c in frame.columns for c in lam_cols):
        return []
    groups: dict[tuple, dict] = {}
    for _, row in frame[(frame["status"] == "done") & (frame["policy"] == "final")].iterrows():
        path = Path(row["folder"]) / relative
        lam = row[lam_cols].to_numpy(np.float64)
        if not path.is_file() or not np.all(np.isfinite(lam)):
            continue
        key = (hashlib.sha256(path.read_bytes()).hexdigest(), betas[row["point"]], tuple(lam[1:]))
        group = groups.setdefault(key, {"path": path, "lam": lam, "points": []})
        group["lam"] = np.maximum(group["lam"], lam)
        group["points"].append(str(row["point"]))
    own_tables = len({key[0] for key in groups}) > 1  # independent runs: each point sampled its own π_ref
    curves = []
    for (_, beta, rest), group in groups.items():
        try:
            table, _ = read_scored_table(group["path"], names)
        except DualInputError:
            continue
        grid = np.linspace(0.0, max(1.0, 1.5 * group["lam"][0]), 61)
        preds = sweep(table, beta, grid, index=0, lam_base=np.array([0.0, *rest]))
        label = f"predicted (β = {beta:g})" + (f", λ_2.. = {list(rest)}" if rest else "")
        if own_tables:
            label += f" · {', '.join(group['points'])}"
        x = np.array([p.margin[0] for p in preds])
        y = np.array([p.reward - p.ref_reward for p in preds])
        curves.append(Curve(label, x, y))
    return curves


def _errorbars(ax, frame: pd.DataFrame, x: str, y: str, label: str) -> None:
    xs, ys = frame[x].to_numpy(np.float64), frame[y].to_numpy(np.float64)
    xerr = np.abs(np.vstack([xs - frame[f"{x}.low"], frame[f"{x}.high"] - xs]))
    yerr = np.abs(np.vstack([ys - frame[f"{y}.low"], frame[f"{y}.high"] - ys]))
    ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=label, zorder=3)
    for (_, row), xi, yi in zip(frame.iterrows(), xs, ys):
        ax.annotate(row_label(row), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize="x-small")


def _pareto(ax, frame: pd.DataFrame, x: str, y: str) -> None:
    front = frame[frame["pareto"]].sort_values(x)
    if front.empty:
        return
    ax.plot(
        front[x], front[y], "s", markersize=11, markerfacecolor="none", color="black", label="Pareto-optimal"
    )
    ax.plot(front[x], front[y], ":", color="black", linewidth=1)


def plot_frontier(frame: pd.DataFrame, curves: list[Curve], constraint: str, path: str | Path) -> Path | None:
    """Predicted curve(s), λ* predictions (stars), achieved points with intervals, the Pareto front ringed."""
    x, y = f"utility_gain.{constraint}", "reward_gain"
    done = frame[frame["status"] == "done"] if not frame.empty else frame
    achieved = done.dropna(subset=[x, y]) if {x, y} <= set(done.columns) else done.iloc[0:0]
    predicted_x = f"predicted.margin.{constraint}"
    stars = done.dropna(subset=[predicted_x]) if predicted_x in done.columns else done.iloc[0:0]
    if achieved.empty and not curves:
        return None
    fig, (ax,) = _figure(1)
    for curve in curves:
        ax.plot(curve.x, curve.y, "-", linewidth=1.5, label=curve.label)
    if not stars.empty and curves:
        ax.plot(
            stars[predicted_x], stars["predicted.reward_gain"], "*", markersize=11, label="predicted at λ*"
        )
    if not achieved.empty:
        _errorbars(ax, achieved, x, y, "achieved (interval)")
        _pareto(ax, achieved, x, y)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.axvline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel(f"utility gain · {constraint} (safer →)")
    ax.set_ylabel("reward gain")
    ax.set_title("trade-off frontier: predicted and achieved")
    ax.legend(fontsize="x-small")
    return save_png(fig, path)


def plot_lambdas(frame: pd.DataFrame, names: list[str], path: str | Path) -> Path | None:
    """λ_j of every finished point (λ* for the one-shot methods, the last λ for the iterative ones)."""
    cols = [f"lambda.{n}" for n in names if f"lambda.{n}" in frame.columns]
    rows = frame[(frame["status"] == "done") & (frame["policy"] == "final")] if cols else frame.iloc[0:0]
    if rows.empty:
        return None
    fig, (ax,) = _figure(1)
    width = 0.8 / len(cols)
    positions = np.arange(len(rows))
    for j, col in enumerate(cols):
        bars = ax.bar(
            positions + j * width, rows[col].to_numpy(np.float64), width, label=col.split(".", 1)[1]
        )
        ax.bar_label(bars, fmt="%.3g", fontsize="x-small")
    ax.set_xticks(
        positions + width * (len(cols) - 1) / 2, list(rows["point"]), fontsize="x-small", rotation=15
    )
    ax.set_ylabel("λ")
    ax.set_title("λ per point")
    if len(cols) > 1:
        ax.legend(fontsize="small")
    return save_png(fig, path)


def plot_win_rates(frame: pd.DataFrame, constraint: str, path: str | Path) -> Path | None:
    """Win rate against π_ref (reward) vs share of responses safer than π_ref's, paired by prompt and sample."""
    x, y = f"safer.{constraint}", "win_rate"
    if frame.empty or not {x, y} <= set(frame.columns):
        return None
    rows = frame[frame["status"] == "done"].dropna(subset=[x, y])
    if rows.empty:
        return None
    fig, (ax,) = _figure(1)
    _errorbars(ax, rows, x, y, "policy vs π_ref (interval)")
    ax.axhline(0.5, color="grey", linewidth=0.5)
    ax.axvline(0.5, color="grey", linewidth=0.5)
    ax.set_xlabel(f"share safer than π_ref · {constraint}")
    ax.set_ylabel("win rate vs π_ref (reward)")
    ax.set_title("win rates (judged by the job's reward and cost scorers)")
    ax.legend(fontsize="x-small")
    return save_png(fig, path)
