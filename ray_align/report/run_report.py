"""report.md of a finished run: what ran, how long each phase took, before/after, predicted vs achieved, plots.

Written into the run folder (``root/report.md``, figures under ``root/plots/``) from the resolved config, the
algorithm's result dict, the evaluation summary (None when evaluation was off) and the wall time per phase.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray_align.config.schema import JobConfig
from ray_align.eval.stats import Estimate
from ray_align.report import inputs
from ray_align.report.plots import plot_lambda, plot_score_distributions, plot_tradeoff, plot_training
from ray_align.report.tables import (
    DASH,
    cell,
    constraints_markdown,
    markdown_table,
    metrics_markdown,
    number,
)
from ray_align.run_dir import atomic_write_text

# The settings that shape each method's result, by config section; the full config is in config.yaml.
HYPERPARAMETERS: dict[str, dict[str, tuple[str, ...]]] = {
    "ppo_lag": {
        "ppo": ("steps", "rollout_batch_size", "ppo_epochs", "clip_eps", "kl_coef", "gae_lambda"),
        "dual": ("rule", "lam_init", "lam_max", "lr"),
        "training": ("lr", "critic_lr"),
    },
    "caid": {
        "caid": (
            "form",
            "iterations",
            "epochs_per_iteration",
            "num_prompts",
            "samples_per_prompt",
            "warm_start",
        ),
        "can": ("beta",),
        "dual": ("lr",),
        "training": ("lr",),
    },
    "mocan": {
        "can": ("beta", "num_prompts", "samples_per_prompt", "label", "pairs"),
        "training": ("lr", "epochs"),
    },
    "pecan": {
        "can": ("beta", "num_prompts", "samples_per_prompt", "label", "pairs", "pecan_label"),
        "training": ("lr", "epochs"),
    },
    "sacpo": {
        "sacpo": ("first", "loss", "helpfulness_loss", "beta", "beta_over_lambda", "merge_q"),
        "training": ("lr", "epochs"),
    },
    "dpo": {"dpo": ("beta", "preference", "label_smoothing", "loss_type"), "training": ("lr", "epochs")},
    "kto": {"kto": ("beta", "desirable_weight", "undesirable_weight", "kl_estimate"), "training": ("lr",)},
    "sample_score": {"can": ("num_prompts", "samples_per_prompt", "beta")},
}
COMMON = [("training", "batch_size"), ("training", "zero_stage"), ("training", "dtype")]
SAMPLING = [("generation", f) for f in ("engine", "temperature", "top_p", "max_tokens")]
SEEDS = [(None, "seed"), ("data", "seed"), ("generation", "seed"), ("training", "seed")]
NO_EVALUATION = "No evaluation ran (evaluation disabled, or the algorithm trains no policy)"
PLOTS = {
    "scores": "score distributions (evaluation)",
    "lambda": "λ over training",
    "training": "training curves",
    "tradeoff": "predicted trade-off and the achieved point",
}


def _setting(config: JobConfig, section: str | None, field: str) -> tuple[str, str]:
    owner = config if section is None else getattr(config, section)
    return (field if section is None else f"{section}.{field}"), f"`{getattr(owner, field)}`"


def _models(config: JobConfig) -> list[list[str]]:
    m = config.models
    tiny = "the tiny model family" if m.tiny else DASH
    rows = [
        ["policy", m.policy or tiny],
        ["reference", m.reference or m.policy or tiny],
        ["reward", m.reward or m.reward_function or tiny],
    ]
    sources = {c.name: f"{c.path or c.function} ({c.kind})" for c in m.costs}
    rows += [[f"cost · {name}", sources.get(name, tiny)] for name in m.constraint_names]
    return [[name, f"`{value}`" if value not in (tiny, DASH) else value] for name, value in rows]


def what_ran(config: JobConfig, result: Mapping[str, Any]) -> list[str]:
    """Algorithm, models, constraints with bounds and final λ, hyperparameters, seeds, package versions."""
    lines = [
        "## What ran",
        "",
        f"Algorithm **{config.algorithm}**, job `{config.name}`, output `{config.output_dir}`.",
        "",
    ]
    lines += markdown_table(["model", "checkpoint"], _models(config))
    lam = result.get("lambda") or {}
    if config.dual.constraints:
        rows = [
            [
                c.name,
                f"utility gain ≥ {c.margin:g}" if c.margin is not None else f"mean cost ≤ {c.threshold:g}",
                number(lam.get(c.name)) if isinstance(lam.get(c.name), (int, float)) else DASH,
            ]
            for c in config.dual.constraints
        ]
        lines += ["", *markdown_table(["constraint", "bound", "λ at the end"], rows)]
    method = [(sec, f) for sec, fields in HYPERPARAMETERS.get(config.algorithm, {}).items() for f in fields]
    keys = method + COMMON + SAMPLING + SEEDS
    settings = [list(_setting(config, s, f)) for s, f in keys]
    lines += ["", *markdown_table(["setting", "value"], settings)]
    versions = inputs.package_versions()
    rows = [["python", platform.python_version()]] + [[n, v] for n, v in versions.items() if v is not None]
    missing = [n for n, v in versions.items() if v is None]
    lines += ["", *markdown_table(["package", "version"], rows)]
    if missing:
        lines.append(f"\nNot installed: {', '.join(missing)}.")
    return lines


def wall_time(phases: Mapping[str, float]) -> list[str]:
    total = sum(phases.values())
    rows = [
        [name, f"{s:.1f}", f"{100 * s / total:.0f}%" if total > 0 else DASH] for name, s in phases.items()
    ]
    rows.append(["**total**", f"**{total:.1f}**", ""])
    return ["## Wall time", "", *markdown_table(["phase", "seconds", "share"], rows)]


def _final_policy(summary: Mapping[str, Any]) -> str | None:
    others = [p for p in summary["policies"] if p != summary["reference"]]
    return "final" if "final" in others else (others[0] if others else None)


def evaluation(summary: Mapping[str, Any] | None, root: Path, config: JobConfig) -> list[str]:
    """The before/after table, or a sentence saying that no evaluation ran."""
    lines = ["## Before and after", ""]
    if summary is None:
        return [*lines, f"{NO_EVALUATION}: no before/after comparison was made."]
    reference, e = summary["reference"], config.eval
    lines.append(
        f"Held-out prompts, {e.samples_per_prompt} responses each (temperature {e.temperature:g}, top-p "
        f"{e.top_p:g}); cells are mean [{100 * summary['level']:g}% interval], bootstrap over prompts "
        f"({summary['n_boot']} resamples)"
        + (f"; paired metrics against `{reference}`." if reference else ".")
    )
    if e.temperature != 1.0 or e.top_p != 1.0:
        lines.append("The KL row is not an unbiased KL estimate: responses were not sampled from π itself.")
    lines += ["", *metrics_markdown(summary)]
    if (root / "eval" / "eval.md").is_file():
        lines += ["", "All tables, per category included: [eval/eval.md](eval/eval.md)."]
    return lines


def predicted_vs_achieved(summary: Mapping[str, Any] | None, result: Mapping[str, Any]) -> list[str]:
    """Each constraint target's bound, prediction, achieved interval and status; the predicted reward."""
    lines = ["## Predicted vs achieved", ""]
    if summary is None:
        return [*lines, f"{NO_EVALUATION}: nothing to compare."]
    if any(summary["constraints"].values()):
        lines += constraints_markdown(summary)
        lines += [
            "",
            "met / violated: the whole interval is on one side of the bound; met within noise: it contains the "
            "bound (an active constraint's optimum lies exactly on it).",
        ]
    else:
        lines.append("No constraint targets were judged.")
    predicted = (result.get("predicted") or {}).get("reward")
    final = _final_policy(summary)
    achieved = summary["policies"][final]["metrics"].get("reward") if final else None
    if isinstance(predicted, (int, float)) and achieved is not None:
        lines += [
            "",
            f"Reward: the dual predicted E[r] = {number(predicted)} on its own prompts; `{final}` scored "
            f"{cell(achieved)} on the held-out prompts.",
        ]
    return lines


def _achieved_point(summary: Mapping[str, Any] | None, name: str) -> tuple[Estimate, Estimate] | None:
    """(utility gain of ``name``, reward gain) of the final policy, when the evaluation measured both."""
    final = _final_policy(summary) if summary else None
    if final is None:
        return None
    metrics = summary["policies"][final]["metrics"]
    keys = (f"utility_gain.{name}", "reward_gain")
    if not all(k in metrics for k in keys):
        return None
    return Estimate.from_dict(metrics[keys[0]]), Estimate.from_dict(metrics[keys[1]])


def _tradeoff(
    root: Path, config: JobConfig, result: Mapping[str, Any], summary: Mapping[str, Any] | None, path: Path
) -> Path | None:
    """The one-shot dual's curve on its own π_ref table, λ* from the result, the achieved point."""
    lam = result.get("lambda") or {}
    names = list(lam)
    if not names or not all(isinstance(lam[n], (int, float)) for n in names):
        return None
    table = inputs.read_tradeoff_table(root, config.algorithm, names)
    if table is None:
        return None
    bound = next((c.margin for c in config.dual.constraints if c.name == names[0]), None)
    achieved = _achieved_point(summary, names[0])
    lam_star = [lam[n] for n in names]
    return plot_tradeoff(table, config.can.beta, lam_star, achieved, path, name=names[0], bound=bound)


def write_plots(
    root: Path, config: JobConfig, result: Mapping[str, Any], summary: Mapping[str, Any] | None
) -> dict[str, Path]:
    """Draw every figure whose input exists into root/plots/; {name: path} of those written."""
    folder = root / "plots"
    names = list(result.get("lambda") or config.models.constraint_names)  # the order of λ
    drawn = {
        "scores": plot_score_distributions(inputs.read_eval_frame(root), folder / "scores.png"),
        "lambda": plot_lambda(inputs.read_dual_history(root), names, folder / "lambda.png"),
        "training": plot_training(inputs.read_metrics(root), folder / "training.png"),
        "tradeoff": _tradeoff(root, config, result, summary, folder / "tradeoff.png"),
    }
    return {k: p for k, p in drawn.items() if p is not None}


def write_run_report(
    root: str | Path,
    *,
    config: JobConfig,
    result: Mapping[str, Any],
    summary: Mapping[str, Any] | None,
    phases: Mapping[str, float],
) -> Path:
    """Write root/report.md (atomically) and the figures under root/plots/; returns the report's path."""
    root = Path(root)
    plots = write_plots(root, config, result, summary)
    lines = [f"# Run report: {config.name}", ""]
    lines += [*what_ran(config, result), "", *wall_time(phases), ""]
    lines += [
        *evaluation(summary, root, config),
        "",
        *predicted_vs_achieved(summary, result),
        "",
        "## Plots",
        "",
    ]
    if plots:
        for name, path in plots.items():
            rel = path.relative_to(root).as_posix()
            lines += [f"![{PLOTS[name]}]({rel})", ""]
    else:
        lines += ["No plot: none of their inputs (metrics, dual history, evaluation samples) was found.", ""]
    return atomic_write_text(root / "report.md", "\n".join(lines))
