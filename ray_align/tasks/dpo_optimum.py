"""The exact optimum DPO reaches on a FINITE set of labelled answer pairs of the known-optimum task.

DPO with β on pairs (chosen c, rejected r) minimises −Σ_i log σ(u(c_i) − u(r_i)), u = β log(π/π_ref). On the
one-token task the policy's answer logits are free per prompt, so the minimiser is the Bradley–Terry maximum
likelihood estimate û of the pairs' win counts W[a, b] (times a was chosen over b), per prompt and up to a
constant, and the policy it defines is

    π̂(a|x) ∝ π_ref(a|x) exp(û_x(a)/β)         (answers only: DPO does not fix the mass outside them)

û is finite exactly when every answer can be reached from every other through wins (the digraph a → b,
W[a, b] > 0, is strongly connected); otherwise the loss has no minimiser and DPO drives some log-ratio to
infinity. Soft labels p are fractional counts (p to the second answer, 1 − p to the first).

With counts drawn as Bernoulli(σ(R_b − R_a)) labels, E û ≈ R up to a constant and π̂ → π_ref e^{R/β}/Z as the
counts grow; :func:`bt_label_noise_tv` gives the expected TV between them for a design of n_ab pairs per
unordered answer pair (the dataset-pair analogue of ``fixed_points.dpo_label_noise_tv``, which is for pairs of
π_ref samples). See docs/known-optimum.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit, log_expit

from ray_align.tasks.answer_scorer import answer_index, prompt_index
from ray_align.tasks.known_optimum import KnownOptimumTask, _answer_columns


def preference_counts(
    task: KnownOptimumTask, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]
) -> np.ndarray:
    """W [X, A, A]: W[x, a, b] = how often answer a was chosen over b for prompt x, from texts. Every response
    must be one of the task's answers."""
    n = len(task.answers)
    wins = np.zeros((len(task.prompts), n, n))
    for prompt, c, r in zip(prompts, chosen, rejected, strict=True):
        a, b = answer_index(task, c), answer_index(task, r)
        if a is None or b is None:
            raise ValueError(f"responses {c!r}, {r!r} are not both answers of the task")
        wins[prompt_index(task, prompt), a, b] += 1.0
    return wins


def _strongly_connected(wins: np.ndarray) -> bool:
    """Every node reaches every other along edges a → b with wins[a, b] > 0 (transitive closure)."""
    reach = (wins > 0) | np.eye(len(wins), dtype=bool)
    for k in range(len(wins)):
        reach |= reach[:, k : k + 1] & reach[k : k + 1, :]
    return bool(reach.all())


def _log_likelihood(wins: np.ndarray, u: np.ndarray) -> float:
    return float((wins * log_expit(u[:, None] - u[None, :])).sum())


def bradley_terry_fit(wins: np.ndarray, tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """û [A] maximising Σ_ab W[a, b] log σ(u_a − u_b), with û_0 = 0 (the gauge). Newton's method with
    backtracking on the concave log-likelihood; raises if no finite maximiser exists or it does not converge."""
    wins = np.asarray(wins, dtype=np.float64)
    if wins.ndim != 2 or wins.shape[0] != wins.shape[1] or (wins < 0).any():
        raise ValueError(f"wins must be a non-negative square matrix, got shape {wins.shape}")
    if not _strongly_connected(wins):
        raise ValueError(
            "no finite Bradley–Terry estimate: some answers never beat the others (wins digraph not strongly "
            "connected)"
        )
    total = wins + wins.T
    u = np.zeros(len(wins))
    for _ in range(max_iter):
        s = expit(u[:, None] - u[None, :])
        grad = (wins - total * s).sum(axis=1)
        if np.abs(grad).max() <= tol * max(1.0, total.max()):
            return u - u[0]
        w = total * s * (1.0 - s)
        laplacian = np.diag(w.sum(axis=1)) - w  # = −Hessian
        step = np.zeros_like(u)
        step[1:] = np.linalg.solve(laplacian[1:, 1:], grad[1:])  # û_0 held at 0
        t, base = 1.0, _log_likelihood(wins, u)
        while _log_likelihood(wins, u + t * step) < base - 1e-12 * abs(base) and t > 1e-8:  # rounding slack
            t *= 0.5
        u = u + t * step
    raise RuntimeError("Bradley–Terry fit did not converge")


def dpo_optimum(
    task: KnownOptimumTask,
    pi_ref: np.ndarray,
    wins: np.ndarray,
    beta: float,
    answer_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """π̂ [X, V]: per prompt π_ref(a|x) exp(û_x(a)/β) over the answers, normalised, and 0 outside them (DPO's
    loss leaves that mass free; a target with none there makes TV count whatever a policy moved outside)."""
    pi_ref = np.asarray(pi_ref, dtype=np.float64)
    cols = _answer_columns(task, pi_ref.shape[1], answer_ids)
    out = np.zeros_like(pi_ref)
    for x in range(len(task.prompts)):
        z = np.log(pi_ref[x, cols]) + bradley_terry_fit(wins[x]) / beta
        out[x, cols] = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return out


def bt_label_noise_tv(
    target: np.ndarray, scores: np.ndarray, pair_counts: np.ndarray, beta: float
) -> np.ndarray:
    """Expected TV(π̂, π_R) per prompt [X] for Bradley–Terry labels ~ σ(R_b − R_a) on a fixed design.

    target [X, A]: π_R = π_ref e^{R/β}/Z over the answers; scores [X, A]: R; pair_counts [X, A, A]: n_ab pairs of
    (a, b) per prompt (symmetric). δ = log π̂ − log π_R = (û − R)/β has Cov = (β² L)⁺, L the Laplacian of
    n_ab σ'(R_a − R_b) (the Fisher information of û), so to first order E TV = ½ √(2/π) Σ_a π_R(a) sd(δ_a − E δ).
    """
    tv = np.empty(len(target))
    for x in range(len(target)):
        q = target[x] / target[x].sum()
        s = expit(scores[x][:, None] - scores[x][None, :])
        w = pair_counts[x] * s * (1.0 - s)
        cov = np.linalg.pinv(beta**2 * (np.diag(w.sum(axis=1)) - w))
        centre = np.eye(len(q)) - q[None, :]
        sd = np.sqrt(np.einsum("ai,ij,aj->a", centre, cov, centre))
        tv[x] = 0.5 * np.sqrt(2.0 / np.pi) * float(q @ sd)
    return tv
