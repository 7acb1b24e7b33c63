"""The dual-variable coordinator: the single owner of λ (a vector, one entry per constraint).

Iterative methods call ``update(estimate)`` once per step (the configured rule from ray_align.dual.rules);
one-shot methods call ``solve(table, ...)`` (the CAN solver). Everyone else asks ``lam()``; nothing keeps a copy
that could drift. The full history is kept and checkpointed with the run, so a resumed run continues the exact
trajectory. A plain class: the driver turns it into a Ray actor (actors/remote.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ray_align.dual import rules
from ray_align.dual.can import DualSolution, ScoredTable, cap_solution, solve_dual
from ray_align.errors import UserError
from ray_align.run_dir import atomic_write_text

if TYPE_CHECKING:
    from ray_align.config.schema import DualConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DualRuleSpec:
    """The coordinator's slice of the job config (``dual`` section) plus the constraint names."""

    names: tuple[str, ...]
    rule: str = "safe_rlhf"  # safe_rlhf | projected | pid | constant
    lam_init: float = 1.0
    lam_max: float = 5.0
    lr: float = 0.1
    thresholds: tuple[float, ...] = ()  # cost form (safe_rlhf, pid); one per constraint, default 0
    window: int = 128
    delay_steps: int = 0
    pid: dict[str, float] = field(default_factory=dict)  # the gains set; an absent ki is lr (dual ascent)

    @classmethod
    def from_config(cls, dual: DualConfig, names: Sequence[str]) -> DualRuleSpec:
        """The spec of the job's ``dual`` section for constraints ``names`` (the scorers' order). A constraint
        without a threshold (margin form) gets d = 0: only the cost-form rules read thresholds."""
        by_name = {c.name: c for c in dual.constraints}
        return cls(
            names=tuple(names),
            rule=dual.rule,
            lam_init=dual.lam_init,
            lam_max=dual.lam_max,
            lr=dual.lr,
            thresholds=tuple((by_name[n].threshold or 0.0) if n in by_name else 0.0 for n in names),
            window=dual.window,
            delay_steps=dual.delay_steps,
            pid=dual.pid.model_dump(exclude_none=True),  # an unset ki falls back to lr in build()
        )

    def build(self) -> rules.DualRule:
        d = np.asarray(self.thresholds or [0.0] * len(self.names), dtype=np.float64)
        if self.rule == "safe_rlhf":
            return rules.safe_rlhf_log_lambda(
                self.lr, self.lam_init, self.lam_max, d, self.window, self.delay_steps
            )
        if self.rule == "projected":
            return rules.projected_dual_descent(self.lr, self.lam_init, self.lam_max)
        if self.rule == "pid":
            gains = {"kp": 0.0, "ki": self.lr, "kd": 0.0, **self.pid}
            return rules.pid_lagrangian(lam_init=self.lam_init, lam_max=self.lam_max, threshold=d, **gains)
        if self.rule == "constant":
            return rules.constant(self.lam_init)
        raise ValueError(f"dual.rule must be one of safe_rlhf, projected, pid, constant; got {self.rule!r}")


def _jsonable(x: Any) -> Any:
    return x.tolist() if isinstance(x, np.ndarray) else x


class DualCoordinator:
    """Owns λ [m]: applies the update rule, solves the one-shot dual, records and checkpoints the history."""

    def __init__(self, spec: DualRuleSpec):
        self.spec = spec
        self._rule = spec.build()
        self._state = self._rule.init(len(spec.names))
        self._history: list[dict[str, Any]] = [{"step": 0, "event": "init", "lam": self.lam().tolist()}]

    def ready(self) -> bool:
        return True

    def lam(self) -> np.ndarray:
        return rules.current_lambda(self._state)

    def named_lam(self) -> dict[str, float]:
        return dict(zip(self.spec.names, self.lam().tolist()))

    def update(self, estimate: np.ndarray) -> np.ndarray:
        """One rule step. ``estimate``: per-episode costs [n, m] for safe_rlhf, J_C [m] for pid, slack u [m] for projected."""
        estimate = np.asarray(estimate, dtype=np.float64)
        if not np.all(np.isfinite(estimate)):
            raise ValueError(
                f"dual estimate contains NaN or inf: {estimate.tolist()}; check the scorers' outputs"
            )
        lam, self._state = self._rule.update(self._state, estimate)
        if estimate.ndim == 2:  # episodes [n, m]; none in a repeated step (ppo.lambda_updates_per_rollout)
            summary = estimate.mean(axis=0).tolist() if len(estimate) else None
        else:
            summary = estimate.tolist()
        step = self._history[-1]["step"] + 1
        self._history.append({"step": step, "event": "update", "lam": lam.tolist(), "estimate": summary})
        return lam

    def solve(
        self, table: ScoredTable, beta: float, *, margin=None, threshold=None, strict: bool = True, **kwargs
    ) -> DualSolution:
        """CAN: λ* from a scored reference sample. λ becomes min(λ*, dual.lam_max) (the warm start of CAID, the
        target of MoCAN); the returned solution is the one at that λ, and a cap is logged as a warning.

        A solve that did not converge raises when ``strict`` (one-shot methods train once at this λ); with
        ``strict=False`` (CAID's warm start, which its dual iterations correct) it warns and keeps the iterate.
        """
        result = solve_dual(table, beta, margin=margin, threshold=threshold, **kwargs)
        if not result.feasible:  # the margins the job asks for: the user's to change
            raise UserError(f"dual.constraints: {result.message}")
        if not result.converged:
            problem = (
                f"the CAN dual solve did not converge ({result.message}, KKT residual {result.kkt_residual:.3g} "
                f"after {result.iterations} iterations), so λ = {result.lam.tolist()} is not λ*"
            )
            if strict:
                raise ValueError(
                    f"{problem}; sample more prompts or responses (can.num_prompts, can.samples_per_prompt) or "
                    "inspect the scored table with `ray-align dual`"
                )
            logger.warning("%s; continuing from it", problem)
        lam_star = result.lam
        result = cap_solution(result, table, beta, self.spec.lam_max)
        capped = [n for n, a, b in zip(self.spec.names, lam_star, result.lam) if a > b]
        info = {"dual_value": result.dual_value, "iterations": result.iterations}
        info["converged"] = bool(result.converged)
        if capped:
            logger.warning(
                "λ* %s exceeds dual.lam_max = %g for %s: λ is capped there, so the prediction falls short of the "
                "constraint; raise dual.lam_max to use λ*",
                lam_star.tolist(), self.spec.lam_max, capped,
            )  # fmt: skip
            info["lam_star"] = lam_star
        self.set_lam(result.lam, event="solve", **info)
        return result

    def set_lam(self, lam: np.ndarray, event: str = "set", **info: Any) -> None:
        """Replace λ, keeping the rule's own state layout (log-space for safe_rlhf)."""
        lam = np.asarray(lam, dtype=np.float64)
        fields = self._state._asdict()
        if "log_lam" in fields:
            fields["log_lam"] = np.log(np.maximum(lam, 1e-12))
        else:
            fields["lam"] = lam.copy()
            if "integral" in fields:  # PID: the integral term carries λ between updates
                fields["integral"] = lam.copy()
        self._state = type(self._state)(**fields)
        step = self._history[-1]["step"]
        self._history.append(
            {"step": step, "event": event, "lam": lam.tolist(), **{k: _jsonable(v) for k, v in info.items()}}
        )

    def history(self) -> list[dict[str, Any]]:
        return [dict(h) for h in self._history]

    def save(self, path: str) -> str:
        """Write state and history as JSON atomically (temp file + rename)."""
        payload = {
            "spec": self.spec.__dict__,
            "state": rules.state_to_dict(self._state),
            "history": self._history,
        }
        # atomic, and with the permissions of the run's other files (run_dir.atomic_write_text)
        return str(atomic_write_text(path, json.dumps(payload, default=_jsonable)))

    def restore(self, path: str) -> np.ndarray:
        payload = json.loads(Path(path).read_text())
        self._state = rules.state_from_dict(payload["state"])
        self._history = payload["history"]
        return self.lam()
