"""The methods, one module each. ``ROLES`` in a module names the roles the driver must start for it."""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "sample_score": "ray_align.algorithms.sample_score",
    "dpo": "ray_align.algorithms.dpo",
    "mocan": "ray_align.algorithms.mocan",
    "ppo_lag": "ray_align.algorithms.ppo_lag",
    "caid": "ray_align.algorithms.caid",
    "kto": "ray_align.algorithms.kto",
    "reward_model": "ray_align.algorithms.score_models",
    "cost_model": "ray_align.algorithms.score_models",
    "sacpo": "ray_align.algorithms.sacpo",
    "pecan": "ray_align.algorithms.pecan",
}


# CAID's preference-based form (PeCAID) is `algorithm: caid` with `caid.form: preference`: another module, with
# other roles (no scorer), so the driver and the preflight pick the module by the config, not the name alone.
PECAID = "ray_align.algorithms.pecaid"


def module_name(config) -> str | None:
    """The module that runs ``config``'s method; None when no module implements its algorithm."""
    if config.algorithm == "caid" and config.caid.form == "preference":
        return PECAID
    return MODULES.get(config.algorithm)


def job_module(config) -> ModuleType:
    """The imported module of :func:`module_name` (raises ValueError for an unknown algorithm)."""
    name = module_name(config)
    return importlib.import_module(name) if name else algorithm_module(config.algorithm)


def algorithm_module(name: str) -> ModuleType:
    if name not in MODULES:
        raise ValueError(f"algorithm {name!r} is not available; choose one of {sorted(MODULES)}")
    return importlib.import_module(MODULES[name])
