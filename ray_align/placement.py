"""Placement plans: a resources file (clusters/*.yaml) turned into placement-group bundles, without Ray.

A resources file says, per role, how many instances run and what each needs, which roles share devices
(``colocate``), and the placement-group strategy. ``plan_placement`` maps every (role, index) to a bundle and the
share of that bundle it asks for. ``actors/placement.py`` hands the bundles to Ray.

Colocation: roles listed together in one ``colocate`` group share bundles index by index (trainer rank i and
engine i sit in bundle i). The bundle gets the max of the members' GPU needs, and each member asks for an equal
fraction of it, which is how Ray lets two actors share one GPU. CPUs add up.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class ResourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    roles: dict[Literal[ROLES], RoleResources] = Field(default_factory=dict)  # type: ignore[valid-type]
    colocate: list[list[Literal[ROLES]]] = Field(default_factory=list)  # type: ignore[valid-type]

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
        return self

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

    def slot(self, role: str, index: int = 0) -> Slot:
        try:
            return self.slots[(role, index)]
        except KeyError:
            raise KeyError(f"the placement has no {role} #{index}; add it under roles.{role}.count") from None

    def count(self, role: str) -> int:
        return sum(1 for r, _ in self.slots if r == role)


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
            bundles.append(bundle)
            for r in group:
                share = gpus / len(group) if resources.role(r).gpus > 0 else 0.0
                slots[(r, i)] = Slot(r, i, len(bundles) - 1, resources.role(r).cpus, share)
    return PlacementPlan(resources.strategy, bundles, slots)


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
    return ResourcesFile(strategy=full.strategy, roles=used, colocate=groups)
