"""``output_dir``: writable, and a run folder belongs to one configuration.

"The same configuration" is the resolved config less the settings that cannot change results: the ones a
finished training stage ignores when it is reused (``algorithms.stages``: output_dir, checkpoint, logging,
name, ray, placement, eval), and ``ppo.steps``, which only says how far a PPO-Lagrangian run goes (a rerun with
more steps continues from its last checkpoint). A rerun of the same configuration resumes; any other setting
is refused unless ``--overwrite`` clears the folder first. Nothing is read but ``config.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray_align.algorithms.stages import _NOT_FINGERPRINTED
from ray_align.config import ConfigError, JobConfig, load_config
from ray_align.preflight.findings import Findings
from ray_align.run_dir import CONFIG_FILE

RUN_LENGTH = {"ppo": {"steps"}}


def run_identity(config: JobConfig) -> dict[str, Any]:
    """The settings that decide a run's results, as dotted keys (``dual.constraints.0.margin``) → values."""
    exclude: dict[str, Any] = {key: True for key in _NOT_FINGERPRINTED}
    exclude |= {section: dict.fromkeys(keys, True) for section, keys in RUN_LENGTH.items()}
    return _flatten(config.model_dump(mode="json", exclude=exclude))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, (dict, list)) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out: dict[str, Any] = {}
        for key, item in items:
            out |= _flatten(item, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): value}


def differences(old: JobConfig, new: JobConfig, limit: int = 3) -> list[str]:
    """``key: old → new`` for the settings of the run identity that differ (the first ``limit``)."""
    a, b = run_identity(old), run_identity(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "(unset)") != b.get(k, "(unset)"))
    shown = [f"{k}: {a.get(k, '(unset)')!r} → {b.get(k, '(unset)')!r}" for k in keys[:limit]]
    return shown + ([f"and {len(keys) - limit} more"] if len(keys) > limit else [])


def _writable_parent(root: Path) -> Path | None:
    """The nearest existing folder at or above ``root`` when the run may create ``root`` in it, else None."""
    for folder in (root, *root.parents):
        if folder.exists():
            return folder if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK) else None
    return None


def check_output_dir(config: JobConfig, found: Findings, *, overwrite: bool = False) -> None:
    root = Path(config.output_dir).expanduser()
    if root.exists() and not root.is_dir():
        found.problem(f"output_dir {root} is a file; choose a folder")
        return
    if _writable_parent(root) is None:
        found.problem(
            f"output_dir {root} cannot be created or written (its nearest existing parent is not a folder "
            "this user may write in); choose a folder you can write to"
        )
        return
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not (root / CONFIG_FILE).is_file():
        found.problem(
            f"output_dir {root} is not empty and holds no ray-align run (no {CONFIG_FILE}); choose a new or "
            "empty folder"
        )
        return
    reason = _other_configuration(root, config)
    if reason is None:
        return
    if overwrite:
        found.warn(f"--overwrite: output_dir {root} holds a run of another configuration; it will be cleared")
    elif found.mode == "run":
        found.problem(
            f"output_dir {root} holds a run of another configuration ({reason}); rerun with --overwrite to "
            "clear it and start over, or choose another output_dir"
        )
    else:
        found.warn(
            f"output_dir {root} holds a run of another configuration ({reason}); `ray-align run` will refuse "
            "it unless given --overwrite"
        )


def _other_configuration(root: Path, config: JobConfig) -> str | None:
    """None when the run folder's config.yaml has the same run identity as ``config``, else how they differ."""
    try:
        stored = load_config(root / CONFIG_FILE)
    except ConfigError as e:
        return f"its {CONFIG_FILE} does not load in this version: {' '.join(str(e).split())[:240]}"
    diff = differences(stored, config)
    return "; ".join(diff) if diff else None
