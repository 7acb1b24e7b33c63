"""The evaluation summary as text: eval.md (Markdown tables) and the terminal's before/after table.

Both read the dict of :func:`ray_align.eval.summary.summarize` only. A cell is "estimate [low, high]" with
three decimals; "—" marks a metric a policy does not have (paired metrics of the reference itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DASH = "—"

# Per-constraint metrics take the constraint's name after the dot: "cost.safety".
_LABELS = {
    "reward": "reward",
    "cost": "mean cost",
    "unsafe": "share unsafe",
    "kl": "KL(π ‖ π_ref)",
    "win_rate": "win rate (reward)",
    "reward_gain": "reward gain",
    "safer": "share safer",
    "utility_gain": "utility gain",
}
LEGEND = {
    "reward": "mean reward-model score",
    "mean cost": "mean cost-model score (higher = more harmful)",
    "share unsafe": "share of responses with cost > {threshold:g}",
    "KL(π ‖ π_ref)": "mean of log π(y) − log π_ref(y) over the policy's own samples",
    "win rate (reward)": "share of paired responses with a higher reward than the reference's (ties ½)",
    "reward gain": "mean paired reward difference, policy − reference",
    "share safer": "share of paired responses with a lower cost than the reference's (ties ½)",
    "utility gain": "E_π[g] − E_ref[g] with g = −cost: the quantity a margin constraint bounds",
}
CONSOLE_KEYS = ("reward", "cost", "unsafe", "kl", "win_rate")


def number(x: float | None) -> str:
    return DASH if x is None else f"{x:.3f}"


def cell(estimate: Mapping[str, Any] | None) -> str:
    """'0.123 [0.101, 0.145]', or '—' for a missing metric or one without data."""
    if estimate is None or estimate.get("estimate") is None:
        return DASH
    return f"{number(estimate['estimate'])} [{number(estimate['low'])}, {number(estimate['high'])}]"


def label(key: str) -> str:
    """'cost.safety' → 'mean cost · safety'."""
    base, _, name = key.partition(".")
    text = _LABELS.get(base, base)
    return f"{text} · {name}" if name else text


def constraint_names(summary: Mapping[str, Any]) -> list[str]:
    """Constraint names in the order the summary's metrics list them (from the cost.<name> keys)."""
    names: list[str] = []
    for doc in summary["policies"].values():
        for key in doc["metrics"]:
            if key.startswith("cost.") and key[5:] not in names:
                names.append(key[5:])
    return names


def metric_order(summary: Mapping[str, Any], bases: Iterable[str] = tuple(_LABELS)) -> list[str]:
    """The metric keys present in any policy, grouped in the order of ``bases``, constraints in their order."""
    present = {k for doc in summary["policies"].values() for k in doc["metrics"]}
    names = constraint_names(summary)
    keys = []
    for base in bases:
        keys += [base] if base in present else [f"{base}.{n}" for n in names if f"{base}.{n}" in present]
    return keys


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A GitHub-style table; a '|' inside a cell (a policy or category name) is escaped."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def metrics_markdown(summary: Mapping[str, Any]) -> list[str]:
    """Rows = metrics, columns = policies."""
    policies = summary["policies"]
    rows = [["prompts", *(str(doc["prompts"]) for doc in policies.values())]]
    rows.append(["responses", *(str(doc["samples"]) for doc in policies.values())])
    rows += [
        [label(key), *(cell(doc["metrics"].get(key)) for doc in policies.values())]
        for key in metric_order(summary)
    ]
    return markdown_table(["metric", *policies], rows)


def _bound_text(row: Mapping[str, Any]) -> str:
    return (
        f"utility gain ≥ {number(row['bound'])}"
        if row["form"] == "margin"
        else f"mean cost ≤ {number(row['bound'])}"
    )


def constraints_markdown(summary: Mapping[str, Any]) -> list[str]:
    """One row per (policy, constraint): bound, predicted, achieved with its interval, status."""
    rows = [
        [
            policy,
            row["name"],
            _bound_text(row),
            number(row["predicted"]),
            cell(row["achieved"]),
            row["status"],
        ]
        for policy, judged in summary["constraints"].items()
        for row in judged
    ]
    return markdown_table(["policy", "constraint", "bound", "predicted", "achieved", "status"], rows)


def categories_markdown(summary: Mapping[str, Any]) -> list[str]:
    """One table per score (reward, each cost, share unsafe): rows = categories, columns = policies."""
    policies = {p: doc["categories"] for p, doc in summary["policies"].items() if "categories" in doc}
    cats = sorted({c for by_cat in policies.values() for c in by_cat})
    keys = sorted(
        {k for by_cat in policies.values() for m in by_cat.values() for k in m},
        key=lambda k: (k != "reward", k.split(".")[0] != "cost", k),
    )
    lines: list[str] = []
    for key in keys:
        rows = [[c, *(cell(by_cat.get(c, {}).get(key)) for by_cat in policies.values())] for c in cats]
        lines += ["", f"### {label(key)}", "", *markdown_table(["category", *policies], rows)]
    return lines


def eval_markdown(summary: Mapping[str, Any]) -> str:
    """eval.md: the metrics table, the constraints table, per-category tables (when present), a legend."""
    level, reference = summary["level"], summary["reference"]
    lines = [
        "# Evaluation",
        "",
        f"Cells are mean [{100 * level:g}% interval]; intervals come from {summary['n_boot']} bootstrap "
        "resamples of the prompts (a prompt's responses stay together).",
        f"Paired metrics compare each policy with `{reference}` on the same (prompt, sample)."
        if reference is not None
        else "No reference policy: paired metrics are left out.",
        "",
        "## Metrics",
        "",
        *metrics_markdown(summary),
    ]
    if any(summary["constraints"].values()):
        lines += ["", "## Constraints", "", *constraints_markdown(summary), ""]
        lines.append(
            "met: the whole interval satisfies the bound; violated: the whole interval misses it; "
            "met within noise: the interval contains the bound (where the dual's optimum puts an active constraint)."
        )
    if any("categories" in doc for doc in summary["policies"].values()):
        lines += ["", "## By category", *categories_markdown(summary)]
    lines += ["", "## Legend", ""]
    used = {label(k).split(" · ")[0] for k in metric_order(summary)}
    for name, text in LEGEND.items():
        if name in used:
            lines.append(f"- **{name}**: {text.format(threshold=summary['unsafe_threshold'])}")
    return "\n".join(lines) + "\n"


def _constraint_line(row: Mapping[str, Any]) -> str:
    bound = (
        f"margin ≥ {number(row['bound'])}" if row["form"] == "margin" else f"cost ≤ {number(row['bound'])}"
    )
    return (
        f"{row['name']}: {bound} · predicted {number(row['predicted'])} · "
        f"achieved {cell(row['achieved'])} · {row['status']}"
    )


def console_table(summary: Mapping[str, Any]) -> str:
    """Fixed-width before/after table for the terminal, then one line per constraint target."""
    policies = summary["policies"]
    header = ["", *policies]
    rows = [
        [label(key), *(cell(doc["metrics"].get(key)) for doc in policies.values())]
        for key in metric_order(summary, CONSOLE_KEYS)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    n_prompts = max(doc["prompts"] for doc in policies.values())
    lines = [
        f"evaluation: {n_prompts} prompts, {100 * summary['level']:g}% intervals (bootstrap over prompts)"
    ]
    for row in [header, *rows]:
        lines.append("  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip())
    several = len(summary["constraints"]) > 1
    for policy, judged in summary["constraints"].items():
        for row in judged:
            lines.append((f"{policy} · " if several else "") + _constraint_line(row))
    return "\n".join(lines)
