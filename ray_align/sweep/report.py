"""The sweep folder's outputs: sweep.json (the index), points.parquet, sweep.md and its figures.

``write_sweep_outputs`` reads the finished points from their run folders (ray_align.sweep.index), so it can be
called again on a sweep folder at any time and writes the same files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ray_align.report.tables import DASH, markdown_table
from ray_align.run_dir import atomic_write_json, atomic_write_text, atomic_write_with
from ray_align.sweep.index import index_frame
from ray_align.sweep.plots import plot_frontier, plot_lambdas, plot_win_rates, predicted_curves, row_label

FIGURES = {
    "frontier": "trade-off frontier: the dual's predicted curve, λ* predictions, achieved points, Pareto front",
    "lambda": "λ per point",
    "win_rates": "win rate against π_ref vs share of safer responses",
}


def _num(x: Any) -> str:
    return DASH if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def _cell(row: pd.Series, key: str) -> str:
    if key not in row or not math.isfinite(row[key]):
        return DASH
    return f"{row[key]:.3f} [{row[key + '.low']:.3f}, {row[key + '.high']:.3f}]"


def points_table(frame: pd.DataFrame, names: list[str]) -> list[str]:
    c = names[0] if names else ""
    header = ["point", "status", "λ", f"predicted margin · {c}", f"achieved margin · {c}", "reward gain"]
    header += ["win rate", "KL", "Pareto"]
    rows = []
    for _, row in frame.iterrows():
        lam = ", ".join(_num(row.get(f"lambda.{n}")) for n in names if f"lambda.{n}" in row)
        rows.append(
            [
                row_label(row),
                row["status"],
                lam or DASH,
                _num(row.get(f"predicted.margin.{c}")),
                _cell(row, f"utility_gain.{c}"),
                _cell(row, "reward_gain"),
                _cell(row, "win_rate"),
                _cell(row, "kl"),
                "✓" if row["pareto"] else "",
            ]
        )
    return markdown_table(header, rows)


def timing_table(timing: Mapping[str, float]) -> list[str]:
    labels = {
        "start_roles": "start the engines, scorers and reference model (once)",
        "shared": "shared part (once for every point)",
        "trainings_wall": f"trainings, wall time ({timing.get('parallel', 1):g} at a time)",
        "trainings_sum": "trainings, sum over the points",
        "evaluations_sum": "evaluations, sum over the points (one engine; π_ref sampled once)",
        "runs_wall": f"whole runs, wall time ({timing.get('parallel', 1):g} at a time)",
        "runs_sum": "whole runs, sum over the points",
        "wall": "**sweep, wall time**",
    }
    rows = [[label, f"{timing[k]:.1f}"] for k, label in labels.items() if k in timing]
    return markdown_table(["phase", "seconds"], rows)


def sweep_markdown(meta: Mapping[str, Any], frame: pd.DataFrame, figures: Mapping[str, Path]) -> str:
    grid = ", ".join(f"`{k}` ∈ {{{', '.join(map(str, v))}}}" for k, v in meta["grid"].items())
    lines = [f"# Sweep: {meta['name']} ({meta['algorithm']})", "", f"{len(meta['points'])} points: {grid}."]
    if meta["mode"] == "shared":
        lines.append(f"Computed once for every point: {meta['shared']} (in `shared/`).")
    else:
        lines.append(f"Every point is a whole run: {meta['reason']}.")
    lines += ["Each point is a run folder under `points/` (config.yaml, result.json, eval/, report.md).", ""]
    lines += ["## Wall time", "", *timing_table(meta["timing"]), ""]
    names = meta["constraints"]
    lines += ["## Points", "", *points_table(frame, names), ""]
    lines.append(
        "Predicted: the dual's π_λ* on the π_ref samples of the training prompts. Achieved: paired gains over "
        "π_ref on the held-out prompts, mean [interval] (bootstrap over prompts, docs/eval.md). Pareto: no other "
        "policy has both a larger achieved margin and a larger reward gain."
    )
    failed = [p for p in meta["points"] if p["status"] != "done"]
    if failed:
        lines += ["", "Points that did not finish:", ""]
        lines += [f"- `{p['name']}`: {p['status']}: {p.get('error') or ''}" for p in failed]
    lines += ["", "## Figures", ""]
    lines += [f"![{FIGURES[k]}]({p.name})\n" for k, p in figures.items()] or [
        "No figure: nothing finished.",
        "",
    ]
    return "\n".join(lines) + "\n"


def write_sweep_outputs(root: Path, meta: dict[str, Any], betas: dict[str, float]) -> pd.DataFrame:
    """points.parquet, sweep.json (``meta`` plus the Pareto-optimal rows and the file list), figures, sweep.md."""
    names = meta["constraints"]
    constraint = names[0] if names else ""
    frame = index_frame(meta["points"], meta["algorithm"], constraint)
    atomic_write_with(root / "points.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    curves = predicted_curves(frame, betas, meta["algorithm"], names)
    drawn = {
        "frontier": plot_frontier(frame, curves, constraint, root / "frontier.png"),
        "lambda": plot_lambdas(frame, names, root / "lambda.png"),
        "win_rates": plot_win_rates(frame, constraint, root / "win_rates.png"),
    }
    figures = {k: p for k, p in drawn.items() if p is not None}
    pareto = [row_label(r) for _, r in frame[frame["pareto"]].iterrows()]
    files = ["points.parquet", "sweep.md", *(p.name for p in figures.values())]
    atomic_write_json(root / "sweep.json", {**meta, "pareto": pareto, "files": files})
    atomic_write_text(root / "sweep.md", sweep_markdown(meta, frame, figures))
    return frame


def console_lines(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """One line per row: the point, λ, achieved margin and reward gain, Pareto mark."""
    c = names[0] if names else ""
    out = []
    for _, row in frame.iterrows():
        lam = " ".join(_num(row.get(f"lambda.{n}")) for n in names if f"lambda.{n}" in row)
        parts = [f"{row_label(row):<24}", row["status"]]
        if lam:
            parts.append(f"λ {lam}")
        parts += [f"margin {_cell(row, f'utility_gain.{c}')}", f"reward gain {_cell(row, 'reward_gain')}"]
        out.append(" · ".join(parts) + (" · Pareto" if row["pareto"] else ""))
    return out


def console_summary(meta: Mapping[str, Any], frame: pd.DataFrame, root: Path) -> str:
    """What the sweep prints at the end: its wall time and phases, one line per row, where sweep.md is."""
    t = meta["timing"]
    lines = [f"ray-align sweep {meta['algorithm']}: {len(meta['points'])} points in {t['wall']:.1f} s"]
    if "trainings_wall" in t:
        lines.append(
            f"shared part {t.get('shared', 0):.1f} s · trainings {t['trainings_wall']:.1f} s wall for "
            f"{t['trainings_sum']:.1f} s of training ({t['parallel']:g} at a time) · evaluations "
            f"{t['evaluations_sum']:.1f} s"
        )
    else:
        lines.append(
            f"runs {t['runs_wall']:.1f} s wall, {t['runs_sum']:.1f} s summed ({t['parallel']:g} at a time)"
        )
    lines += console_lines(frame, meta["constraints"])
    lines.append(f"sweep: {root / 'sweep.md'}")
    return "\n".join(lines)
