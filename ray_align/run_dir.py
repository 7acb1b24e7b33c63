"""A run's output folder: the resolved config, metrics, tables, checkpoints. Every write is atomic.

Atomic = written to a temporary file in the same folder, then renamed over the target, so a crash leaves either
the old file or the new one, never half of one. Checkpoints are folders and use the same rule with a rename.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
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


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_default) + "\n")


class RunDir:
    """``root/config.yaml``, ``metrics.jsonl``, ``tables/``, ``checkpoints/``, ``dual.json``, ``result.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.trained: list[str] = []  # stages trained (not reused) in this attempt, in order
        self._end_cut_line()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def log_metrics(self, step: int, stage: str, metrics: Mapping[str, Any]) -> None:
        """Append one JSON line. A line is written whole (one write call) so a crash loses at most that line."""
        line = json.dumps({"step": step, "stage": stage, **metrics}, default=_default) + "\n"
        with open(self.path("metrics.jsonl"), "a") as f:
            f.write(line)

    def _end_cut_line(self) -> None:
        """End a metrics line an earlier attempt's crash cut short, so the next row starts on its own line (only
        a crash leaves one, so once per attempt is enough)."""
        path = self.path("metrics.jsonl")
        if not path.exists() or not path.stat().st_size:
            return
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")

    def metrics(self, stage: str | None = None) -> list[dict[str, Any]]:
        """The logged rows (of one stage). A line a crash cut short is skipped (with a warning)."""
        path = self.path("metrics.jsonl")
        if not path.exists():
            return []
        rows = []
        for i, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("%s: line %d is not JSON (cut short by a crash?); skipped", path, i + 1)
        return [r for r in rows if stage is None or r["stage"] == stage]

    def drop_metrics(self, *stages: str, from_step: int | None = None) -> None:
        """Remove the rows of ``stages`` (all, or those with step ≥ ``from_step``), atomically: what an unfinished
        attempt logged before those stages (or their steps from ``from_step`` on) run again."""
        path = self.path("metrics.jsonl")
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
