"""A sweep's plan: the base job, its points (each a full job config with its own run folder), and how they run.

Everything here is checked before Ray starts: the grid's keys and values (each value is validated as the
`run` override it is), the algorithm, and which keys a shared part may span.

Modes:

* ``shared`` (MoCAN, PeCAN, SACPO): what every point would compute identically runs once (`SHARED`), then
  each point does only its own part. This needs every grid key to leave the shared part unchanged.
* ``independent`` (CAID, PPO-Lagrangian, and a one-shot method whose grid changes its shared part): every
  point is a whole run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray_align.config import ConfigError, JobConfig, load_config
from ray_align.errors import UserError
from ray_align.placement import ResourcesFile, RoleResources, plan_placement, resources_for
from ray_align.sweep.grid import Axis, parse_grid
from ray_align.sweep.grid import expand as expand_axes

MERGE_Q = "sacpo.merge_q"
INDEPENDENT = ("caid", "ppo_lag")
# What the one-shot methods compute once for every point, and the keys a point may change without touching it.
SHARED = {
    "mocan": (
        "π_ref's scored samples",
        ("dual", "can.beta", "can.label", "training", "dpo", "seed", "logging"),
    ),
    "pecan": (
        "DPO_H, DPO_S and π_ref's implicit scores",
        ("dual", "can.label", "can.pecan_label", "logging"),
    ),
    "sacpo": ("SACPO's step 1", ()),  # depends on the step order: sacpo_point_keys
}
SUPPORTED = (*SHARED, *INDEPENDENT)
# Keys a sweep sets itself (each point's folder) or that must be one for all points (one Ray connection).
NOT_GRIDDED = ("output_dir", "name", "ray")


def sacpo_point_keys(config: JobConfig) -> tuple[str, ...]:
    """Step 2's own settings (β/λ for the safety step after helpfulness; β for helpfulness after safety)."""
    if config.sacpo.first == "helpfulness":
        return ("sacpo.beta_over_lambda", "sacpo.loss", MERGE_Q, "logging")
    return ("sacpo.beta", "sacpo.helpfulness_loss", MERGE_Q, "logging")


def point_keys(config: JobConfig) -> tuple[str, ...]:
    if config.algorithm == "sacpo":
        return sacpo_point_keys(config)
    return SHARED[config.algorithm][1]


def under(key: str, prefixes: Sequence[str]) -> bool:
    """Whether the dotted ``key`` is one of ``prefixes`` or lies inside one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@dataclass
class SweepPoint:
    name: str
    values: dict[str, Any]
    config: JobConfig  # output_dir = <sweep>/points/<name>

    @property
    def folder(self) -> Path:
        return Path(self.config.output_dir)


@dataclass
class SweepPlan:
    job: str | None
    axes: list[Axis]
    base: JobConfig  # the job without the grid; output_dir = <sweep>/shared
    root: Path
    points: list[SweepPoint]
    mode: str  # "shared" | "independent"
    reason: str = ""  # why a one-shot method runs independent points
    merge_q: tuple[float, ...] = field(default=())  # SACPO's q axis: every point merges at each q

    @property
    def algorithm(self) -> str:
        return self.base.algorithm


def _override_keys(overrides: Sequence[str]) -> set[str]:
    return {o.partition("=")[0].strip() for o in overrides}


def sweep_root(base: JobConfig, overrides: Sequence[str]) -> Path:
    """``output_dir=`` on the command line names the sweep folder; otherwise ``<job's output_dir>-sweep``, so a
    sweep never lands in the folder of the job's own run."""
    if "output_dir" in _override_keys(overrides):
        return Path(base.output_dir)
    return Path(f"{str(base.output_dir).rstrip('/')}-sweep")


def _load(job: str | None, overrides: Sequence[str], what: str) -> JobConfig:
    try:
        return load_config(job, overrides)
    except ConfigError as e:
        raise UserError(f"sweep: {what}: {_one_line(str(e))}") from None


def _one_line(message: str) -> str:
    """The config's "invalid job configuration:" list as one line: "key: problem; key: problem"."""
    _, _, items = message.partition("\n")
    if not items:
        return message
    return "; ".join(line.strip().removeprefix("- ") for line in items.splitlines() if line.strip())


def _check_axes(job: str | None, overrides: Sequence[str], axes: Sequence[Axis]) -> None:
    """Every key exists and every value has its type: each is loaded as the `run` override it stands for."""
    given = _override_keys(overrides)
    for axis in axes:
        if under(axis.key, NOT_GRIDDED):
            raise UserError(f"sweep: --grid {axis.key}: a sweep cannot vary {axis.key.split('.')[0]}")
        if axis.key in given:
            raise UserError(f"sweep: {axis.key} is given both as an override and as --grid; keep one")
        for text in axis.texts:
            value = f"[{text}]" if axis.key == MERGE_Q else text
            _load(job, [*overrides, f"{axis.key}={value}"], f"--grid {axis.key}={text}")


def _mode(base: JobConfig, axes: Sequence[Axis]) -> tuple[str, str]:
    if base.algorithm in INDEPENDENT:
        return "independent", f"{base.algorithm} points share nothing: each is a whole run"
    shared, keys = SHARED[base.algorithm][0], point_keys(base)
    changing = [a.key for a in axes if not under(a.key, keys)]
    if changing:
        return "independent", f"{changing[0]} changes {shared}, which the points would otherwise share"
    return "shared", ""


def build_plan(job: str | None, overrides: Sequence[str], grid: Sequence[str]) -> SweepPlan:
    """The validated plan; a UserError (or ConfigError) for anything a user must fix."""
    axes = parse_grid(grid)
    base = _load(job, overrides, "the job")
    if base.algorithm not in SUPPORTED:
        raise UserError(
            f"sweep: algorithm {base.algorithm!r} is not supported; a sweep runs {', '.join(SUPPORTED)}"
        )
    _check_axes(job, overrides, axes)
    q_axis = next((a for a in axes if a.key == MERGE_Q), None)
    point_axes = [a for a in axes if a is not q_axis]
    q_override = [f"{MERGE_Q}=[{', '.join(q_axis.texts)}]"] if q_axis else []
    root = sweep_root(base, overrides)
    points = []
    for p in expand_axes(point_axes) if point_axes else []:
        config = _load(job, [*overrides, *p.overrides, *q_override], f"point {p.name}")
        points.append(_point(config, root, p.name, p.values))
    if not points:  # only SACPO's q axis: one run whose merges are the points
        config = _load(job, [*overrides, *q_override], "the job")
        points.append(_point(config, root, "merges", {}))
    if base.algorithm == "pecan":
        _check_pecan(points)
    mode, reason = _mode(base, axes)
    shared = base.model_copy(update={"output_dir": str(root / "shared")})
    merge_q = tuple(float(q) for q in q_axis.values) if q_axis else ()
    return SweepPlan(job, list(axes), shared, root, points, mode, reason, merge_q)


def _point(config: JobConfig, root: Path, name: str, values: dict[str, Any]) -> SweepPoint:
    folder = root / "points" / name
    config = config.model_copy(update={"output_dir": str(folder), "name": f"{config.name}-{name}"})
    return SweepPoint(name, values, config)


def _check_pecan(points: Sequence[SweepPoint]) -> None:
    from ray_align.algorithms.pecan import pecan_margin  # imports transformers: only for PeCAN sweeps

    for p in points:
        try:
            pecan_margin(p.config)
        except ValueError as e:
            raise UserError(f"sweep: point {p.name}: {e}") from None


def role_resources(config: JobConfig, roles: Sequence[str]) -> ResourcesFile:
    """The job's placement for ``roles``; a role its resources file lacks gets one CPU (as the evaluation's)."""
    found = resources_for(config, roles)
    filled = dict(found.roles)
    for role in roles:
        filled.setdefault(role, RoleResources(count=1, cpus=1.0))
    return ResourcesFile(strategy=found.strategy, roles=filled, colocate=found.colocate)


def lane_resources(config: JobConfig) -> ResourcesFile:
    """One point's trainer group: the trainer role of the job's placement in a placement group of its own
    (colocation with the engines does not carry over: the engines serve every point)."""
    found = role_resources(config, ("trainer",))
    return ResourcesFile(strategy=found.strategy, roles={"trainer": found.role("trainer")})


def bundle_total(resources: ResourcesFile) -> dict[str, float]:
    """What a placement asks for in all: {"CPU": n, "GPU": g}."""
    total: dict[str, float] = {}
    for bundle in plan_placement(resources).bundles:
        for key, value in bundle.items():
            total[key] = total.get(key, 0.0) + value
    return total


def lanes_that_fit(available: Mapping[str, float], need: Mapping[str, float]) -> int:
    """How many placements of ``need`` fit in ``available`` at once (Ray's free resources)."""
    counts = [math.floor(available.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return max(0, min(counts)) if counts else 0
