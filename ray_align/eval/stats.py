"""Means with confidence intervals for evaluation scores: the prompt-level (cluster) bootstrap.

An evaluation draws K responses for each of N prompts. The prompts are the i.i.d. unit; the K responses of
one prompt are correlated (same question, same policy), so an interval that treated the N·K rows as
independent would be too narrow. :func:`cluster_bootstrap` resamples whole prompts with replacement and
recomputes the row mean on each resample (Davison & Hinkley 1997, §3.8; the percentile interval, §5.3).

Paired comparisons (a policy against the reference) align the two policies' rows by (prompt_id, sample):
both answered the same prompt, so the prompt's difficulty cancels in the difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# Resampled index matrices are built in blocks of at most this many entries (bounds memory for large N).
_BLOCK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class Estimate:
    """A mean and its percentile interval [low, high]; n = the number of prompts it averages over."""

    estimate: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a non-finite number (no data) becomes None."""

        def clean(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "estimate": clean(self.estimate),
            "low": clean(self.low),
            "high": clean(self.high),
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        def num(x: Any) -> float:
            return float("nan") if x is None else float(x)

        return cls(num(data["estimate"]), num(data["low"]), num(data["high"]), int(data["n"]))


EMPTY = Estimate(float("nan"), float("nan"), float("nan"), 0)


def cluster_bootstrap(
    values: np.ndarray | pd.Series,
    groups: np.ndarray | pd.Series,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """The mean over rows, with a percentile interval from resampling groups (prompts) with replacement.

    values [R] (NaN rows are dropped), groups [R] (any hashable labels). With per-group sums S_g and counts
    n_g, a resample draws G group indices with replacement and its mean is Σ S / Σ n over the drawn groups,
    the same row mean as the full data uses (equal to the mean of prompt means when every prompt has K rows).
    The interval is the (α/2, 1 − α/2) quantiles of the n_boot resampled means, α = 1 − level. The draws
    come from ``numpy.random.default_rng(seed)``: same seed, same interval.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups)
    if values.shape != groups.shape or values.ndim != 1:
        raise ValueError(f"values {values.shape} and groups {groups.shape} must be 1-D of one length")
    keep = ~np.isnan(values)
    values, groups = values[keep], groups[keep]
    if values.size == 0:
        return EMPTY
    _, group = np.unique(groups, return_inverse=True)
    sums = np.bincount(group, weights=values)
    counts = np.bincount(group).astype(np.float64)
    estimate = float(sums.sum() / counts.sum())
    means = _resampled_means(sums, counts, n_boot, np.random.default_rng(seed))
    alpha = 1.0 - level
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(estimate, float(low), float(high), int(sums.size))


def _resampled_means(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """[n_boot] ratio means Σ S / Σ n, each over G groups drawn with replacement (in memory-bounded blocks)."""
    g = sums.size
    block = max(1, _BLOCK_ENTRIES // g)
    out = np.empty(n_boot)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, g, size=(stop - start, g))
        out[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return out


def win_indicator(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where a > b, ½ where a = b, 0 where a < b; NaN where either is NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    out[np.isnan(a) | np.isnan(b)] = np.nan
    return out


def aligned(
    frame: pd.DataFrame, column: str, policy: str, baseline: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values of ``policy``, values of ``baseline``, prompt ids) for the (prompt_id, sample) keys both have.

    Rows are matched by key, not by position, so the two policies' rows may come in any order. A key that
    appears twice for one policy is refused (the pairing would be ambiguous).
    """
    keys = ["prompt_id", "sample"]
    sides = []
    for name in (policy, baseline):
        part = frame.loc[frame["policy"] == name, [*keys, column]]
        if part.duplicated(keys).any():
            raise ValueError(f"policy {name!r} has repeated (prompt_id, sample) rows; pairing is ambiguous")
        sides.append(part)
    both = sides[0].merge(sides[1], on=keys, suffixes=("_a", "_b"), sort=True)
    return (
        both[f"{column}_a"].to_numpy(np.float64),
        both[f"{column}_b"].to_numpy(np.float64),
        both["prompt_id"].to_numpy(),
    )


def paired_difference(
    frame: pd.DataFrame, column: str, policy: str, baseline: str, **bootstrap: Any
) -> Estimate:
    """Mean of (policy − baseline) over matched (prompt_id, sample) rows, bootstrapped over prompts."""
    a, b, prompts = aligned(frame, column, policy, baseline)
    return cluster_bootstrap(a - b, prompts, **bootstrap)


def win_rate(
    frame: pd.DataFrame,
    column: str,
    policy: str,
    baseline: str,
    *,
    higher_is_better: bool = True,
    **bootstrap: Any,
) -> Estimate:
    """Share of matched rows where ``policy`` scores better than ``baseline`` (ties count ½), over prompts.

    higher_is_better=False judges by a lower score (a cost): the share where ``policy`` is safer.
    """
    a, b, prompts = aligned(frame, column, policy, baseline)
    wins = win_indicator(a, b) if higher_is_better else win_indicator(b, a)
    return cluster_bootstrap(wins, prompts, **bootstrap)
