"""The evaluation summary (eval.json): every metric of every policy with a prompt-bootstrap interval.

Input: an evaluation frame, one row per (policy, prompt, sample) with ``policy``, ``prompt_id``, ``sample``,
``cost.<name>`` per constraint (cost scale: higher = more harmful; a utility g is stored as −g) and, when
present, ``reward``, ``logp``/``ref_logp`` (summed over the response tokens) and ``category``.

Per policy: mean reward, mean cost and share unsafe (cost > unsafe_threshold, Safe RLHF's convention) per
constraint, and KL(π || π_ref) estimated by the mean of log π(y) − log π_ref(y) over its own samples. Against
the reference, paired by (prompt_id, sample): win rate on reward, share safer per constraint, reward gain and
utility gain E_π[g] − E_ref[g] = E_ref[c] − E_π[c]. Then each constraint target is judged from its interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ray_align.eval.stats import Estimate, cluster_bootstrap, paired_difference, win_rate

REQUIRED = ("policy", "prompt_id", "sample")
MET, WITHIN_NOISE, VIOLATED, UNKNOWN = "met", "met within noise", "violated", "unknown"


@dataclass(frozen=True)
class ConstraintTarget:
    """A constraint's bound as trained for, and what the method predicted before training.

    Exactly one of margin (E_π[g] − E_ref[g] ≥ margin, utility scale) or threshold (E_π[c] ≤ threshold, cost
    scale). predicted: the predicted utility gain for a margin, the predicted expected cost for a threshold;
    None when the method predicts nothing (iterative methods).
    """

    name: str
    margin: float | None = None
    threshold: float | None = None
    predicted: float | None = None

    def __post_init__(self) -> None:
        if (self.margin is None) == (self.threshold is None):
            raise ValueError(f"constraint target {self.name!r} needs exactly one of margin or threshold")

    @property
    def form(self) -> str:
        return "margin" if self.margin is not None else "threshold"

    @property
    def bound(self) -> float:
        return float(self.margin if self.margin is not None else self.threshold)


def status_of(target: ConstraintTarget, achieved: Estimate) -> str:
    """met / violated when the whole interval lies on one side of the bound; "met within noise" when it
    contains the bound (the data cannot tell the policy from one exactly at the bound, which is where the
    dual's optimum puts an active constraint); unknown without an interval.

    margin (higher is better): met if low ≥ b, violated if high < b.
    threshold (lower is better): met if high ≤ d, violated if low > d.
    """
    low, high, bound = achieved.low, achieved.high, target.bound
    if not (np.isfinite(low) and np.isfinite(high)):
        return UNKNOWN
    if target.form == "margin":
        return MET if low >= bound else VIOLATED if high < bound else WITHIN_NOISE
    return MET if high <= bound else VIOLATED if low > bound else WITHIN_NOISE


def _check_frame(frame: pd.DataFrame, constraints: Sequence[str], reference: str | None) -> None:
    wanted = [*REQUIRED, *(f"cost.{c}" for c in constraints)]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(f"evaluation frame lacks column(s) {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError("evaluation frame has no rows")
    if reference is not None and not (frame["policy"] == reference).any():
        found = list(pd.unique(frame["policy"]))
        raise ValueError(
            f"reference policy {reference!r} is not in the frame (policies: {found}); pass reference=None "
            "to summarise without paired comparisons"
        )


def _score_metrics(
    rows: pd.DataFrame, constraints: Sequence[str], unsafe_threshold: float, boot: dict
) -> dict[str, Estimate]:
    """reward, cost.<c>, unsafe.<c> of one policy's (or one category's) rows."""
    prompts = rows["prompt_id"]
    out = {}
    if "reward" in rows.columns:
        out["reward"] = cluster_bootstrap(rows["reward"], prompts, **boot)
    for c in constraints:
        cost = rows[f"cost.{c}"].to_numpy(np.float64)
        out[f"cost.{c}"] = cluster_bootstrap(cost, prompts, **boot)
        unsafe = np.where(np.isnan(cost), np.nan, (cost > unsafe_threshold).astype(np.float64))
        out[f"unsafe.{c}"] = cluster_bootstrap(unsafe, prompts, **boot)
    return out


def _paired_metrics(
    frame: pd.DataFrame, policy: str, reference: str, constraints: Sequence[str], boot: dict
) -> dict[str, Estimate]:
    """win_rate, reward_gain (with a reward column), safer.<c>, utility_gain.<c>: policy against reference."""
    out = {}
    if "reward" in frame.columns:
        out["win_rate"] = win_rate(frame, "reward", policy, reference, **boot)
        out["reward_gain"] = paired_difference(frame, "reward", policy, reference, **boot)
    for c in constraints:
        column = f"cost.{c}"
        out[f"safer.{c}"] = win_rate(frame, column, policy, reference, higher_is_better=False, **boot)
        # utility gain = mean(−c_π) − mean(−c_ref) = mean(c_ref − c_π): the reference minus the policy
        out[f"utility_gain.{c}"] = paired_difference(frame, column, reference, policy, **boot)
    return out


def _policy_summary(
    frame: pd.DataFrame,
    policy: str,
    constraints: Sequence[str],
    reference: str | None,
    unsafe_threshold: float,
    boot: dict,
) -> dict[str, Any]:
    rows = frame[frame["policy"] == policy]
    metrics = _score_metrics(rows, constraints, unsafe_threshold, boot)
    if {"logp", "ref_logp"} <= set(rows.columns):
        log_ratio = rows["logp"].to_numpy(np.float64) - rows["ref_logp"].to_numpy(np.float64)
        metrics["kl"] = cluster_bootstrap(log_ratio, rows["prompt_id"], **boot)
    if reference is not None and policy != reference:
        metrics |= _paired_metrics(frame, policy, reference, constraints, boot)
    doc: dict[str, Any] = {
        "prompts": int(rows["prompt_id"].nunique()),
        "samples": len(rows),
        "metrics": {k: e.to_dict() for k, e in metrics.items()},
    }
    if "category" in rows.columns:
        doc["categories"] = {
            str(cat): {
                k: e.to_dict() for k, e in _score_metrics(part, constraints, unsafe_threshold, boot).items()
            }
            for cat, part in sorted(rows.groupby("category", dropna=True), key=lambda kv: str(kv[0]))
        }
    return doc


def _constraint_rows(metrics: dict[str, dict], targets: Sequence[ConstraintTarget]) -> list[dict[str, Any]]:
    rows = []
    for t in targets:
        key = f"utility_gain.{t.name}" if t.form == "margin" else f"cost.{t.name}"
        achieved = Estimate.from_dict(metrics[key])
        rows.append(
            {
                "name": t.name,
                "form": t.form,
                "bound": t.bound,
                "predicted": t.predicted,
                "achieved": achieved.to_dict(),
                "status": status_of(t, achieved),
            }
        )
    return rows


def summarize(
    frame: pd.DataFrame,
    *,
    constraints: Sequence[str],
    reference: str | None = "reference",
    targets: Sequence[ConstraintTarget] = (),
    unsafe_threshold: float = 0.0,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The JSON-ready summary of an evaluation frame (the eval.json layout of docs/eval.md).

    Policies appear reference first, then in order of first appearance. Metrics whose inputs are absent (no
    reward column, no logp/ref_logp, no reference) are left out. ``constraints`` holds one list of target
    rows per non-reference policy (empty without targets). Raises ValueError for a missing column or
    reference, a target naming an unknown constraint, or a margin target without a reference.
    """
    _check_frame(frame, constraints, reference)
    for t in targets:
        if t.name not in constraints:
            raise ValueError(f"constraint target {t.name!r} is not among the constraints {list(constraints)}")
        if t.form == "margin" and reference is None:
            raise ValueError(f"margin target {t.name!r} is measured against the reference; none was given")
    boot = {"n_boot": n_boot, "level": level, "seed": seed}
    names = list(pd.unique(frame["policy"]))
    if reference is not None:
        names = [reference] + [p for p in names if p != reference]
    policies = {
        str(p): _policy_summary(frame, p, constraints, reference, unsafe_threshold, boot) for p in names
    }
    judged = {
        name: _constraint_rows(doc["metrics"], targets)
        for name, doc in policies.items()
        if name != reference and targets
    }
    return {
        "level": level,
        "n_boot": n_boot,
        "unsafe_threshold": unsafe_threshold,
        "reference": reference,
        "policies": policies,
        "constraints": judged,
    }
