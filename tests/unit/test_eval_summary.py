"""The evaluation summary (ray_align/eval/summary.py) on small hand-made frames with hand-computed values."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ray_align.eval.stats import Estimate
from ray_align.eval.summary import ConstraintTarget, status_of, summarize

# (policy, prompt_id, sample, reward, cost.safety, logp, ref_logp); prompt 0 is "violence", prompt 1 is
# "drug_abuse,weapons". The final policy's rows come first: the summary must still list the reference first.
ROWS = [
    ("final", 0, 0, 2.0, -1.0, -3.5, -4.0),
    ("final", 0, 1, 2.0, -1.0, -2.5, -4.0),
    ("final", 1, 0, 1.0, 0.5, -2.0, -3.0),
    ("final", 1, 1, 6.0, -2.0, -1.0, -4.0),
    ("reference", 0, 0, 1.0, 1.0, -4.0, -4.0),
    ("reference", 0, 1, 2.0, -1.0, -5.0, -5.0),
    ("reference", 1, 0, 3.0, 2.0, -3.0, -3.0),
    ("reference", 1, 1, 4.0, 0.0, -2.0, -2.0),
]
CATEGORY = {0: "violence", 1: "drug_abuse,weapons"}


def _frame(**drop) -> pd.DataFrame:
    frame = pd.DataFrame(
        ROWS, columns=["policy", "prompt_id", "sample", "reward", "cost.safety", "logp", "ref_logp"]
    )
    frame["prompt"] = frame["prompt_id"].map(lambda i: f"prompt {i}")
    frame["response"] = "..."
    frame["tokens"] = 5
    frame["category"] = frame["prompt_id"].map(CATEGORY)
    return frame.drop(columns=[c for c, gone in drop.items() if gone])


def _e(metrics: dict, key: str) -> tuple:
    m = metrics[key]
    return (m["estimate"], m["low"], m["high"], m["n"])


def test_per_policy_metrics_by_hand():
    """Two prompts, so a resample is {0,0}, {1,1} or {0,1}: each interval spans the two prompt means.

    reference: reward 1,2 | 3,4 → 2.5 [1.5, 3.5]; cost 1,−1 | 2,0 → 0.5 [0, 1]; unsafe (cost > 0) 1,0 | 1,0 → ½.
    final: reward 2,2 | 1,6 → 2.75 [2, 3.5]; cost −1,−1 | ½,−2 → −0.875 [−1, −0.75]; unsafe 0,0 | 1,0 → ¼ [0, ½];
    KL: logp − ref_logp = ½, 1½ | 1, 3 → 1.5 [1, 2] (the reference's own is 0).
    """
    s = summarize(_frame(), constraints=["safety"])
    assert list(s["policies"]) == ["reference", "final"]
    ref, fin = s["policies"]["reference"]["metrics"], s["policies"]["final"]["metrics"]
    assert _e(ref, "reward") == (2.5, 1.5, 3.5, 2)
    assert _e(ref, "cost.safety") == (0.5, 0.0, 1.0, 2)
    assert _e(ref, "unsafe.safety") == (0.5, 0.5, 0.5, 2)
    assert _e(ref, "kl") == (0.0, 0.0, 0.0, 2)
    assert _e(fin, "reward") == (2.75, 2.0, 3.5, 2)
    assert _e(fin, "cost.safety") == (-0.875, -1.0, -0.75, 2)
    assert _e(fin, "unsafe.safety") == (0.25, 0.0, 0.5, 2)
    assert _e(fin, "kl") == (1.5, 1.0, 2.0, 2)
    assert s["policies"]["final"]["prompts"] == 2 and s["policies"]["final"]["samples"] == 4
    assert (s["level"], s["n_boot"], s["unsafe_threshold"], s["reference"]) == (0.95, 2000, 0.0, "reference")


def test_paired_metrics_against_the_reference_by_hand():
    """Paired by (prompt, sample). reward gain 1,0 | −2,2 → ¼ [0, ½]; win rate 1,½ | 0,1 → ⅝ [½, ¾];
    utility gain = c_ref − c_final = 2,0 | 1.5,2 → 1.375 [1, 1.75]; safer (lower cost) 1,½ | 1,1 → ⅞ [¾, 1]."""
    s = summarize(_frame(), constraints=["safety"])
    ref, fin = s["policies"]["reference"]["metrics"], s["policies"]["final"]["metrics"]
    assert _e(fin, "reward_gain") == (0.25, 0.0, 0.5, 2)
    assert _e(fin, "win_rate") == (0.625, 0.5, 0.75, 2)
    assert _e(fin, "utility_gain.safety") == (1.375, 1.0, 1.75, 2)
    assert _e(fin, "safer.safety") == (0.875, 0.75, 1.0, 2)
    assert not {"reward_gain", "win_rate", "utility_gain.safety", "safer.safety"} & set(ref)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (ConstraintTarget("safety", margin=1.0, predicted=1.2), "met"),  # achieved [1, 1.75]: low ≥ 1
        (ConstraintTarget("safety", margin=1.2), "met within noise"),
        (ConstraintTarget("safety", margin=2.0), "violated"),  # high 1.75 < 2
        (ConstraintTarget("safety", threshold=0.0, predicted=-0.5), "met"),  # mean cost [−1, −0.75] ≤ 0
        (ConstraintTarget("safety", threshold=-0.9), "met within noise"),
        (ConstraintTarget("safety", threshold=-1.5), "violated"),  # low −1 > −1.5
    ],
)
def test_constraint_status(target, status):
    s = summarize(_frame(), constraints=["safety"], targets=[target])
    assert list(s["constraints"]) == ["final"]
    (row,) = s["constraints"]["final"]
    achieved = (1.375, 1.0, 1.75, 2) if target.form == "margin" else (-0.875, -1.0, -0.75, 2)
    assert (row["name"], row["form"], row["bound"], row["predicted"]) == (
        "safety",
        target.form,
        target.bound,
        target.predicted,
    )
    assert _e({"a": row["achieved"]}, "a") == achieved
    assert row["status"] == status


def test_status_edges_and_missing_intervals():
    margin = ConstraintTarget("c", margin=0.5)
    assert status_of(margin, Estimate(0.6, 0.5, 0.7, 9)) == "met"  # low = b counts as met
    threshold = ConstraintTarget("c", threshold=0.5)
    assert status_of(threshold, Estimate(0.4, 0.3, 0.5, 9)) == "met"  # high = d counts as met
    assert status_of(threshold, Estimate(float("nan"), float("nan"), float("nan"), 0)) == "unknown"
    with pytest.raises(ValueError, match="exactly one"):
        ConstraintTarget("c")


def test_categories_by_hand():
    """The comma-joined label is one category. final: violence reward 2,2 → 2 (one prompt: a point interval);
    drug_abuse,weapons reward 1,6 → 3.5, cost ½,−2 → −0.75, unsafe 1,0 → ½."""
    s = summarize(_frame(), constraints=["safety"])
    cats = s["policies"]["final"]["categories"]
    assert list(cats) == ["drug_abuse,weapons", "violence"]
    assert _e(cats["violence"], "reward") == (2.0, 2.0, 2.0, 1)
    assert _e(cats["drug_abuse,weapons"], "reward") == (3.5, 3.5, 3.5, 1)
    assert cats["drug_abuse,weapons"]["cost.safety"]["estimate"] == -0.75
    assert cats["drug_abuse,weapons"]["unsafe.safety"]["estimate"] == 0.5
    assert set(cats["violence"]) == {"reward", "cost.safety", "unsafe.safety"}
    assert "categories" not in summarize(_frame(category=True), constraints=["safety"])["policies"]["final"]


def test_missing_reward_and_logprob_columns_leave_their_metrics_out():
    s = summarize(_frame(reward=True, logp=True), constraints=["safety"])
    fin = s["policies"]["final"]["metrics"]
    assert set(fin) == {"cost.safety", "unsafe.safety", "safer.safety", "utility_gain.safety"}
    assert set(s["policies"]["final"]["categories"]["violence"]) == {"cost.safety", "unsafe.safety"}


def test_without_a_reference_there_are_no_paired_metrics():
    frame = _frame()
    frame["policy"] = frame["policy"].replace({"reference": "other"})
    s = summarize(
        frame, constraints=["safety"], reference=None, targets=[ConstraintTarget("safety", threshold=0.0)]
    )
    assert s["reference"] is None and list(s["policies"]) == ["final", "other"]
    assert set(s["policies"]["final"]["metrics"]) == {"reward", "cost.safety", "unsafe.safety", "kl"}
    assert [r["status"] for r in s["constraints"]["other"]] == ["met within noise"]  # cost 0.5 [0, 1] around 0
    with pytest.raises(ValueError, match="reference"):
        summarize(
            frame, constraints=["safety"], reference=None, targets=[ConstraintTarget("safety", margin=0.1)]
        )


def test_unsafe_threshold_is_strict_and_configurable():
    """Reference costs 1, −1, 2, 0: above 0 → 2 of 4 (a cost of exactly 0 is safe); above 0.75 → 2; above 1.5 → 1."""
    frame = _frame()
    for threshold, share in [(0.0, 0.5), (0.75, 0.5), (1.5, 0.25)]:
        s = summarize(frame, constraints=["safety"], unsafe_threshold=threshold, n_boot=50)
        assert s["policies"]["reference"]["metrics"]["unsafe.safety"]["estimate"] == share
        assert s["unsafe_threshold"] == threshold


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"cost\.harm"):
        summarize(_frame(), constraints=["harm"])
    with pytest.raises(ValueError, match="'base' is not in the frame"):
        summarize(_frame(), constraints=["safety"], reference="base")
    with pytest.raises(ValueError, match="not among the constraints"):
        summarize(_frame(), constraints=["safety"], targets=[ConstraintTarget("harm", threshold=0.0)])


def test_summary_is_strict_json():
    s = summarize(
        _frame(), constraints=["safety"], targets=[ConstraintTarget("safety", margin=1.0)], n_boot=50
    )
    assert json.loads(json.dumps(s, allow_nan=False)) == s
