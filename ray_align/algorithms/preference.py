"""Preference training on a trainer group: the loop every DPO-family method shares.

MoCAN, PeCAN, CAID, SACPO and plain DPO differ only in which pairs they build, how they label them, which
policy is the reference and which β they use; the loop below is the same for all of them:

    1. reference log-probs of every pair, from the reference policy (by default the trainer's own weights
       before the first step: DPO starts from π_ref, and SACPO's step 2 starts from its new reference)
    2. for each epoch, shuffled batches of pairs → one optimizer step each → metrics
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ray_align.cluster import PolicyTrainer
from ray_align.data.formatting import collate, collate_pairs
from ray_align.labels import orient_pairs
from ray_align.losses.logprobs import sequence_logps
from ray_align.progress import bar
from ray_align.run_dir import RunDir

logger = logging.getLogger("ray_align")

Example = dict[str, list[int]]
Pair = dict[str, Example]  # {"chosen": example, "rejected": example}


@dataclass
class Pairs:
    """Tokenised pairs and, optionally, soft labels P(chosen ≻ rejected) [P] (None: chosen is preferred)."""

    pairs: list[Pair]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pairs)


def _chunks(items: Sequence, batch_size: int):
    """Full-size chunks (the last one padded with leading items, so it divides over the ranks like the others)
    and how many of each chunk's rows are real."""
    for start in range(0, len(items), batch_size):
        chunk = list(items[start : start + batch_size])
        real = len(chunk)
        if real < batch_size and len(items) >= batch_size:
            chunk += list(items[: batch_size - real])
        yield chunk, real


def pair_logps(trainer: PolicyTrainer, pairs: Sequence[Pair], pad_id: int, batch_size: int) -> np.ndarray:
    """Sequence log-probs of (chosen, rejected) under ``trainer``'s current weights: [P, 2]."""
    out = []
    for chunk, real in _chunks(pairs, batch_size):
        batch = collate_pairs(chunk, pad_id)
        logps = sequence_logps(trainer.logprobs(batch), batch["response_mask"]).double().numpy()
        half = logps.shape[0] // 2
        out.append(np.stack([logps[:half], logps[half:]], axis=1)[:real])
    return np.concatenate(out, axis=0)


def reference_pair_logps(
    cluster, reference_path: str, pairs: Sequence[Pair], pad_id: int, batch_size: int
) -> np.ndarray:
    """[P, 2] log-probs under a reference other than the trained policy's start: a trainer group loaded from
    ``reference_path`` (so in the training dtype, as the policy's own log-probs are), freed right after."""
    trainer = cluster.new_trainer(reference_path, "causal_lm", total_steps=1, rows_per_example=2)
    try:
        return pair_logps(trainer, pairs, pad_id, batch_size)
    finally:
        trainer.shutdown()


def example_logps(
    trainer: PolicyTrainer, examples: Sequence[Example], pad_id: int, batch_size: int
) -> np.ndarray:
    """Sequence log-probs of single (prompt, response) examples: [n]."""
    out = []
    for chunk, real in _chunks(examples, batch_size):
        batch = collate(chunk, pad_id)
        out.append(sequence_logps(trainer.logprobs(batch), batch["response_mask"]).double().numpy()[:real])
    return np.concatenate(out)


def batches(n: int, batch_size: int, epochs: int, seed: int) -> list[np.ndarray]:
    """Index batches for ``epochs`` shuffled passes; every batch is full (the last one wraps around)."""
    rng = np.random.default_rng(seed)
    size = min(batch_size, n)
    out = []
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, size):
            idx = order[start : start + size]
            if idx.size < size:
                idx = np.concatenate([idx, order[: size - idx.size]])
            out.append(idx)
    return out


def steps_for(n: int, batch_size: int, epochs: int) -> int:
    size = min(batch_size, n)
    return epochs * -(-n // size)


def train_pairs(
    trainer: PolicyTrainer,
    data: Pairs,
    ref_logps: np.ndarray,
    spec,
    *,
    pad_id: int,
    batch_size: int,
    epochs: int,
    seed: int,
    out: RunDir,
    stage: str,
    on_step: Callable[[int, dict], None] | None = None,
) -> list[dict[str, float]]:
    """Run the preference loss ``spec`` (DPOSpec) over ``data``; ``ref_logps`` [P, 2] from :func:`pair_logps`."""
    history = []
    plan = batches(len(data), batch_size, epochs, seed)
    per_epoch = len(plan) // epochs
    with bar(len(plan), stage, unit="step") as progress:
        for step, idx in enumerate(plan):
            batch = collate_pairs([data.pairs[i] for i in idx], pad_id)
            batch["ref_logps"] = torch.from_numpy(
                np.concatenate([ref_logps[idx, 0], ref_logps[idx, 1]])
            ).float()
            if data.labels is not None:
                batch["labels"] = torch.from_numpy(data.labels[idx]).float()
            stats = trainer.train_step(batch, spec)
            out.log_metrics(step, stage, stats)
            history.append(stats)
            progress.update(1)
            if (step + 1) % per_epoch == 0:
                logger.info(epoch_line(stage, (step + 1) // per_epoch, epochs, history[-per_epoch:]))
            if on_step is not None:
                on_step(step, stats)
    return history


def epoch_line(stage: str, epoch: int, epochs: int, rows: list[dict[str, float]]) -> str:
    """``mocan_dpo epoch 2/8 · loss 0.652 · accuracy 0.71``: the epoch's means of the loss-like statistics."""
    keys = [k for k in ("loss", "accuracy", "reward_margin", "kl") if k in rows[0]]
    means = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return " · ".join([f"{stage} epoch {epoch}/{epochs}", *(f"{k} {v:.3g}" for k, v in means.items())])


def split_example(example: Example) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a tokenised example (the response is where response_mask is 1)."""
    first = example["response_mask"].index(1) if 1 in example["response_mask"] else len(example["input_ids"])
    return list(example["input_ids"][:first]), list(example["input_ids"][first:])


def labelled_pairs(
    first: Sequence[Example], second: Sequence[Example], labels: np.ndarray, soft: bool
) -> Pairs:
    """Pairs (y0, y1) with labels 1[y1 ≻ y0] (hard) or P(y1 ≻ y0) (soft) → chosen/rejected pairs for DPO."""
    chosen, rejected, p_chosen = orient_pairs(first, second, labels)
    pairs = [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected, strict=True)]
    return Pairs(pairs, p_chosen if soft else None)
