"""The prompt-level bootstrap and the paired comparisons (ray_align/eval/stats.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ray_align.eval.stats import (
    EMPTY,
    Estimate,
    aligned,
    cluster_bootstrap,
    paired_difference,
    win_indicator,
    win_rate,
)


def test_two_prompts_give_three_resample_means():
    """Prompts a = {1, 2}, b = {3, 4}: the mean is 2.5. A resample of two prompts is {a, a} (mean 1.5, prob ¼),
    {b, b} (3.5, ¼) or {a, b} (2.5, ½), so the 2.5% and 97.5% quantiles are 1.5 and 3.5."""
    e = cluster_bootstrap([1.0, 2.0, 3.0, 4.0], ["a", "a", "b", "b"])
    assert e == Estimate(2.5, 1.5, 3.5, 2)


def test_unequal_prompt_sizes_average_rows_not_prompt_means():
    """a = {0, 0, 0}, b = {3}: the row mean is 3/4 (the prompt-mean average would be 3/2). Resamples: {a, a} → 0,
    {b, b} → 3, {a, b} → 3/4."""
    e = cluster_bootstrap(np.array([0.0, 0.0, 0.0, 3.0]), np.array([7, 7, 7, 9]))
    assert (e.estimate, e.low, e.high, e.n) == (0.75, 0.0, 3.0, 2)


def test_nan_rows_are_dropped_and_n_counts_prompts_left():
    e = cluster_bootstrap([1.0, np.nan, 3.0, np.nan], [0, 0, 1, 2])
    assert e.estimate == 2.0 and e.n == 2  # prompt 2 had only a NaN row


def test_a_single_prompt_collapses_the_interval():
    e = cluster_bootstrap([2.0, 4.0], [5, 5])
    assert e.estimate == 3.0 and e.low == pytest.approx(3.0) and e.high == pytest.approx(3.0) and e.n == 1


def test_no_rows_give_an_empty_estimate_that_serialises_to_nulls():
    e = cluster_bootstrap([np.nan, np.nan], [0, 1])
    assert e is EMPTY
    assert e.to_dict() == {"estimate": None, "low": None, "high": None, "n": 0}
    assert math.isnan(Estimate.from_dict(e.to_dict()).estimate)


def test_to_dict_round_trips_through_json():
    e = Estimate(0.25, 0.1, 0.4, 12)
    assert Estimate.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_same_seed_same_interval_other_seed_other_interval():
    rng = np.random.default_rng(3)
    values, groups = rng.normal(size=300), np.repeat(np.arange(60), 5)
    first = cluster_bootstrap(values, groups, n_boot=300, seed=11)
    assert cluster_bootstrap(values, groups, n_boot=300, seed=11) == first
    assert cluster_bootstrap(values, groups, n_boot=300, seed=12) != first


def test_large_frames_go_through_in_blocks(monkeypatch):
    """Blocking the resample matrix changes memory, not the numbers (same draws in the same order)."""
    import ray_align.eval.stats as stats

    rng = np.random.default_rng(0)
    values, groups = rng.normal(size=400), np.repeat(np.arange(100), 4)
    whole = cluster_bootstrap(values, groups, n_boot=200)
    monkeypatch.setattr(stats, "_BLOCK_ENTRIES", 1000)  # blocks of 10 resamples
    assert cluster_bootstrap(values, groups, n_boot=200) == whole


@pytest.mark.parametrize("bad", [{"level": 1.0}, {"level": 0.0}, {"n_boot": 0}])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        cluster_bootstrap([1.0, 2.0], [0, 1], **bad)


def _clustered(
    rng: np.random.Generator, n_prompts: int, k: int, mean: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scores with a prompt effect: mean + u_i + e_ik, u ~ N(0, 1), e ~ N(0, 1) (intra-prompt correlation ½)."""
    u = rng.normal(size=(n_prompts, 1))
    e = rng.normal(size=(n_prompts, k))
    return (mean + u + e).ravel(), np.repeat(np.arange(n_prompts), k)


def test_coverage_of_the_true_mean_on_clustered_data():
    """200 datasets of 60 prompts × 4 samples with known mean 0.3: the 95% interval covers 0.3 in 0.90–0.99 of
    them. Treating rows as independent would not: with correlation ½ and K = 4 the variance of the mean is
    1 + 3·½ = 2.5 times the independent one, so a row-level interval (σ/√2.5 too narrow) covers about
    P(|Z| < 1.96/√2.5) ≈ 0.79."""
    rng = np.random.default_rng(2024)
    truth, reps = 0.3, 200
    covered = naive = 0
    for rep in range(reps):
        values, groups = _clustered(rng, 60, 4, truth)
        e = cluster_bootstrap(values, groups, n_boot=500, seed=rep)
        covered += e.low <= truth <= e.high
        rows = cluster_bootstrap(values, np.arange(values.size), n_boot=500, seed=rep)
        naive += rows.low <= truth <= rows.high
    assert 0.90 <= covered / reps <= 0.99
    assert naive / reps < 0.88


def test_win_indicator_counts_ties_half_and_keeps_nan():
    out = win_indicator([1.0, 2.0, 3.0, np.nan], [2.0, 2.0, 1.0, 0.0])
    np.testing.assert_array_equal(out[:3], [0.0, 0.5, 1.0])
    assert np.isnan(out[3])


def _pair_frame() -> pd.DataFrame:
    """Two prompts × two samples. (prompt, sample): reference reward, final reward
    (0,0): 1, 2   (0,1): 2, 2   (1,0): 3, 1   (1,1): 4, 6. Rows shuffled: pairing must go by key."""
    rows = [
        ("final", 1, 1, 6.0),
        ("reference", 0, 0, 1.0),
        ("final", 0, 1, 2.0),
        ("reference", 1, 1, 4.0),
        ("final", 0, 0, 2.0),
        ("reference", 1, 0, 3.0),
        ("reference", 0, 1, 2.0),
        ("final", 1, 0, 1.0),
    ]
    return pd.DataFrame(rows, columns=["policy", "prompt_id", "sample", "reward"])


def test_aligned_matches_rows_by_prompt_and_sample():
    a, b, prompts = aligned(_pair_frame(), "reward", "final", "reference")
    np.testing.assert_array_equal(a, [2.0, 2.0, 1.0, 6.0])
    np.testing.assert_array_equal(b, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(prompts, [0, 0, 1, 1])


def test_paired_difference_by_hand():
    """Differences 1, 0 (prompt 0; sum 1) and −2, 2 (prompt 1; sum 0): mean ¼. Resamples {0,0} → ½, {1,1} → 0,
    {0,1} → ¼, so the interval is [0, ½]."""
    e = paired_difference(_pair_frame(), "reward", "final", "reference")
    assert e == Estimate(0.25, 0.0, 0.5, 2)


def test_win_rate_by_hand():
    """Wins 1, ½ (prompt 0: mean ¾) and 0, 1 (prompt 1: mean ½): 5/8 overall, interval [½, ¾]. Judged by the
    lower score (a cost) the indicators flip: 0, ½, 1, 0 → 3/8."""
    frame = _pair_frame()
    assert win_rate(frame, "reward", "final", "reference") == Estimate(0.625, 0.5, 0.75, 2)
    safer = win_rate(frame, "reward", "final", "reference", higher_is_better=False)
    assert safer.estimate == 0.375 and (safer.low, safer.high) == (0.25, 0.5)


def test_unmatched_rows_are_left_out_and_repeated_keys_refused():
    frame = _pair_frame()
    partial = frame.drop(index=[0])  # final's (1, 1) is gone: the pair (1, 1) is dropped
    e = paired_difference(partial, "reward", "final", "reference")
    assert e.estimate == pytest.approx((1 + 0 - 2) / 3) and e.n == 2
    doubled = pd.concat([frame, frame.iloc[[1]]])
    with pytest.raises(ValueError, match="repeated"):
        paired_difference(doubled, "reward", "final", "reference")
