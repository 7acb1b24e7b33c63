"""Placement plans: a resources file (clusters/*.yaml) turned into placement-group bundles, without Ray.

A resources file says, per role, how many instances run and what each needs, which roles share devices
(``colocate``), and the placement-group strategy. ``plan_placement`` maps every (role, index) to a bundle and the
share of that bundle it asks for. ``actors/placement.py`` hands the bundles to Ray.

Colocation: roles listed together in one ``colocate`` group share bundles index by index (trainer rank i and
engine i sit in bundle i). The bundle gets the max of the members' GPU needs, and each member asks for an equal
fraction of it, which is how Ray lets two actors share one GPU. CPUs add up. Ray's fractions are only
bookkeeping: on the device the two share memory, so with ``engine_sleep: true`` the vLLM engines are built with
sleep mode and free their GPU memory while the trainer ranks compute (the hybrid-engine pattern), waking for
each weight sync and generation.

``resources`` on a role: further Ray resources each instance's bundle reserves, e.g. a custom resource that only
some nodes have (``ray start --resources='{"gpu_node": 8}'``), which pins the role to those nodes. Colocated
members' resources add up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from ray_align.config.schema import JobConfig

ROLES = ("trainer", "generator", "scorer", "reference", "critic", "coordinator")


class RoleResources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=1, ge=0)
    cpus: float = Field(default=1.0, ge=0.0)
    gpus: float = Field(default=0.0, ge=0.0)
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources per instance


class ResourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    roles: dict[Literal[ROLES], RoleResources] = Field(default_factory=dict)  # type: ignore[valid-type]
    colocate: list[list[Literal[ROLES]]] = Field(default_factory=list)  # type: ignore[valid-type]
    engine_sleep: bool = False  # vLLM sleep mode for engines colocated with trainer ranks on GPUs

    @model_validator(mode="after")
    def _colocation_is_consistent(self) -> ResourcesFile:
        seen: set[str] = set()
        for group in self.colocate:
            counts = {self.role(r).count for r in group}
            if len(counts) > 1:
                raise ValueError(
                    f"colocate {group}: colocated roles need the same count, got {sorted(counts)}"
                )
            if seen & set(group):
                raise ValueError(f"colocate: a role appears in two groups: {sorted(seen & set(group))}")
            seen |= set(group)
        if self.engine_sleep and not self.engines_share_trainer_gpus():
            raise ValueError(
                "engine_sleep: true needs the generator colocated with the trainer "
                "(colocate: [[trainer, generator]]) on GPUs (gpus > 0 for both); vLLM's sleep mode is GPU-only"
            )
        return self

    def engines_share_trainer_gpus(self) -> bool:
        shared = any({"trainer", "generator"} <= set(group) for group in self.colocate)
        return shared and self.role("trainer").gpus > 0 and self.role("generator").gpus > 0

    def role(self, name: str) -> RoleResources:
        return self.roles.get(name, RoleResources(count=0))


@dataclass(frozen=True)
class Slot:
    """Where one actor runs: its bundle and the resources it asks of that bundle."""

    role: str
    index: int
    bundle: int
    cpus: float
    gpus: float


@dataclass(frozen=True)
class PlacementPlan:
    strategy: str
    bundles: list[dict[str, float]]
    slots: dict[tuple[str, int], Slot]
    engine_sleep: bool = False  # engines free their GPU memory while the colocated trainer ranks compute

    def slot(self, role: str, index: int = 0) -> Slot:
        try:
            return self.slots[(role, index)]
        except KeyError:
            raise KeyError(f"the placement has no {role} #{index}; add it under roles.{role}.count") from None

    def count(self, role: str) -> int:
        return sum(1 for r, _ in self.slots if r == role)

    def share_gpus(self, role: str, other: str) -> bool:
        """Whether an instance of ``role`` and one of ``other`` use the same bundle's GPU (colocated)."""
        gpu_bundles = lambda name: {s.bundle for (r, _), s in self.slots.items() if r == name and s.gpus > 0}  # noqa: E731
        return bool(gpu_bundles(role) & gpu_bundles(other))


def plan_placement(resources: ResourcesFile) -> PlacementPlan:
    bundles: list[dict[str, float]] = []
    slots: dict[tuple[str, int], Slot] = {}
    grouped = {role: group for group in resources.colocate for role in group}
    done: set[str] = set()
    for role in ROLES:
        if role in done or resources.role(role).count == 0:
            continue
        group = [r for r in grouped.get(role, [role]) if resources.role(r).count > 0]
        done |= set(group)
        for i in range(resources.role(role).count):
            gpus = max(resources.role(r).gpus for r in group)
            cpus = sum(resources.role(r).cpus for r in group)
            bundle: dict[str, float] = {"CPU": cpus}
            if gpus > 0:
                bundle["GPU"] = gpus
            for r in group:
                for name, amount in resources.role(r).resources.items():
                    bundle[name] = bundle.get(name, 0.0) + amount
            bundles.append(bundle)
            for r in group:
                share = gpus / len(group) if resources.role(r).gpus > 0 else 0.0
                slots[(r, i)] = Slot(r, i, len(bundles) - 1, resources.role(r).cpus, share)
    return PlacementPlan(resources.strategy, bundles, slots, resources.engine_sleep)


def load_resources(
    path: str | Path,
    *,
    trainer_ranks: int | None = None,
    engines: int | None = None,
    strategy: str | None = None,
) -> ResourcesFile:
    """Read a resources file; the job config may override the trainer/engine counts and the strategy."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"resources file not found: {path} (see clusters/ for examples)")
    raw = yaml.safe_load(path.read_text()) or {}
    roles = raw.setdefault("roles", {})
    if trainer_ranks is not None:
        roles.setdefault("trainer", {})["count"] = trainer_ranks
    if engines is not None:
        roles.setdefault("generator", {})["count"] = engines
    if strategy is not None:
        raw["strategy"] = strategy
    try:
        return ResourcesFile.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{path}: invalid resources file: {problems}") from None


# Without a resources file: one of each role the algorithm needs, one logical CPU each.
_DEFAULT_ROLE = {"coordinator": RoleResources(count=1, cpus=0.1)}


def resources_for(config: JobConfig, roles: Sequence[str]) -> ResourcesFile:
    """The resources file of the job (or one bundle per needed role), restricted to the roles used."""
    p = config.placement
    if p.file:
        full = load_resources(p.file, trainer_ranks=p.trainer_ranks, engines=p.engines, strategy=p.strategy)
    else:
        counts = {"trainer": p.trainer_ranks or 1, "generator": p.engines or 1}
        full = ResourcesFile(
            strategy=p.strategy or "PACK",
            roles={
                r: _DEFAULT_ROLE.get(r, RoleResources(count=counts.get(r, 1), cpus=1.0))
                for r in (*roles, "coordinator")
            },
        )
    used = {r: full.role(r) for r in (*roles, "coordinator") if full.role(r).count > 0}
    groups = [g for g in ([r for r in g if r in used] for g in full.colocate) if len(g) > 1]
    out = ResourcesFile(strategy=full.strategy, roles=used, colocate=groups)
    # Sleep mode only matters when this run has both engines and trainer ranks on the shared GPUs.
    out.engine_sleep = full.engine_sleep and out.engines_share_trainer_gpus()
    return out


def place_on_nodes(plan: PlacementPlan, nodes: Sequence[Mapping[str, float]]) -> list[int] | None:
    """A node index per bundle such that every node's resources cover its bundles, or None if none is found.

    ``nodes``: each node's resources (``{"CPU": 8, "GPU": 4, ...}``). First fit, largest bundles (by GPUs, then
    CPUs) first; STRICT_PACK needs one node for all, STRICT_SPREAD a different node per bundle. Used to check a
    cluster definition against the job it is meant for, before asking Ray.
    """
    free = [dict(n) for n in nodes]
    order = sorted(
        range(len(plan.bundles)), key=lambda b: (-plan.bundles[b].get("GPU", 0.0), -plan.bundles[b]["CPU"])
    )
    where: list[int] = [-1] * len(plan.bundles)
    used: set[int] = set()

    def fits(bundle: Mapping[str, float], node: Mapping[str, float]) -> bool:
        return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())

    for b in order:
        bundle = plan.bundles[b]
        candidates = range(len(free))
        if plan.strategy == "STRICT_PACK" and used:
            candidates = range(next(iter(used)), next(iter(used)) + 1)
        elif plan.strategy == "STRICT_SPREAD":
            candidates = [n for n in candidates if n not in used]
        node = next((n for n in candidates if fits(bundle, free[n])), None)
        if node is None:
            return None
        for k, v in bundle.items():
            free[node][k] = free[node].get(k, 0.0) - v
        where[b] = node
        used.add(node)
    return where
