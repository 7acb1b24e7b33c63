"""The CAN dual (Huang et al. 2024) on a scored sample table: value, gradient, Hessian, and thresholds.

For N prompts with K_i ≤ K responses each, sampled from π_ref and scored with a reward r and m utilities g
(higher is safer), the empirical dual of

    max_π  E_x[E_π r − β KL(π || π_ref)]   s.t.   E_x E_π g_j ≥ τ_j

is, with z_ik(λ) = (r_ik + λᵀg_ik)/β and the tilted weights w_ik = softmax over valid k of z_ik,

    D̂(λ) = β (1/N) Σ_i [ logsumexp_k z_ik − log K_i ] − λᵀτ
    ∇D̂(λ) = (1/N) Σ_i Σ_k w_ik g_ik − τ                         (predicted E_{π_λ} g minus τ)
    ∇²D̂(λ) = (1/(βN)) Σ_i Cov_{w_i}(g_i)

(λᵀτ is a per-prompt constant inside the softmax, so the weights do not depend on τ.) The margin form
τ_j = Ē_ref g_j + b_j uses the reference mean Ē_ref g = (1/N) Σ_i mean_k g_ik, the mean of the per-prompt
means: every prompt counts 1/N, as in D̂. With equal K_i it is the mean over all samples.
:func:`solve_dual` minimises D̂ over λ ≥ 0 (generic minimisers in :mod:`ray_align.dual.solvers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ray_align.dual.solvers import projected_gradient, projected_newton, strict_feasibility_margin

MarginSpec = float | Sequence[float | None] | np.ndarray | None


@dataclass(frozen=True)
class ScoredTable:
    """Scores of K responses for each of N prompts (ragged: ``mask`` marks the valid responses).

    reward [N,K] float64; utilities [N,K,m] float64 (higher is safer); mask [N,K] bool. Entries outside the
    mask are ignored (stored as 0). Every prompt needs at least one valid response.
    """

    reward: np.ndarray
    utilities: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        reward = np.asarray(self.reward, dtype=np.float64)
        utilities = np.asarray(self.utilities, dtype=np.float64)
        if utilities.ndim == 2:
            utilities = utilities[..., None]
        mask = np.asarray(self.mask, dtype=bool)
        if reward.ndim != 2 or utilities.shape[:2] != reward.shape or mask.shape != reward.shape:
            raise ValueError(
                f"shapes disagree: reward {reward.shape}, utilities {utilities.shape}, mask {mask.shape}"
            )
        if utilities.shape[2] < 1:
            raise ValueError("a scored table needs at least one utility (m ≥ 1)")
        if not mask.any(axis=1).all():
            raise ValueError("every prompt needs at least one valid response")
        if not (np.isfinite(reward[mask]).all() and np.isfinite(utilities[mask]).all()):
            raise ValueError("reward and utilities must be finite on valid responses")
        object.__setattr__(self, "reward", np.where(mask, reward, 0.0))
        object.__setattr__(self, "utilities", np.where(mask[..., None], utilities, 0.0))
        object.__setattr__(self, "mask", mask)

    @classmethod
    def dense(cls, reward: np.ndarray, utilities: np.ndarray) -> ScoredTable:
        """A table where every prompt has all K responses; utilities [N,K] or [N,K,m]."""
        return cls(reward, utilities, np.ones(np.shape(reward), dtype=bool))

    @cached_property
    def _masked_reward(self) -> np.ndarray:
        """reward [N,K] with −inf outside the mask: adding finite scores keeps invalid logits at −inf."""
        return np.where(self.mask, self.reward, -np.inf)

    @cached_property
    def planes(self) -> np.ndarray:
        """utilities as [m,N,K], contiguous per constraint (fast elementwise work when m is small)."""
        return np.ascontiguousarray(np.moveaxis(self.utilities, 2, 0))

    @cached_property
    def _log_counts(self) -> np.ndarray:
        return np.log(self.counts)

    @property
    def n_prompts(self) -> int:
        return self.reward.shape[0]

    @property
    def m(self) -> int:
        return self.utilities.shape[2]

    @property
    def counts(self) -> np.ndarray:
        """K_i [N]: valid responses per prompt."""
        return self.mask.sum(axis=1)

    def take(self, prompts: np.ndarray) -> ScoredTable:
        """The table restricted to (or resampled at) the given prompt indices [n].

        Rows of a valid table need no re-validation, and the cached derived arrays are indexed rather than
        rebuilt: a bootstrap calls this once per resample.
        """
        out = object.__new__(ScoredTable)
        for name in ("reward", "utilities", "mask"):
            object.__setattr__(out, name, getattr(self, name)[prompts])
        out.__dict__["planes"] = np.ascontiguousarray(self.planes[:, prompts])
        out.__dict__["_masked_reward"] = self._masked_reward[prompts]
        return out


def reference_mean(table: ScoredTable) -> np.ndarray:
    """Ē_ref g [m]: mean over prompts of the per-prompt sample mean of each utility."""
    return (table.planes.sum(axis=2) / table.counts).mean(axis=1)  # entries outside the mask are 0


def _spec(value: MarginSpec, m: int, name: str) -> np.ndarray:
    """A margin/threshold spec as a float vector [m], NaN where the constraint uses the other form."""
    if value is None:
        return np.full(m, np.nan)
    arr = np.asarray([np.nan if v is None else v for v in np.atleast_1d(np.asarray(value, dtype=object))])
    arr = arr.astype(np.float64)
    if arr.size == 1 and m > 1:
        arr = np.full(m, arr[0])
    if arr.shape != (m,):
        raise ValueError(f"{name} has {arr.size} entries for m = {m} constraints")
    return arr


def thresholds(table: ScoredTable, margin: MarginSpec = None, threshold: MarginSpec = None) -> np.ndarray:
    """τ [m]: per constraint either τ_j = Ē_ref g_j + b_j (margin b_j) or τ_j = threshold_j (absolute).

    ``margin``/``threshold``: a scalar (every constraint), an [m] vector, or a sequence with None where the
    constraint takes the other form. Exactly one form must be given for each constraint.
    """
    b = _spec(margin, table.m, "margin")
    t = _spec(threshold, table.m, "threshold")
    both, neither = ~np.isnan(b) & ~np.isnan(t), np.isnan(b) & np.isnan(t)
    if both.any() or neither.any():
        bad = int(np.flatnonzero(both | neither)[0])
        raise ValueError(f"constraint {bad} needs exactly one of a margin or an absolute threshold")
    return np.where(np.isnan(b), t, reference_mean(table) + np.nan_to_num(b))


def tilt(table: ScoredTable, beta: float, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt log-normaliser and tilted weights at λ [m].

    Returns (lse [N] = logsumexp_k (r_ik + λᵀg_ik)/β − log K_i,  w [N,K] = softmax over valid k).
    """
    lam = np.asarray(lam, dtype=np.float64).reshape(table.m)
    # In place on one [N,K] buffer: fresh megabyte temporaries cost more than the arithmetic here.
    z = np.tensordot(lam, table.planes, axes=1)
    z += table._masked_reward
    z /= beta
    z_max = z.max(axis=1, keepdims=True)  # finite: every prompt has a valid response
    z -= z_max
    w = np.exp(z, out=z)  # masked entries give exp(−inf) = 0
    total = w.sum(axis=1, keepdims=True)
    w /= total
    return (z_max + np.log(total))[:, 0] - table._log_counts, w


def dual_value(table: ScoredTable, beta: float, lam: np.ndarray, tau: np.ndarray) -> float:
    """D̂(λ) = β (1/N) Σ_i [logsumexp_k z_ik − log K_i] − λᵀτ."""
    lse, _ = tilt(table, beta, lam)
    return float(beta * lse.mean() - np.dot(lam, tau))


def dual_gradient(table: ScoredTable, beta: float, lam: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """∇D̂(λ) [m] = (1/N) Σ_i Σ_k w_ik g_ik − τ."""
    _, w = tilt(table, beta, lam)
    return np.einsum("jnk,nk->j", table.planes, w) / table.n_prompts - tau


def dual_terms(
    table: ScoredTable, beta: float, lam: np.ndarray, tau: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """(D̂(λ), ∇D̂(λ) [m], ∇²D̂(λ) [m,m]) from one pass over the table.

    The Hessian is the exact weighted covariance, computed on per-prompt centred utilities so that it stays
    accurate when the weights concentrate on one response (a raw second moment minus the squared mean
    would cancel catastrophically there).
    """
    lam = np.asarray(lam, dtype=np.float64)
    lse, w = tilt(table, beta, lam)
    n = table.n_prompts
    g_bar = np.einsum("jnk,nk->jn", table.planes, w)  # E_{w_i} g_i, [m,N]
    centred = [plane - mean[:, None] for plane, mean in zip(table.planes, g_bar)]
    hess = np.empty((table.m, table.m))
    for a in range(table.m):
        for b in range(a, table.m):
            cov_ab = np.einsum("nk,nk,nk->", w, centred[a], centred[b])
            hess[a, b] = hess[b, a] = cov_ab / (beta * n)
    value = float(beta * lse.mean() - np.dot(lam, tau))
    return value, g_bar.mean(axis=1) - tau, hess


def dual_hessian(table: ScoredTable, beta: float, lam: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """∇²D̂(λ) [m,m] = (1/(βN)) Σ_i Cov_{w_i}(g_i) (independent of τ)."""
    return dual_terms(table, beta, lam, tau)[2]


def kkt_residual(lam: np.ndarray, grad: np.ndarray) -> float:
    """max_j |λ_j − max(λ_j − ∇_j, 0)| = max_j |min(λ_j, ∇_j)|: zero exactly at a KKT point of min_{λ≥0} D."""
    return float(np.max(np.abs(np.minimum(lam, grad))))


@dataclass(frozen=True)
class DualSolution:
    """Result of :func:`solve_dual`. lam, grad, tau: [m]. When ``feasible`` is False, lam and grad are NaN
    and dual_value is −inf or NaN (no λ minimises D̂; see :func:`solve_dual`)."""

    lam: np.ndarray
    dual_value: float
    grad: np.ndarray
    iterations: int
    converged: bool
    feasible: bool
    message: str
    tau: np.ndarray
    kkt_residual: float
    method: str


def _best_response_mean(table: ScoredTable) -> np.ndarray:
    """(1/N) Σ_i max_k g_ik [m]: the most any policy on the sample can reach, one constraint at a time."""
    return np.where(table.mask, table.planes, -np.inf).max(axis=2).mean(axis=1)


def _infeasible(table: ScoredTable, tau: np.ndarray, v_star: float, method: str, iters: int) -> DualSolution:
    best = _best_response_mean(table)
    per_constraint = "; ".join(
        f"constraint {j}: the best response of every prompt gives {best[j]:.4g}, τ = {tau[j]:.4g}"
        for j in range(len(tau))
    )
    kind = "infeasible" if v_star < 0 else "infeasible in the limit (only a deterministic policy reaches it)"
    msg = (
        f"{kind} on this sample: no tilt of the sampled responses meets every constraint strictly "
        f"(best worst-case slack {v_star:.4g} ≤ 0; {per_constraint}). Lower the margin/threshold "
        f"or sample more responses per prompt."
    )
    nan = np.full(table.m, np.nan)
    value = -np.inf if v_star < 0 else np.nan
    return DualSolution(nan, value, nan, iters, False, False, msg, tau, np.nan, method)


def solve_dual(
    table: ScoredTable,
    beta: float,
    margin: MarginSpec = None,
    threshold: MarginSpec = None,
    *,
    method: str = "newton",
    lam0: np.ndarray | None = None,
    tol: float = 1e-9,
    max_iter: int = 100,
    pgd_step: float = 2.0,
) -> DualSolution:
    """λ* = argmin_{λ ≥ 0} D̂(λ) for the constraints E_π g_j ≥ τ_j (τ from :func:`thresholds`).

    method "newton": projected Newton with the exact Hessian, from λ0 (default 0), to KKT residual ≤ tol.
    method "pgd": CAN's reference projected gradient descent (λ0 = 1, step ``pgd_step``, ≤ 200 iterations,
    halve-and-restart); it stops on |Δλ| < 1e-5 and counts as converged only if the KKT residual is then
    ≤ 1e-4 (after many halvings the step is too small for |Δλ| to mean anything).

    Feasibility, with v* of :func:`~ray_align.dual.solvers.strict_feasibility_margin`: a constraint that
    the best response of every prompt cannot reach on its own (v* < 0) is refused before solving; a
    converged solve is a KKT point and so is accepted even without a strictly feasible point (e.g. λ* = 0
    when π_0 meets the constraint with equality), unless λ_j > 0 on a constraint only the best responses
    reach (v*_j = 0); a solve that diverges or stalls is declared infeasible when v* ≤ 0 (the LP for m > 1
    runs only then). Infeasible results carry NaN λ and grad, and dual_value −inf (strictly infeasible:
    D̂ is unbounded below) or NaN (boundary: the infimum is not attained).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    tau = thresholds(table, margin, threshold)
    tiny = 1e-12 * (1.0 + float(np.max(np.abs(table.planes))) + float(np.max(np.abs(tau))))
    reach = _best_response_mean(table) - tau  # v* of each constraint alone: exact for m = 1
    if (v := float(np.min(reach))) < -tiny:
        return _infeasible(table, tau, v, method, 0)
    if method == "newton":
        start = np.zeros(table.m) if lam0 is None else np.asarray(lam0, dtype=np.float64)
        run = projected_newton(
            lambda lam: dual_terms(table, beta, lam, tau),
            lambda lam: dual_value(table, beta, lam, tau),
            start,
            tol=tol,
            max_iter=max_iter,
        )
    elif method == "pgd":
        run = projected_gradient(lambda lam: dual_gradient(table, beta, lam, tau), table.m, step=pgd_step)
    else:
        raise ValueError(f"method must be 'newton' or 'pgd', got {method!r}")
    if run.converged and np.any((reach <= tiny) & (run.lam > 0)):
        # A binding constraint that only the best responses meet: the gradient vanishes as λ → ∞, so the
        # KKT test passed at some large λ that is no minimiser.
        return _infeasible(table, tau, 0.0, method, run.iterations)
    if not run.converged:
        v = strict_feasibility_margin(table.utilities - tau, table.mask)
        if v <= tiny:
            return _infeasible(table, tau, max(v, 0.0) if v > -tiny else v, method, run.iterations)
    value, grad, _ = dual_terms(table, beta, run.lam, tau)
    residual = kkt_residual(run.lam, grad)
    return DualSolution(
        run.lam, value, grad, run.iterations, run.converged, True, run.message, tau, residual, method
    )


def cap_solution(solution: DualSolution, table: ScoredTable, beta: float, lam_max) -> DualSolution:
    """The solution with λ clipped to λ_max entrywise (the bound the iterative rules clip to), and D̂, ∇D̂ and the
    KKT residual at the clipped λ: ∇_j < 0 there is constraint j's predicted shortfall. For m = 1 the clipped
    λ is argmin of D̂ over [0, λ_max] (D̂ is convex); returned unchanged when λ ≤ λ_max."""
    cap = np.broadcast_to(np.asarray(lam_max, dtype=np.float64), solution.lam.shape)
    if not np.any(solution.lam > cap):
        return solution
    lam = np.minimum(solution.lam, cap)
    value, grad, _ = dual_terms(table, beta, lam, solution.tau)
    message = f"{solution.message}; capped at λ_max {cap.tolist()}"
    return replace(
        solution, lam=lam, dual_value=value, grad=grad, kkt_residual=kkt_residual(lam, grad), message=message
    )
