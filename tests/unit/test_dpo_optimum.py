"""The exact optimum of DPO on finitely many labelled pairs: Bradley–Terry MLE, the DPO target, its noise floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit

from ray_align.losses.policy import dpo_loss
from ray_align.tasks import default_task, exact_dual, score_tables
from ray_align.tasks.dpo_optimum import (
    bradley_terry_fit,
    bt_label_noise_tv,
    dpo_optimum,
    preference_counts,
)


def expected_wins(scores: np.ndarray, n: float) -> np.ndarray:
    """W[a, b] = n σ(R_a − R_b): the mean counts of n Bradley–Terry comparisons of every pair."""
    wins = n * expit(scores[:, None] - scores[None, :])
    np.fill_diagonal(wins, 0.0)
    return wins


def test_two_answers_closed_form():
    """One pair, 7 wins of answer 0 and 3 of answer 1: û_1 − û_0 = log(3/7)."""
    u = bradley_terry_fit(np.array([[0.0, 7.0], [3.0, 0.0]]))
    assert u[0] == 0.0
    assert u[1] == pytest.approx(np.log(3 / 7), abs=1e-12)


def test_mean_counts_recover_the_scores():
    """At W = n σ(ΔR) the likelihood's gradient Σ_b (W_ab − n σ(R_a − R_b)) vanishes at R: û = R − R_0."""
    scores = np.array([0.3, -1.2, 2.0, 0.7, 0.0])
    np.testing.assert_allclose(bradley_terry_fit(expected_wins(scores, 13.0)), scores - scores[0], atol=1e-10)


def test_no_finite_estimate_is_refused():
    """Answer 2 never loses: its log-ratio has no finite maximiser."""
    wins = np.array([[0.0, 4.0, 0.0], [2.0, 0.0, 0.0], [5.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="strongly connected"):
        bradley_terry_fit(wins)


def test_fit_minimises_the_dpo_loss():
    """The tabular policy π̂ ∝ π_ref e^{û/β} is a stationary point of the project's DPO loss (hard labels,
    one row per win), and moving any answer's logit raises the loss."""
    rng = np.random.default_rng(0)
    wins = rng.integers(1, 9, size=(4, 4)).astype(float)
    np.fill_diagonal(wins, 0.0)
    beta, log_ref = 0.5, np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    chosen, rejected = zip(*[(a, b) for a in range(4) for b in range(4) for _ in range(int(wins[a, b]))])
    chosen, rejected = torch.tensor(chosen), torch.tensor(rejected)
    ref = torch.tensor(log_ref)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, -1)
        return dpo_loss(logp[chosen], logp[rejected], ref[chosen], ref[rejected], beta)[0]

    u = bradley_terry_fit(wins)
    logits = torch.tensor(log_ref + u / beta, requires_grad=True)
    value = loss(logits)
    value.backward()
    assert logits.grad.abs().max() < 1e-10
    for a in range(4):
        for eps in (-0.05, 0.05):
            moved = logits.detach().clone()
            moved[a] += eps
            assert loss(moved) > value


@pytest.mark.parametrize("m", [1, 2])
def test_mean_counts_give_the_constrained_optimum(m):
    """Pairs labelled with their mean Bradley–Terry counts by R = r + λ*ᵀg: the DPO target is π* exactly."""
    task = default_task(m)
    opt = exact_dual(task, task.sft_probs)
    r, g = score_tables(task, len(task.answers))
    scores = r + g @ opt.lam_star
    wins = np.stack([expected_wins(s, 20.0) for s in scores])
    np.testing.assert_allclose(dpo_optimum(task, task.sft_probs, wins, task.beta), opt.pi_star, atol=1e-10)


def test_counts_from_texts():
    """Templated prompts map to the task prompt they contain; whitespace around an answer is ignored."""
    task = default_task(1)
    prompts = [f"USER: {task.prompts[1]} ASSISTANT:", task.prompts[1], task.prompts[0]]
    wins = preference_counts(task, prompts, [" <a2>", "<a2>", "<a4>"], ["<a0>", "<a0>", " <a1>"])
    assert wins[1, 2, 0] == 2 and wins[0, 4, 1] == 1 and wins.sum() == 3
    with pytest.raises(ValueError, match="answers"):
        preference_counts(task, prompts[:1], ["<a2><a2>"], ["<a0>"])


def test_label_noise_matches_simulation():
    """Bernoulli labels on 30 pairs per unordered answer pair: the mean TV(π̂, π_R) over 300 draws is within
    ±25% of bt_label_noise_tv (first order in 1/√n)."""
    task = default_task(1)
    r, g = score_tables(task, len(task.answers))
    scores = r + 1.5 * g[..., 0]
    n = 30
    counts = np.full((3, 5, 5), float(n)) * (1 - np.eye(5))
    exact = dpo_optimum(task, task.sft_probs, np.stack([expected_wins(s, n) for s in scores]), task.beta)
    rng = np.random.default_rng(1)
    tvs = []
    for _ in range(300):
        wins = np.zeros((3, 5, 5))
        for x in range(3):
            for a in range(5):
                for b in range(a + 1, 5):
                    k = rng.binomial(n, expit(scores[x, a] - scores[x, b]))
                    wins[x, a, b], wins[x, b, a] = k, n - k
        try:
            fitted = dpo_optimum(task, task.sft_probs, wins, task.beta)
        except ValueError:  # a draw without a finite estimate (rare at n = 30)
            continue
        tvs.append(0.5 * np.abs(fitted - exact).sum(axis=1))
    predicted = bt_label_noise_tv(exact, scores, counts, task.beta)
    np.testing.assert_allclose(np.mean(tvs, axis=0), predicted, rtol=0.25)
