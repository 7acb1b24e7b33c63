"""SACPO, P-SACPO and PeCAN through the real actors land on the exact targets of the one-token task (m = 1).

These methods learn from preference DATA, so the test writes a PKU-format file for the task: for every prompt x
and every unordered answer pair {a, b}, N_PAIR rows (y0, y1) in random order with Bradley–Terry labels from the
task's tables, P(b better) = σ(r_b − r_a), P(b safer) = σ(g_b − g_a).

Labels. Each row carries one hard label, and exactly round(N_PAIR·σ(Δ)) of the N_PAIR rows of (x, {a, b}) name
b (then shuffled with a seeded rng). This stratified draw has the Bernoulli labels' mean without their sampling
noise (Bernoulli labels at n pairs per prompt leave DPO at TV ≈ 0.065·√(2000/n) from its target,
docs/known-optimum.md). What remains is each frequency's rounding to a multiple of 1/N_PAIR.

Dataset form = generated form. A dataset answer " <a2>" (the PKU template's space, then the answer) is the one
answer token (the task tokenizer's answer tokens absorb the space before them), and `data.response_eos=false`
leaves EOS off, as generation with max_tokens = 1 does. So DPO trains exactly the token the generators sample
and the exact read-out uses. (With EOS, DPO could meet a preference through log π(EOS|x, a) instead of π(a|x).)

Exact targets (population limit of DPO: on every compared pair the fitted implicit reward difference equals
the label's logit, so DPO with β on σ(Δf) labels from reference π_0 reaches π_0 e^{f/β}/Z):
- SACPO step 1, DPO(β) on helpfulness from π_ref: π_r = π_ref e^{r/β}/Z_r.
- SACPO step 2, DPO(β/λ) on safety from π_r as the new reference: π_r e^{λg/β}/Y = π_{r+λg}, which is π* with
  sacpo.beta_over_lambda = β/λ*.
- P-SACPO q: (1 − q)θ_1 + qθ_2 is exactly π_{r+qλg} only for a log-linear (tabular) policy; the merge of a
  network's weights is not a merge of its logits. We check what holds for any model: the merged policy lies
  between the two steps and is closer to π_{r+qλg} than step 1 is.
- PeCAN: DPO_H and DPO_S with β give β h_r = r − β log Z_H(x), β h_g = g − β log Z_S(x); per-prompt constants
  cancel in the margin form, so λ̂ estimates λ*, and DPO(β) on the relabelled π_ref samples reaches π_{r+λ̂g}.

Optimiser. DPO constrains only log-ratios BETWEEN answers, so nothing in its loss holds the mass outside the
answers down; Adam's first, sign-like steps move every parameter by about the learning rate, and at lr ≥ 1.5e-3
SACPO's step 2 (β/λ* = 0.336, from a DPO-trained reference) let 30–95% of π(·|x) leave the answers at no cost
in loss (plain-torch replay of the same stages). lr 1e-3 with cosine decay over 480 steps (40 epochs of 12
batches of 128 pairs) keeps it under 1%.

Tolerances (measured once on the 2-core machine, 8 min for both tests): SACPO step 1 TV 0.022 to π_r, step 2
TV 0.024 to π*, slack +0.011; the q = ½ merge TV 0.079 to π_{r+λg/2}; PeCAN λ̂ = 1.470 against λ* = 1.496, DPO_H
TV 0.022, DPO_S TV 0.011, final TV 0.011, slack −0.0001. Held to TV ≤ 0.05 per DPO stage (rounding of the label
frequencies alone costs ~0.01; the rest is optimisation), slack ≥ −0.05, PeCAN's |λ̂ − λ*| ≤ 0.1 (CAN's
sampling se at K = 1024 per prompt is ~0.014; the implicit scores' error moves it by a few hundredths more),
and the merge's TV ≤ 0.15 (not exact for a network).
"""

from __future__ import annotations

import numpy as np
import pytest
from known_optimum import (
    Reference,
    build_reference,
    evaluate,
    job_config,
    policy_probs,
    write_preference_pairs,
)

from actors.launch import run_job
from ray_align.tasks import known_optimum as ko

pytestmark = pytest.mark.integration

N_PAIR = 50  # rows per (prompt, unordered answer pair): 10 pairs × 3 prompts × 50 = 1500 rows
K = 1024  # PeCAN's π_ref samples per prompt (K/2 relabelled pairs each)
DPO = (
    "data.response_eos=false",
    "training.lr=1e-3",
    "training.scheduler=cosine",
    "training.epochs=40",
    "training.batch_size=128",
    "training.micro_batch_size=128",
)
TV_STEP = 0.05  # TV of a DPO stage to its exact target
TV_MERGE = 0.15  # P-SACPO's merge against π_{r+qλg}: exact only for tabular policies
LAMBDA_TOL = 0.1  # PeCAN's λ̂ against λ*


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """The m = 1 reference with the preference file as its data."""
    root = tmp_path_factory.mktemp("known-optimum-stepwise")
    base = build_reference(root, 1)
    data = root / "pairs.jsonl"
    write_preference_pairs(data, base.task, N_PAIR)
    return Reference(base.task, base.policy, str(data), base.answer_ids, base.prompt_ids, base.pi_ref, base.optimum)


def _tilted(ref: Reference, lam_g: float, with_reward: bool = True) -> np.ndarray:
    """π_ref e^{(r·with_reward + lam_g·g)/β} / Z over the whole vocabulary [X, V]."""
    r, g = ko.score_tables(ref.task, ref.pi_ref.shape[1], ref.answer_ids)
    return ko.tilted_policy(ref.pi_ref, r * with_reward + lam_g * g[..., 0], ref.task.beta)


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return ko.tv_distance(p, q)[1]


def test_sacpo_and_p_sacpo_reach_their_targets(ray_session, reference, tmp_path):
    """Step 1 → π_r, step 2 (β/λ*, π_r as reference) → π*, and the q = ½ merge sits between the two."""
    beta, lam = reference.task.beta, float(reference.optimum.lam_star[0])
    config = job_config(
        reference,
        tmp_path / "sacpo",
        "sacpo",
        f"sacpo.beta={beta}",
        f"sacpo.beta_over_lambda={beta / lam}",
        "sacpo.merge_q=[0.5]",
        *DPO,
    )
    result = run_job(config)
    paths = result["checkpoints"]
    step1, step2 = (policy_probs(paths[k], reference.prompt_ids) for k in ("step1", "step2"))
    merged = policy_probs(paths["merged"]["0.5"], reference.prompt_ids)
    pi_r, pi_half = _tilted(reference, 0.0), _tilted(reference, 0.5 * lam)
    outcome = evaluate(reference, result["checkpoint"])
    tv = {
        "step1_r": _tv(step1, pi_r),
        "step1_step2": _tv(step1, step2),
        "merged_step1": _tv(merged, step1),
        "merged_step2": _tv(merged, step2),
        "merged_half": _tv(merged, pi_half),
        "step1_half": _tv(step1, pi_half),
        "ref_r": _tv(reference.pi_ref, pi_r),
        "step1_star": _tv(step1, reference.optimum.pi_star),
    }
    print("sacpo", tv, outcome)
    assert tv["step1_r"] <= TV_STEP, tv
    assert outcome["tv"] <= TV_STEP, (outcome, tv)
    assert np.all(outcome["slack"] >= -0.05), outcome
    # P-SACPO: between the two steps, and closer to π_{r+qλg} than step 1 is
    assert max(tv["merged_step1"], tv["merged_step2"]) < tv["step1_step2"], tv
    assert tv["merged_half"] < tv["step1_half"], tv
    assert tv["merged_half"] <= TV_MERGE, tv


def test_pecan_reaches_the_optimum(ray_session, reference, tmp_path):
    """DPO_H → π_r, DPO_S → π_g, λ̂ ≈ λ*, and the final DPO on "theory" labels → π*."""
    config = job_config(
        reference, tmp_path / "pecan", "pecan", f"can.samples_per_prompt={K}", "can.pecan_label=theory", *DPO
    )
    result = run_job(config)
    lam = result["lambda"]["safety"]
    helpful = policy_probs(result["policies"]["helpfulness"], reference.prompt_ids)
    safe = policy_probs(result["policies"]["safety"], reference.prompt_ids)
    tv = {
        "helpful_r": _tv(helpful, _tilted(reference, 0.0)),
        "safe_g": _tv(safe, _tilted(reference, 1.0, with_reward=False)),
        "ref_star": _tv(reference.pi_ref, reference.optimum.pi_star),
    }
    outcome = evaluate(reference, result["checkpoint"])
    print("pecan", lam, reference.optimum.lam_star, tv, outcome)
    assert abs(lam - float(reference.optimum.lam_star[0])) <= LAMBDA_TOL, (lam, reference.optimum.lam_star)
    assert max(tv["helpful_r"], tv["safe_g"]) <= TV_STEP, tv
    assert outcome["tv"] <= TV_STEP, (outcome, tv)
    assert np.all(outcome["slack"] >= -0.05), outcome
