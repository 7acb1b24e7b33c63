"""KTO (Ethayarajh et al. 2024) on unpaired singletons: a baseline, and SACPO's alternative step loss.

Each singleton is one (prompt, response) with a binary label; on PKU-SafeRLHF the label is the response's own
safety label (desirable = safe), so both answers of a row are used, each on its own.

1. load the dataset; its singletons (kto_singletons: desirable = is_response_k_safe), tokenised, and for each
   singleton i a mismatched partner (x_i, y_σ(i)), y_σ(i) an answer to another prompt: the rows KTO's
   reference point z0 = max(0, mean(log π − log π_ref)) is estimated on (kto.kl_estimate "mismatched")
2. start a trainer from the policy; its initial weights are π_ref
3. reference log-probs of every singleton and every partner (π_ref = the trainer before its first step)
4. class weights w₊ = kto.desirable_weight, w₋ = kto.undesirable_weight or n_desirable / n_undesirable
5. KTO epochs on shuffled batches: before each step, z0 of the whole batch (a forward of its partners, or of the
   batch itself with kto.kl_estimate "batch"), then the step on the singletons with that z0; save the checkpoint

z0 is the global batch's estimate, as the paper's: every rank and micro-batch of the step sees the same value
(estimated inside each micro-batch it would be a noisier, rank-dependent reference point). It is taken with the
weights the step's forward uses, so it equals the in-step estimate over the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoTokenizer

from ray_align.algorithms.common import load_dataset, reference_path, tokenize_options
from ray_align.algorithms.preference import Example, batches, example_logps, steps_for
from ray_align.algorithms.stages import finished_stage, record_stage
from ray_align.cluster import Cluster, PolicyTrainer
from ray_align.config.schema import JobConfig
from ray_align.data import (
    collate,
    helpfulness_pairs,
    kto_singletons,
    tokenize_prompt_response,
    tokenizer_pad_id,
)
from ray_align.losses.policy import kto_default_undesirable_weight, kto_kl_estimate
from ray_align.losses.specs import KTOSpec
from ray_align.run_dir import RunDir

ROLES = ("trainer",)


@dataclass
class Singletons:
    """Tokenised singletons: ``examples`` [n], ``desirable`` [n] bool, and optionally ``mismatched`` [n]
    (example i's prompt with the response of example σ(i), which answers another prompt), the rows z0 uses."""

    examples: list[Example]
    desirable: np.ndarray
    mismatched: list[Example] | None = None

    def __len__(self) -> int:
        return len(self.examples)


def mismatched_partners(prompts: Sequence[str], seed: int) -> np.ndarray:
    """σ [n], a permutation whose partner σ(i) answers another prompt: prompts[σ(i)] ≠ prompts[i] for all i.

    The prompt groups are shuffled and laid out one after another; position k is paired with position k + s
    (mod n), s = the largest group. A group spans at most s consecutive positions, so when n ≥ 2s no one is
    paired inside its own group. Every response serves as exactly one partner.
    """
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    n, s = len(prompts), max((len(g) for g in groups.values()), default=0)
    if n == 0 or n < 2 * s:
        raise ValueError(
            f"mismatched KL partners need n ≥ 2 × the largest prompt group ({n} singletons, a group of {s}); "
            "use more prompts or kto.kl_estimate: batch"
        )
    rng = np.random.default_rng(seed)
    members = list(groups.values())
    layout = np.concatenate([rng.permutation(members[j]) for j in rng.permutation(len(members))])
    sigma = np.empty(n, dtype=np.int64)
    sigma[layout] = np.roll(layout, -s)  # layout[k] → layout[k + s]
    return sigma


def tokenized_singletons(
    prompts: Sequence[str],
    completions: Sequence[str],
    desirable: Sequence[bool],
    tokenizer,
    config: JobConfig,
) -> Singletons:
    """Tokenise (prompt, completion) singletons; add mismatched partners when kto.kl_estimate asks for them."""
    kwargs = tokenize_options(config)
    examples = [tokenize_prompt_response(tokenizer, p, c, **kwargs) for p, c in zip(prompts, completions)]
    mismatched = None
    if config.kto.kl_estimate == "mismatched":
        sigma = mismatched_partners(prompts, config.seed)
        mismatched = [
            tokenize_prompt_response(tokenizer, prompts[i], completions[j], **kwargs)
            for i, j in enumerate(sigma)
        ]
    return Singletons(examples, np.asarray(desirable, dtype=bool), mismatched)


def safety_singletons(ds, tokenizer, config: JobConfig) -> Singletons:
    """Every response of the dataset with its own safety label: desirable = safe."""
    view = kto_singletons(ds)
    return tokenized_singletons(
        list(view["prompt"]), list(view["completion"]), list(view["label"]), tokenizer, config
    )


def helpfulness_singletons(ds, tokenizer, config: JobConfig) -> Singletons:
    """Helpfulness pairs split into singletons: the better response desirable, the worse one undesirable."""
    view = helpfulness_pairs(ds)
    prompts, chosen, rejected = list(view["prompt"]), list(view["chosen"]), list(view["rejected"])
    completions = [c for pair in zip(chosen, rejected) for c in pair]
    return tokenized_singletons(
        [p for p in prompts for _ in range(2)], completions, [True, False] * len(prompts), tokenizer, config
    )


def reference_point(
    trainer: PolicyTrainer,
    data: Singletons,
    idx: np.ndarray,
    ref: np.ndarray,
    ref_mismatched: np.ndarray | None,
    pad_id: int,
    batch_size: int,
) -> float:
    """z0 = max(0, mean_i(log π − log π_ref)) over the whole batch ``idx`` under the trainer's current weights: on
    the singletons' mismatched partners when there are (the paper's estimator), else on the singletons."""
    if data.mismatched is not None and ref_mismatched is not None:
        rows, ref_rows = [data.mismatched[i] for i in idx], ref_mismatched[idx]
    else:
        rows, ref_rows = [data.examples[i] for i in idx], ref[idx]
    policy = example_logps(trainer, rows, pad_id, batch_size)
    return float(
        kto_kl_estimate(torch.from_numpy(policy), torch.from_numpy(np.asarray(ref_rows, np.float64)))
    )


def kto_batch(
    data: Singletons, idx: np.ndarray, ref: np.ndarray, z0: float, pad_id: int
) -> dict[str, torch.Tensor]:
    """The KTOSpec batch for singletons ``idx``: ref_logps [B], desirable [B], and kl_estimate (z0, 0-dim: every
    rank and micro-batch gets it whole)."""
    batch = collate([data.examples[i] for i in idx], pad_id)
    batch["ref_logps"] = torch.from_numpy(np.asarray(ref[idx], dtype=np.float32))
    batch["desirable"] = torch.from_numpy(data.desirable[idx])
    batch["kl_estimate"] = torch.tensor(z0, dtype=torch.float32)
    return batch


def kto_weights(config: JobConfig, desirable: np.ndarray) -> tuple[float, float]:
    """(w₊, w₋): the configured values, w₋ defaulting to n_desirable / n_undesirable."""
    w_minus = config.kto.undesirable_weight
    if w_minus is None:
        w_minus = kto_default_undesirable_weight(int(desirable.sum()), int((~desirable).sum()))
    return config.kto.desirable_weight, float(w_minus)


def singleton_logps(
    trainer: PolicyTrainer, data: Singletons, pad_id: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Log-probs [n] of the singletons and of their mismatched partners (None without partners)."""
    ref = example_logps(trainer, data.examples, pad_id, batch_size)
    partners = data.mismatched
    return ref, example_logps(trainer, partners, pad_id, batch_size) if partners is not None else None


def kto_run(
    config: JobConfig,
    cluster: Cluster,
    out: RunDir,
    *,
    model_path: str,
    data: Singletons,
    beta: float,
    stage: str,
    reference_path: str | None = None,
) -> tuple[str, dict]:
    """Train one KTO policy from ``model_path``; returns (checkpoint, stats).

    π_ref is ``reference_path`` (``models.reference``) when it names another checkpoint, else ``model_path``
    itself (its log-probs then come from the trainer before its first step).
    A stage an earlier attempt of this job finished is reused (ray_align.algorithms.stages)."""
    if done := finished_stage(config, out, stage):
        return done
    t = config.training
    steps = steps_for(len(data), t.batch_size, t.epochs)
    pad_id = tokenizer_pad_id(AutoTokenizer.from_pretrained(model_path), config.models.pad_token)
    separate = reference_path is not None and reference_path != model_path
    clock, seconds = time.perf_counter(), 0.0  # train_seconds: reference pass + optimizer steps, as dpo_run's
    if separate:  # step 3 on π_ref's own trainer, freed before the policy's takes the bundles
        reference = cluster.new_trainer(reference_path, "causal_lm", total_steps=1)
        try:
            ref, ref_mismatched = singleton_logps(reference, data, pad_id, t.batch_size)
        finally:
            reference.shutdown()
        seconds = time.perf_counter() - clock
    trainer = cluster.new_trainer(model_path, "causal_lm", total_steps=steps)
    try:
        clock = time.perf_counter()
        if not separate:  # step 3: π_ref = the initial weights
            ref, ref_mismatched = singleton_logps(trainer, data, pad_id, t.batch_size)
        # step 4: class weights
        w_plus, w_minus = kto_weights(config, data.desirable)
        spec = KTOSpec(beta=beta, desirable_weight=w_plus, undesirable_weight=w_minus)
        # step 5: epochs
        history = []
        for step, idx in enumerate(batches(len(data), t.batch_size, t.epochs, config.seed)):
            z0 = reference_point(trainer, data, idx, ref, ref_mismatched, pad_id, t.batch_size)
            stats = trainer.train_step(kto_batch(data, idx, ref, z0, pad_id), spec)
            out.log_metrics(step, stage, stats)
            history.append(stats)
        seconds += time.perf_counter() - clock
        checkpoint = trainer.save(str(out.checkpoint(stage)))
    finally:
        trainer.shutdown()
    last = history[-1] if history else {}
    stats = {"steps": len(history), "final_loss": last.get("loss", float("nan"))}
    stats |= {"desirable_weight": w_plus, "undesirable_weight": w_minus}
    stats |= {"singletons": len(data), "train_seconds": round(seconds, 3)}
    record_stage(config, out, stage, stats)
    return checkpoint, stats


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    # step 1: singletons (desirable = safe)
    train, _ = load_dataset(config)
    tokenizer = AutoTokenizer.from_pretrained(cluster.policy_path)
    data = safety_singletons(train, tokenizer, config)
    # steps 2-5
    checkpoint, stats = kto_run(
        config,
        cluster,
        out,
        model_path=cluster.policy_path,
        data=data,
        beta=config.kto.beta,
        stage="kto",
        reference_path=reference_path(config, cluster),
    )
    result = {
        "checkpoint": checkpoint,
        "singletons": len(data),
        "desirable": int(data.desirable.sum()),
        **stats,
    }
    out.write_result(result)
    return result
