"""The algorithm and its roles, the placement, and the batch sizes: checks on the job's shape.

Nothing here imports a method module: those pull in torch and transformers, and the preflight must answer in
about a second. A method's roles are read from its source instead (``roles_of``).
"""

from __future__ import annotations

import ast
import glob
import importlib.util
import math
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ray_align.algorithms import MODULES, module_name
from ray_align.config import ConfigError, JobConfig
from ray_align.config.load import load_yaml, read_text_file
from ray_align.placement import ResourcesFile, plan_placement, resources_for
from ray_align.preflight.findings import Findings


def roles_of(algorithm: str, module: str | None = None) -> tuple[str, ...] | None:
    """The ``ROLES`` a method module declares (``module``, default MODULES[algorithm]), read from its source;
    None when no module implements it."""
    if module is None and algorithm not in MODULES:
        return None
    module = module or MODULES[algorithm]
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ROLES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError(f"{module} declares no ROLES")


def check_algorithm(config: JobConfig, found: Findings) -> tuple[str, ...] | None:
    roles = roles_of(config.algorithm, module_name(config))  # PeCAID (caid.form: preference) has no scorer
    if roles is None:
        found.problem(
            f"algorithm: '{config.algorithm}' is not implemented yet; choose one of {', '.join(sorted(MODULES))}"
        )
    return roles


def check_placement(config: JobConfig, roles: tuple[str, ...], found: Findings) -> ResourcesFile | None:
    """The resources the run will ask Ray for; problems when they cannot be read or can never be granted."""
    file = config.placement.file
    if file:
        try:
            load_yaml(read_text_file(Path(file), "placement.file"), f"placement.file {file}")
        except ConfigError as e:
            found.problem(f"{e} (see clusters/ for examples)")
            return None
    try:
        resources = resources_for(config, roles)
    except ValueError as e:
        found.problem(f"placement.file: {e}")
        return None
    missing = [r for r in roles if r not in resources.roles]
    if missing:
        found.problem(
            f"placement.file {file} has no {', '.join(missing)} (roles.<role>.count is 0 or unset), and "
            f"algorithm {config.algorithm} needs one of each of {', '.join(roles)}; add them to the file"
        )
    for role, res in resources.roles.items():
        if not (math.isfinite(res.cpus) and math.isfinite(res.gpus)):
            found.problem(f"placement.file {file}: roles.{role}: cpus and gpus must be finite numbers")
            return None
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:
        _fits_one_machine(config, resources, found)
    else:
        problem = unreachable_cluster(address)
        if problem:
            found.unverified(problem)  # `check` may run before the cluster is up; `run` cannot
    return resources


def unreachable_cluster(address: str, timeout_s: float = 3.0) -> str | None:
    """Why the Ray cluster at ``address`` cannot be reached (a TCP connect to its GCS or client port), or None.
    ray.init retries an unreachable GCS for about two minutes; this answers in seconds."""
    if address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port or (10001 if parsed.scheme == "ray" else 6379)
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        return (
            f"ray.address: cannot reach the Ray cluster at {address!r} ({reason}); start one with "
            "`ray start --head`, fix ray.address (or RAY_ADDRESS), or leave both unset to start a local instance"
        )


def local_gpus() -> int:
    """GPUs a local Ray instance would see: CUDA_VISIBLE_DEVICES when set (Ray's rule), else the devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def _fits_one_machine(config: JobConfig, resources: ResourcesFile, found: Findings) -> None:
    """A local instance is one node: bundles it cannot hold would wait for Ray's ten-minute placement timeout."""
    plan = plan_placement(resources)
    cpus = sum(b.get("CPU", 0.0) for b in plan.bundles)
    gpus = sum(b.get("GPU", 0.0) for b in plan.bundles)
    if config.ray.num_cpus is not None and cpus > config.ray.num_cpus:
        found.problem(
            f"ray.num_cpus ({config.ray.num_cpus}) is below the {cpus:g} CPUs the placement asks for; "
            "raise ray.num_cpus or leave it unset"
        )
    have = local_gpus()
    if gpus > have:
        found.problem(
            f"the placement asks for {gpus:g} GPUs, but this machine has {have} and the run starts a local "
            "Ray instance; use a CPU resources file (clusters/local_cpu.yaml) or join a cluster with ray.address"
        )
    if plan.strategy == "STRICT_SPREAD" and len(plan.bundles) > 1:
        found.problem(
            f"placement strategy STRICT_SPREAD puts each of {len(plan.bundles)} bundles on its own node, and a "
            "local Ray instance has one node; use PACK or SPREAD, or join a cluster with ray.address"
        )


def check_batch_sizes(
    config: JobConfig, roles: tuple[str, ...], resources: ResourcesFile, found: Findings
) -> None:
    """training.batch_size counts examples per optimiser step over all ranks of a trainer role; each rank takes
    an equal share in whole micro-batches of training.micro_batch_size examples."""
    t = config.training
    for role in ("trainer", "critic"):
        if role not in roles or role not in resources.roles:
            continue
        world = resources.roles[role].count
        ranks = f"{world} {role} rank{'s' if world > 1 else ''}"
        if t.batch_size % world:
            found.problem(
                f"training.batch_size ({t.batch_size}) does not divide over the {ranks}; "
                f"use a multiple of {world}"
            )
            continue
        per_rank = t.batch_size // world
        if t.micro_batch_size > per_rank:
            found.problem(
                f"training.micro_batch_size ({t.micro_batch_size}) is larger than the {per_rank} examples each "
                f"of the {ranks} gets per step (training.batch_size {t.batch_size}); use at most {per_rank}"
            )
        elif per_rank % t.micro_batch_size:
            found.problem(
                f"training.micro_batch_size ({t.micro_batch_size}) does not divide the {per_rank} examples "
                f"each of the {ranks} gets per step (training.batch_size {t.batch_size}); use a divisor of "
                f"{per_rank}"
            )
    if config.algorithm == "ppo_lag" and t.batch_size > config.ppo.rollout_batch_size:
        found.problem(
            f"training.batch_size ({t.batch_size}) is larger than ppo.rollout_batch_size "
            f"({config.ppo.rollout_batch_size}): a PPO minibatch is cut from one rollout; use at most "
            f"{config.ppo.rollout_batch_size}"
        )
