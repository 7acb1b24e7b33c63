"""DPO on the dataset's own preference pairs (helpfulness or safety): a building block and a baseline.

1. load the dataset; build the pairs of the chosen preference (better_response_id or safer_response_id)
2. start a trainer from the policy; its initial weights are π_ref
3. reference log-probs of every pair (π_ref = the trainer before its first step)
4. DPO epochs; save the Hugging Face checkpoint; report held-out preference accuracy
"""

from __future__ import annotations

import time

import numpy as np
from transformers import AutoTokenizer

from ray_align.algorithms.common import load_dataset, reference_path, tokenize_options
from ray_align.algorithms.preference import (
    Pairs,
    pair_logps,
    reference_pair_logps,
    steps_for,
    train_pairs,
)
from ray_align.algorithms.stages import finished_stage, record_stage
from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.data import helpfulness_pairs, safety_pairs, tokenize_pairs
from ray_align.data.formatting import tokenizer_pad_id
from ray_align.losses.specs import DPOSpec
from ray_align.run_dir import RunDir

ROLES = ("trainer",)


def dataset_pairs(ds, preference: str, tokenizer, config: JobConfig) -> Pairs:
    view = helpfulness_pairs(ds) if preference == "helpfulness" else safety_pairs(ds)
    pairs = tokenize_pairs(view, tokenizer, **tokenize_options(config))
    return Pairs(pairs)


def dpo_run(
    config: JobConfig,
    cluster: Cluster,
    out: RunDir,
    *,
    model_path: str,
    pairs: Pairs,
    beta: float,
    stage: str,
    reference_path: str | None = None,
) -> tuple[str, dict]:
    """Train one DPO policy from ``model_path``; returns (checkpoint, stats).

    stats: steps, final_loss, pairs and train_seconds, the wall time of the reference pass plus the
    optimizer steps (a separate reference's start-up included; the policy's start-up and save are not), so
    pairs × epochs / train_seconds is the run's throughput.

    π_ref is ``reference_path`` (``models.reference``) when it names another checkpoint, else ``model_path``
    itself (its log-probs then come from the trainer before its first step, with no second model loaded).
    A stage an earlier attempt of this job finished is reused (ray_align.algorithms.stages)."""
    if done := finished_stage(config, out, stage):
        return done
    t = config.training
    steps = steps_for(len(pairs), t.batch_size, t.epochs)
    pad_id = tokenizer_pad_id(AutoTokenizer.from_pretrained(model_path), config.models.pad_token)
    separate = reference_path is not None and reference_path != model_path
    # step 1: π_ref's log-probs, before the policy's trainer takes the bundles
    clock = time.perf_counter()
    ref = (
        reference_pair_logps(cluster, reference_path, pairs.pairs, pad_id, t.batch_size) if separate else None
    )
    seconds = time.perf_counter() - clock
    trainer = cluster.new_trainer(model_path, "causal_lm", total_steps=steps, rows_per_example=2)
    try:
        clock = time.perf_counter()  # the policy's own start-up is not training time
        if ref is None:  # π_ref = the initial weights
            ref = pair_logps(trainer, pairs.pairs, pad_id, t.batch_size)
        spec = DPOSpec(beta=beta, label_smoothing=config.dpo.label_smoothing, loss_type=config.dpo.loss_type)
        history = train_pairs(
            trainer,
            pairs,
            ref,
            spec,
            pad_id=pad_id,
            batch_size=t.batch_size,
            epochs=t.epochs,
            seed=config.seed,
            out=out,
            stage=stage,
        )
        seconds += time.perf_counter() - clock
        checkpoint = trainer.save(str(out.checkpoint(stage)))
    finally:
        trainer.shutdown()
    last = history[-1] if history else {}
    stats = {"steps": len(history), "final_loss": last.get("loss", float("nan"))}
    stats |= {"pairs": len(pairs), "train_seconds": round(seconds, 3)}
    record_stage(config, out, stage, stats)
    return checkpoint, stats


def preference_accuracy(ref: np.ndarray, policy: np.ndarray) -> float:
    """Share of pairs whose implicit reward margin (log-ratio chosen − rejected) is positive."""
    margin = (policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])
    return float((margin > 0).mean())


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    train, _ = load_dataset(config)
    tokenizer = AutoTokenizer.from_pretrained(cluster.policy_path)
    pairs = dataset_pairs(train, config.dpo.preference, tokenizer, config)
    checkpoint, stats = dpo_run(
        config,
        cluster,
        out,
        model_path=cluster.policy_path,
        pairs=pairs,
        beta=config.dpo.beta,
        stage="dpo",
        reference_path=reference_path(config, cluster),
    )
    result = {"checkpoint": checkpoint, "pairs": len(pairs), **stats}
    out.write_result(result)
    return result
