"""A run's output folder: the resolved config, metrics, tables, checkpoints. Every write is atomic.

Atomic = written to a temporary file in the same folder, then renamed over the target, so a crash leaves either
the old file or the new one, never half of one. Checkpoints are folders and use the same rule with a rename.
Every file gets the permissions of any file the process creates (0666 less the umask), atomic or appended.

A run folder belongs to one configuration (its ``config.yaml``); ``start_run_folder`` claims one for a run once
the preflight (ray_align.preflight) has accepted it, and only then is anything written.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


CONFIG_FILE = "config.yaml"


def _new_file(folder: Path, prefix: str) -> tuple[int, Path]:
    """Create an empty file with a fresh name. Mode 0o666 lets the umask decide, as for ``open(path, "w")``
    (``tempfile.mkstemp`` would leave it 0600, unlike every other output of the run)."""
    while True:
        tmp = folder / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Atomically create ``path`` with a writer that takes a file path (a Parquet or PNG writer): it writes a
    fresh temporary file beside the target, which then replaces it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path.parent, f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_default) + "\n")


def is_run_folder(root: str | Path) -> bool:
    return (Path(root) / CONFIG_FILE).is_file()


def clear_run_folder(root: str | Path) -> None:
    """Remove what a run folder holds (the folder itself stays). A non-empty folder that is not a run folder is
    refused: it may hold anything."""
    root = Path(root)
    if not root.is_dir():
        return
    if any(root.iterdir()) and not is_run_folder(root):
        raise ValueError(f"{root} holds no {CONFIG_FILE}; not clearing a folder that is not a run folder")
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def start_run_folder(root: str | Path, config_text: str, *, overwrite: bool = False) -> RunDir:
    """Claim ``root`` for a run: cleared first with ``overwrite``, then the resolved config is written.

    Call after the preflight accepted the job (it refuses a folder that holds another configuration's run).
    """
    if overwrite:
        clear_run_folder(root)
    out = RunDir(root)
    atomic_write_text(out.path(CONFIG_FILE), config_text)
    return out


METRICS = "metrics.jsonl"


def read_metrics_file(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (none when it is absent); a line that is not a JSON object (a crash cut it
    short) is skipped with a warning. Reads only: the report reads finished runs with it."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            logger.warning("%s: line %d is not a JSON object (cut short by a crash?); skipped", path, i + 1)
    return rows


class RunDir:
    """``root/config.yaml``, ``metrics.jsonl``, ``tables/``, ``checkpoints/``, ``dual.json``, ``result.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.trained: list[str] = []  # stages trained (not reused) in this attempt, in order
        self.sinks: list[Any] = []  # ray_align.tracking: TensorBoard, W&B (each has scalars() and close())
        self._end_cut_line()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def log_metrics(self, step: int, stage: str, metrics: Mapping[str, Any]) -> None:
        """Append one JSON line. A line is written whole (one write call) so a crash loses at most that line."""
        line = json.dumps({"step": step, "stage": stage, **metrics}, default=_default) + "\n"
        with open(self.path(METRICS), "a") as f:
            f.write(line)
        for sink in self.sinks:
            sink.scalars(stage, step, metrics)

    def close_sinks(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def _end_cut_line(self) -> None:
        """End a metrics line an earlier attempt's crash cut short, so the next row starts on its own line (only
        a crash leaves one, so once per attempt is enough)."""
        path = self.path(METRICS)
        if not path.exists() or not path.stat().st_size:
            return
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")

    def metrics(self, stage: str | None = None) -> list[dict[str, Any]]:
        """The logged rows (of one stage). A line a crash cut short is skipped (with a warning)."""
        return [r for r in read_metrics_file(self.path(METRICS)) if stage is None or r["stage"] == stage]

    def drop_metrics(self, *stages: str, from_step: int | None = None) -> None:
        """Remove the rows of ``stages`` (all, or those with step ≥ ``from_step``), atomically: what an unfinished
        attempt logged before those stages (or their steps from ``from_step`` on) run again."""
        path = self.path(METRICS)
        if not path.exists():
            return
        kept = [
            r
            for r in self.metrics()
            if r["stage"] not in stages or (from_step is not None and r["step"] < from_step)
        ]
        atomic_write_text(path, "".join(json.dumps(r, default=_default) + "\n" for r in kept))

    def write_result(self, result: Mapping[str, Any]) -> Path:
        return atomic_write_json(self.path("result.json"), dict(result))

    def checkpoint(self, name: str) -> Path:
        """Path of checkpoint ``name`` (a folder a trainer writes atomically)."""
        return self.path("checkpoints", name)

    def forget_done(self, stage: str) -> None:
        """Remove the record of ``stage`` (before it trains again, so a crash cannot pair it with new weights)."""
        self.path("stages", f"{stage}.done").unlink(missing_ok=True)

    def done(self, stage: str) -> bool:
        """Whether a stage finished in an earlier attempt of this run (resume skips it)."""
        return self.path("stages", f"{stage}.done").exists()

    def mark_done(self, stage: str, info: Mapping[str, Any] | None = None) -> None:
        atomic_write_json(self.path("stages", f"{stage}.done"), dict(info or {}))

    def stage_info(self, stage: str) -> dict[str, Any]:
        return json.loads(self.path("stages", f"{stage}.done").read_text())

    def prune_checkpoints(self, prefix: str, keep: int) -> None:
        """Delete all but the newest ``keep`` checkpoints whose names start with ``prefix``."""
        folder = self.path("checkpoints")
        if not folder.is_dir():
            return
        # (length, name): numbered names sort by number even past their zero padding
        found = sorted(
            (p for p in folder.iterdir() if p.name.startswith(prefix) and p.is_dir()),
            key=lambda p: (len(p.name), p.name),
        )
        for old in found[: max(0, len(found) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
