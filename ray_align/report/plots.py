"""The run report's figures: score distributions, λ over training, training curves, the dual's trade-off.

Every figure is 6.4 × 4.0 in at 100 dpi (a 640 × 400 px PNG) and is drawn on matplotlib's Agg canvas through
the object API (no pyplot, so no global backend or figure state). Each file is written atomically: a temporary
file in the same folder, then os.replace. Each function returns the path, or None when its input is empty.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ray_align.dual.can import ScoredTable
from ray_align.dual.predict import predict, sweep
from ray_align.eval.stats import Estimate
from ray_align.run_dir import atomic_write_with

SIZE_IN, DPI = (6.4, 4.0), 100
MAX_PANELS = 6
# metrics.jsonl keys worth a training panel: reward, costs, KL, losses (not timings, λ or counts)
_TRAINING_KEY = re.compile(r"^((mean_)?reward|cost_(?!critic_).+|kl|(actor_)?loss)$")


def _figure(panels: int) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[panels:]:
        extra.set_visible(False)
    return fig, list(axes[:panels])


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG of exactly SIZE_IN × DPI pixels, atomically."""
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def plot_score_distributions(frame: pd.DataFrame | None, path: str | Path) -> Path | None:
    """One panel per score (reward, then each cost.<name>), one step histogram per policy on shared bins."""
    if frame is None or frame.empty or "policy" not in frame.columns:
        return None
    scores = [c for c in frame.columns if c == "reward" or c.startswith("cost.")]
    scores = [c for c in scores if frame[c].notna().any()][:MAX_PANELS]
    if not scores:
        return None
    fig, axes = _figure(len(scores))
    for ax, column in zip(axes, scores):
        values = frame[column].to_numpy(np.float64)
        finite = values[np.isfinite(values)]
        bins = np.histogram_bin_edges(finite, bins=min(30, max(5, int(np.sqrt(finite.size)))))
        for policy, part in frame.groupby("policy", sort=False):
            x = part[column].to_numpy(np.float64)
            ax.hist(x[np.isfinite(x)], bins=bins, histtype="step", density=True, label=str(policy))
        ax.set_xlabel(column)
        ax.set_ylabel("density")
    axes[0].legend(fontsize="small")
    fig.suptitle("score distributions")
    return save_png(fig, path)


def plot_lambda(
    history: Sequence[Mapping[str, Any]] | None, names: Sequence[str], path: str | Path
) -> Path | None:
    """λ_j against the coordinator's step (dual.json "history": {"step", "event", "lam": [m]} entries).

    The initial value is dropped where something replaced it at the same step (a one-shot solve at step 0):
    it was never trained with. A history of one step (the one-shot methods) is drawn as bars of λ*.
    """
    entries = [h for h in history or () if h.get("lam")]
    entries = [
        h
        for i, h in enumerate(entries)
        if not (h.get("event") == "init" and any(o["step"] == h["step"] for o in entries[i + 1 :]))
    ]
    if not entries:
        return None
    steps = np.array([h["step"] for h in entries], dtype=np.float64)
    lam = np.array([h["lam"] for h in entries], dtype=np.float64)
    labels = [names[j] if j < len(names) else f"λ_{j}" for j in range(lam.shape[1])]
    fig, (ax,) = _figure(1)
    if np.unique(steps).size == 1:
        bars = ax.bar(labels, lam[-1])
        ax.bar_label(bars, fmt="%.4g")
        ax.set_title(f"λ ({entries[-1].get('event', 'set')} at step {int(steps[-1])})")
    else:
        for j, name in enumerate(labels):
            ax.plot(
                steps, lam[:, j], marker="o" if len(steps) < 30 else None, drawstyle="steps-post", label=name
            )
        solved = [h["step"] for h in entries if h.get("event") == "solve"]
        for step in solved:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("step (dual update)")
        ax.set_title("Lagrange multipliers" + (" (dotted: one-shot solve)" if solved else ""))
        ax.legend(fontsize="small")
    ax.set_ylabel("λ")
    return save_png(fig, path)


def training_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The reward/cost/KL/loss keys that hold numbers in some row, in order of first appearance."""
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key not in keys and _TRAINING_KEY.match(key) and isinstance(value, (int, float)):
                keys.append(key)
    return keys[:MAX_PANELS]


def plot_training(rows: Sequence[Mapping[str, Any]] | None, path: str | Path) -> Path | None:
    """metrics.jsonl rows ({"step", "stage", ...}): one panel per quantity, one line per stage."""
    rows = [r for r in rows or () if "step" in r and "stage" in r]
    keys = training_keys(rows)
    if not keys:
        return None
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        for stage in stages:
            points = [
                (r["step"], r[key])
                for r in rows
                if r["stage"] == stage and isinstance(r.get(key), (int, float))
            ]
            if points:
                x, y = zip(*points)
                ax.plot(x, y, marker="o" if len(points) == 1 else None, label=stage)
        ax.set_title(key, fontsize="medium")
        ax.set_xlabel("step")
    if 1 < len(stages) <= 8:  # a stage per CAID iteration can make too many entries for a legend
        axes[0].legend(fontsize="x-small")
    fig.suptitle("training" if len(stages) > 1 else f"training ({stages[0]})")
    return save_png(fig, path)


def plot_tradeoff(
    table: ScoredTable | None,
    beta: float,
    lam: Sequence[float] | np.ndarray | None,
    achieved: tuple[Estimate, Estimate] | None,
    path: str | Path,
    *,
    name: str = "constraint",
    bound: float | None = None,
    points: int = 41,
) -> Path | None:
    """The dual's predicted trade-off on the reference samples, and where training actually landed.

    Curve: λ_1 over [0, max(3 λ*_1, 1)], the other multipliers at λ*; x = predicted utility gain of the first
    constraint E_{π_λ}[g_1] − Ē_ref[g_1], y = predicted reward gain E_{π_λ}[r] − Ē_ref[r]. λ* is marked.
    ``achieved`` = (utility gain, reward gain) of the trained policy, drawn with its interval as error bars;
    ``bound``, a margin b, is drawn as a dashed vertical line.
    """
    if table is None or lam is None or table.n_prompts == 0:
        return None
    lam = np.asarray(lam, dtype=np.float64)
    if not np.all(np.isfinite(lam)):
        return None
    grid = np.linspace(0.0, max(3.0 * lam[0], 1.0), points)
    curve = sweep(table, beta, grid, index=0, lam_base=lam)
    star = predict(table, beta, lam)
    fig, (ax,) = _figure(1)
    ax.plot(
        [p.margin[0] for p in curve],
        [p.reward - p.ref_reward for p in curve],
        "-",
        label="predicted, λ swept",
    )
    ax.plot(star.margin[0], star.reward - star.ref_reward, "*", markersize=14, label=f"λ* = {lam[0]:.3g}")
    if achieved is not None:
        x, y = achieved
        if math.isfinite(x.estimate) and math.isfinite(y.estimate):
            ax.errorbar(
                x.estimate,
                y.estimate,
                xerr=[[x.estimate - x.low], [x.high - x.estimate]],
                yerr=[[y.estimate - y.low], [y.high - y.estimate]],
                fmt="o",
                capsize=4,
                label="achieved (interval)",
            )
    if bound is not None:
        ax.axvline(bound, color="red", linestyle="--", linewidth=1, label=f"margin b = {bound:g}")
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.axvline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel(f"utility gain · {name}")
    ax.set_ylabel("reward gain")
    ax.set_title(f"trade-off of π_λ (β = {beta:g})")
    ax.legend(fontsize="small")
    return save_png(fig, path)
