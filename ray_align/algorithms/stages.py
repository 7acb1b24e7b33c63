"""Resuming one-shot runs stage by stage.

A finished training stage (one DPO, KTO or score-model run) is recorded in the run folder as
``stages/<stage>.done``: its stats and the fingerprint of the job's config. Rerunning the same job into the same
``output_dir`` (with ``checkpoint.resume``, the default) takes the stage's checkpoint instead of training again,
provided the fingerprint matches and the checkpoint folder is there. Any changed setting changes the fingerprint,
and then every stage trains again: a stage's inputs (its starting model, its β, its data) follow from the config.
The fingerprint covers the config's text only, not the files it names: a dataset or model edited in place is not
noticed. Settings that do not change what is computed are left out (output_dir, checkpoint, logging, name, ray,
placement), so a run can resume on another cluster.

Stages run in dependency order (SACPO's step 2 starts from step 1; PeCAN's final DPO uses DPO_H and DPO_S), so
once a stage trains in this attempt, no later stage is reused. A stage's record is removed before it trains and
written after its checkpoint, so a record never points at half a checkpoint or at other weights.

Sampling stages are not recorded: they are cheap next to training and deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import json
import logging

from ray_align.config.schema import JobConfig
from ray_align.run_dir import RunDir

logger = logging.getLogger(__name__)

# Settings that do not change what a stage computes.
_NOT_FINGERPRINTED = {"output_dir", "checkpoint", "logging", "name", "ray", "placement", "eval"}


def config_fingerprint(config: JobConfig, also_exclude: dict[str, set[str]] | None = None) -> str:
    """A short hash of the settings that change what is computed; ``also_exclude`` leaves out some keys of a
    section too, e.g. {"ppo": {"steps"}} (a longer PPO-Lagrangian run continues a shorter one)."""
    exclude: dict = {key: True for key in _NOT_FINGERPRINTED}
    exclude |= {section: {key: True for key in keys} for section, keys in (also_exclude or {}).items()}
    data = config.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def finished_stage(config: JobConfig, out: RunDir, stage: str) -> tuple[str, dict] | None:
    """(checkpoint, stats) of ``stage`` if an earlier attempt of this job finished it.

    Otherwise None, and the stage is ready to train: its record and the metric rows an unfinished attempt logged
    for it are dropped (``metrics.jsonl`` holds one attempt per stage), and later stages of this attempt will
    train too.
    """
    if config.checkpoint.resume and out.done(stage) and not out.trained:
        info = out.stage_info(stage)
        checkpoint = out.checkpoint(stage)
        if info.get("config") != config_fingerprint(config):
            logger.info("stage %s was finished with other settings; training it again", stage)
        elif not checkpoint.is_dir():
            logger.warning("stage %s is recorded as finished but %s is missing; training it again", stage, checkpoint)
        else:
            logger.info("stage %s finished in an earlier attempt; reusing %s", stage, checkpoint)
            return str(checkpoint), {**info.get("stats", {}), "resumed": True}
    out.forget_done(stage)
    out.drop_metrics(stage, f"{stage}_eval")
    out.trained.append(stage)
    return None


def record_stage(config: JobConfig, out: RunDir, stage: str, stats: dict) -> None:
    """Record ``stage`` as finished (call after its checkpoint is saved)."""
    out.mark_done(stage, {"config": config_fingerprint(config), "stats": stats})
