"""Turn the ``models`` section into concrete checkpoints (building the tiny family when asked)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ray_align.config.schema import ModelsConfig


@dataclass(frozen=True)
class ConstraintScorer:
    """One constraint: a cost model checkpoint or a "module:function" (kind says cost or utility)."""

    name: str
    path: str | None
    function: str | None
    kind: str = "cost"


@dataclass(frozen=True)
class ResolvedModels:
    policy: str
    reference: str
    reward: str | None
    reward_function: str | None
    constraints: tuple[ConstraintScorer, ...]
    critic: str | None
    cost_critic: str | None

    @property
    def constraint_names(self) -> list[str]:
        return [c.name for c in self.constraints]


def tiny_cache_dir(seed: int) -> Path:
    base = Path(os.environ.get("RAY_ALIGN_CACHE", Path.home() / ".cache" / "ray-align"))
    return base / f"tiny-models-seed{seed}"


def resolve_models(
    models: ModelsConfig, seed: int = 0, tiny_root: str | Path | None = None
) -> ResolvedModels:
    from ray_align.models.tiny import TinySpec, build_tiny_models  # torch: only when models are resolved

    tiny = None
    if models.tiny:
        tiny = build_tiny_models(tiny_root or tiny_cache_dir(seed), TinySpec(seed=seed))
    policy = models.policy or str(tiny.policy)
    reward = models.reward or (str(tiny.reward) if tiny and not models.reward_function else None)
    if models.costs:
        constraints = tuple(ConstraintScorer(c.name, c.path, c.function, c.kind) for c in models.costs)
    elif tiny is not None:
        constraints = (ConstraintScorer("safety", str(tiny.cost), None),)
    else:
        constraints = ()
    first_cost = next((c.path for c in constraints if c.path), None)
    return ResolvedModels(
        policy=policy,
        reference=models.reference or policy,
        reward=reward,
        reward_function=models.reward_function,
        constraints=constraints,
        critic=models.critic or (str(tiny.critic) if tiny else reward),
        cost_critic=models.cost_critic or (str(tiny.critic) if tiny else first_cost),
    )
