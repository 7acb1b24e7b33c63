"""Where a run's scalars go besides metrics.jsonl (which stays the record that resume reads).

TensorBoard event files in ``<output_dir>/tensorboard`` (on by default, ``logging.tensorboard``), and Weights &
Biases when it is installed and ``logging.wandb`` is true (offline unless WANDB_MODE says otherwise, so a run
never needs the network). Tags are ``<stage>/<metric>``: one stage's steps start at 0 again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray_align.config.schema import JobConfig

logger = logging.getLogger(__name__)


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(f"{stage}/{key}", value, step)
        self.writer.flush()  # a watcher (or a crash) sees every finished step

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, config: JobConfig, folder: Path) -> None:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project="ray-align", name=config.name, dir=str(folder), config=config.model_dump(mode="json")
        )

    def scalars(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
        # W&B wants one increasing step per run; the stage's own step travels as a metric.
        self.run.log({f"{stage}/{k}": v for k, v in {**_numbers(metrics), "step": step}.items()})

    def close(self) -> None:
        self.run.finish()


def open_sinks(config: JobConfig, root: Path) -> list[Any]:
    """The sinks the logging section asks for; W&B is skipped with a warning when not installed."""
    sinks: list[Any] = []
    if config.logging.tensorboard:
        sinks.append(TensorBoardSink(root / "tensorboard"))
    if config.logging.wandb:
        try:
            sinks.append(WandbSink(config, root))
        except ImportError:
            logger.warning("logging.wandb is true but wandb is not installed (pip install wandb); skipping it")
    return sinks
