"""CAID (Zhang et al. 2025), model-based form (MoCAID): iterative dual-based alignment.

The constrained problem is solved in the policy's parameter space by alternating a dual descent step on λ,
measured ON-POLICY, with a Lagrangian maximisation of the policy (DPO on pseudo-preferences from r + λᵀg):

    0. sample and score π_ref (N prompts × K); the reference utilities E_ref g; the pairs to relabel
       λ_0 = the one-shot CAN solution λ* (warm start), or dual.lam_init
    for t = 0..T−1:
      1. relabel the pairs with R = r + λ_tᵀg; DPO (β, reference π_ref) continuing from θ_t → θ_{t+1}
      2. sync the new weights into the generators
      3. sample θ_{t+1} on the same prompts (ON-POLICY); slack u = Ê_π g − Ê_ref g − b  (or Ê_π g − τ)
      4. λ_{t+1} = [λ_t − η u]₊          (the coordinator's projected rule, η = dual.lr)

The paper alternates "dual step on θ_t's samples, then maximise at λ_{t+1}" from θ_0; we start with the
maximisation, so θ_0 is the Lagrangian maximiser at the warm-start λ_0 instead of π_ref itself (whose slack is
simply −b and would push the warm start away from λ* on the first step). With an exact inner maximiser both are
projected gradient descent on the dual, u = ∇D(λ_t).

caid.async_rollout: the engines keep θ_t while the trainer runs step 1, and sample it in the background
(RolloutSource, as PPO-Lagrangian's rollouts); step 4 then uses θ_t's slack, λ_{t+1} = [λ_t − η u(θ_t)]₊, a dual
gradient one iteration old, and step 2 follows the settle. θ_0 = π_ref takes no step (λ_1 = λ_0, as above). After
the loop θ_T is sampled once more and takes the T-th step, so the result's λ and final_slack are θ_T's, as in a
synchronous run. Each record's ``slack_policy`` says which θ_j its slack was measured on.

The DPO reference stays π_ref throughout (the KL in the objective is to π_ref); its log-probs are taken once,
before the first step. The pairs are π_ref samples (or the dataset's pairs, can.pairs), as in MoCAN.

Resume: with checkpoint.every = n, θ, the config's fingerprint and the coordinator's state are saved after every
n-th iteration and the last (checkpoints/caid_iter_XXXX). A rerun of the same job with checkpoint.resume continues
after the newest complete one; step 0 is recomputed (seeded, so the same samples and pairs), the optimizer's
moments and the learning-rate schedule start fresh, as in PPO-Lagrangian. With async_rollout the loaded θ_n is
synced into the engines first (they sample it during iteration n), so the continuation is an uninterrupted run's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from ray_align.algorithms.common import (
    ScoredSamples,
    generators_on_reference,
    load_dataset,
    prompt_texts,
    prompt_token_ids,
    reference_path,
    sample_and_score,
    sampling_from,
)
from ray_align.algorithms.mocan import dataset_pairs_scored, sample_pairs
from ray_align.algorithms.preference import (
    labelled_pairs,
    pair_logps,
    reference_pair_logps,
    steps_for,
    train_pairs,
)
from ray_align.algorithms.rollout import DUAL_FILE, FINGERPRINT_FILE
from ray_align.algorithms.rollout import resume_point as resume_from
from ray_align.algorithms.rollout_source import RolloutSource
from ray_align.algorithms.sample_score import dual_bounds
from ray_align.algorithms.stages import config_fingerprint
from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.data.formatting import tokenizer_pad_id
from ray_align.dual.can import thresholds
from ray_align.labels import mocan_labels
from ray_align.losses.specs import DPOSpec
from ray_align.run_dir import RunDir, atomic_write_text

logger = logging.getLogger(__name__)

ROLES = ("generator", "scorer", "trainer")
ITER_PREFIX = "caid_iter_"


def slack(utilities: np.ndarray, prompt_index: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """u = Ê_x Ê_{y~π} g − τ [m]: mean over prompts of the per-prompt sample mean (as the dual averages)."""
    prompts = np.unique(prompt_index)
    per_prompt = np.stack([utilities[prompt_index == i].mean(axis=0) for i in prompts])
    return per_prompt.mean(axis=0) - tau


def samples_slack(samples: ScoredSamples, tau: np.ndarray) -> np.ndarray:
    """:func:`slack` of scored on-policy samples."""
    return slack(samples.utilities, np.asarray(samples.rollouts.prompt_index), tau)


def measured_policy(it: int, overlap: bool) -> int | None:
    """j of the θ_j whose on-policy slack takes iteration ``it``'s dual step λ_it → λ_{it+1}: θ_{it+1}, the policy
    it trains, sampled after the sync; with async_rollout θ_it, sampled during the DPO, and none for θ_0 = π_ref."""
    if not overlap:
        return it + 1
    return it if it > 0 else None


@dataclass
class Relabel:
    """What every iteration's DPO shares: the pairs (y0, y1), their scores, π_ref's log-probs [P, 2], the loss."""

    first: list
    second: list
    scores: tuple  # (r0, r1, g0, g1)
    ref: np.ndarray
    pad_id: int
    spec: DPOSpec


def reference_step(config: JobConfig, cluster: Cluster, tokenizer, resumed: tuple[int, Path] | None):
    """Step 0 (recomputed on resume: seeded): π_ref's samples give τ, λ_0 (or the checkpoint's λ) and, with
    can.pairs: samples, the pairs. Returns (prompt ids, τ [m], first, second, (r0, r1, g0, g1))."""
    c, train = config.caid, load_dataset(config)[0]
    bounds = dual_bounds(config, cluster.constraint_names)
    ids = prompt_token_ids(prompt_texts(train, c.num_prompts), config, cluster.policy_path)
    generators_on_reference(config, cluster)
    ref_samples = sample_and_score(cluster, ids, sampling_from(config, n=c.samples_per_prompt))
    table = ref_samples.table()
    tau = thresholds(table, margin=bounds["margin"], threshold=bounds["threshold"])
    if resumed:
        cluster.coordinator.restore(str(resumed[1] / DUAL_FILE))
    elif c.warm_start:  # capped at dual.lam_max; a non-converged solve only warns: the iterations correct it
        cluster.coordinator.solve(table, config.can.beta, strict=False, **bounds)
    if config.can.pairs == "samples":
        first, second, scores = sample_pairs(ref_samples, ids)
    else:
        first, second, scores = dataset_pairs_scored(cluster, train, tokenizer, config)
    return ids, tau, first, second, scores


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    names, c, t = cluster.constraint_names, config.caid, config.training
    tokenizer = AutoTokenizer.from_pretrained(cluster.policy_path)
    resumed = resume_point(config, out)
    start = resumed[0] if resumed else 0
    ids, tau, first, second, scores = reference_step(config, cluster, tokenizer, resumed)  # 0.
    per_iteration = steps_for(len(first), t.batch_size, c.epochs_per_iteration)
    steps = max(1, c.iterations - start) * per_iteration
    pad_id = tokenizer_pad_id(tokenizer, config.models.pad_token)
    both = [{"chosen": a, "rejected": b} for a, b in zip(first, second)]
    # π_ref log-probs of both orientations; the labels only pick "chosen". From models.reference when it is
    # another checkpoint (before θ's trainer takes the bundles), else from θ's initial weights.
    ref_path = reference_path(config, cluster)
    clock = time.perf_counter()
    ref = (
        None
        if ref_path == cluster.policy_path
        else reference_pair_logps(cluster, ref_path, both, pad_id, t.batch_size)
    )
    train_seconds = time.perf_counter() - clock  # the reference pass and the DPO steps, as dpo_run's
    trainer = cluster.new_trainer(cluster.policy_path, "causal_lm", total_steps=steps, rows_per_example=2)
    # the finished iterations' records (as logged), then a clean slate for the rest
    history = [
        {k: v for k, v in row.items() if k not in ("step", "stage")}
        for row in out.metrics("caid")
        if row["step"] < start
    ]
    # an unfinished attempt's rows of the iterations to run go
    out.drop_metrics(*(f"caid_dpo_{it}" for it in range(start, c.iterations)))
    out.drop_metrics("caid", from_step=start)
    final = None
    try:
        clock = time.perf_counter()
        if ref is None:
            ref = pair_logps(trainer, both, pad_id, t.batch_size)
        train_seconds += time.perf_counter() - clock
        if resumed:  # θ_start: the engines sample it after the next DPO step, or during it (async_rollout)
            trainer.load(str(resumed[1]))
            if c.async_rollout:
                cluster.sync_weights(trainer)
        spec = DPOSpec(
            beta=config.can.beta, label_smoothing=config.dpo.label_smoothing, loss_type=config.dpo.loss_type
        )
        data = Relabel(first, second, scores, ref, pad_id, spec)
        with RolloutSource(lambda j: policy_sample(config, cluster, ids, j), ahead=c.async_rollout) as source:
            for it in range(start, c.iterations):
                record = iteration(config, cluster, out, trainer, source, data, tau, it)
                train_seconds += record["train_seconds"]
                out.log_metrics(it, "caid", record)
                logger.info(iteration_line(it + 1, c.iterations, names, record))
                history.append(record)
                every = config.checkpoint.every
                if every and ((it + 1) % every == 0 or it + 1 == c.iterations):
                    save_iteration(config, out, it + 1, trainer, cluster.coordinator)
            if c.async_rollout:  # the coordinator's state is saved above, before this step
                final = final_step(cluster, source, tau, c.iterations, names)
        checkpoint = trainer.save(str(out.checkpoint("caid")))
    finally:
        trainer.shutdown()
    final = final or (history[-1] if history else None)
    result = {
        "checkpoint": checkpoint,
        "lambda": dict(zip(names, np.asarray(cluster.coordinator.lam()).tolist())),
        "iterations": history,
        "resumed_from_iteration": start,
        # θ_T's: the last iteration's (synchronous), or its own sample after the loop (async_rollout)
        "final_slack": dict(zip(names, final["slack"])) if final else {},
        "pairs": len(first),
        "train_seconds": round(train_seconds, 3),  # this attempt's
    }
    if c.async_rollout:
        result["final_step"] = final
    out.write_result(result)
    return result


def policy_sample(config: JobConfig, cluster: Cluster, ids: list[list[int]], j: int) -> ScoredSamples:
    """θ_j's on-policy sample, scored: the same prompts, seed generation.seed + j (θ_0 = π_ref is step 0's), so
    the synchronous and overlapped loops sample each θ_j alike."""
    c = config.caid
    return sample_and_score(
        cluster, ids, sampling_from(config, n=c.samples_per_prompt, seed=config.generation.seed + j)
    )


def iteration(config, cluster, out, trainer, source, data: Relabel, tau: np.ndarray, it: int) -> dict:
    """Steps 1-4 of iteration ``it``; returns its record (λ_it, the measured slack and its θ_j, λ_{it+1}, times)."""
    c = config.caid
    began = time.perf_counter()
    lam = np.asarray(cluster.coordinator.lam())
    j = measured_policy(it, c.async_rollout)
    if c.async_rollout and j is not None:
        source.prefetch(j)  # the engines hold θ_it
    # 1. Lagrangian maximisation at λ_t: DPO on pairs relabelled by r + λ_tᵀg, reference π_ref
    clock = time.perf_counter()
    maximise(config, trainer, out, data, lam, it)
    trained = time.perf_counter() - clock
    # 2. the generators now sample θ_{t+1}; their weights change only between generate calls
    settle = source.settle()
    sync = cluster.sync_weights(trainer)
    record = {
        "iteration": it,
        "lambda": lam.tolist(),  # the λ this iteration's policy was trained at
        "slack_policy": j,  # the θ_j the slack was measured on (none: no dual step)
        "slack": None,
        "mean_reward": None,
        "next_lambda": lam.tolist(),
    }
    if j is not None:
        # 3. θ_j's on-policy sample (sampled now, or during step 1) and its constraint slack u
        rollout = source.take(j)
        u = samples_slack(rollout.samples, tau)
        # 4. dual descent in the coordinator: λ_{t+1} = [λ_t − η u]₊
        next_lam = cluster.coordinator.update(u)
        record |= {"slack": u.tolist(), "mean_reward": float(rollout.samples.reward.mean())}
        record |= {"next_lambda": np.asarray(next_lam).tolist()}
        record |= {"sample_seconds": rollout.seconds, "sample_wait_seconds": rollout.waited}
    record |= {"train_seconds": trained, "settle_seconds": settle, "sync_seconds": sync["seconds"]}
    record["iteration_seconds"] = time.perf_counter() - began
    return record


def maximise(config: JobConfig, trainer, out: RunDir, data: Relabel, lam: np.ndarray, it: int) -> None:
    """Step 1: DPO continuing from the trainer's θ_it on the pairs labelled by r + λᵀg (stage caid_dpo_{it})."""
    soft = config.can.label == "soft"
    labels = mocan_labels(*data.scores, lam, rng=config.seed + it, soft=soft)
    pairs = labelled_pairs(data.first, data.second, labels, soft)
    flip = np.asarray([p["chosen"] is not a for p, a in zip(pairs.pairs, data.first)])
    ref_oriented = np.where(flip[:, None], data.ref[:, ::-1], data.ref)
    train_pairs(
        trainer,
        pairs,
        ref_oriented,
        data.spec,
        pad_id=data.pad_id,
        batch_size=config.training.batch_size,
        epochs=config.caid.epochs_per_iteration,
        seed=config.seed + it,
        out=out,
        stage=f"caid_dpo_{it}",
    )


def final_step(cluster: Cluster, source: RolloutSource, tau: np.ndarray, done: int, names: list[str]) -> dict:
    """async_rollout: θ_T's own sample (on demand, θ_T's seed) and the T-th dual step from its slack."""
    lam = np.asarray(cluster.coordinator.lam())
    rollout = source.take(done)
    u = samples_slack(rollout.samples, tau)
    record = {"slack_policy": done, "lambda": lam.tolist(), "slack": u.tolist()}
    record["next_lambda"] = np.asarray(cluster.coordinator.update(u)).tolist()
    record |= {"mean_reward": float(rollout.samples.reward.mean()), "sample_seconds": rollout.seconds}
    logger.info(f"caid final dual step, on θ_{done}'s sample · {dual_line(names, record)}")
    return record


def resume_point(config: JobConfig, out: RunDir) -> tuple[int, Path] | None:
    """(iterations done, folder) of the newest complete iteration checkpoint this config wrote, or None. Without
    one, iteration checkpoints of other settings are deleted (the run starts over)."""
    return resume_from(config, out, ITER_PREFIX, config_fingerprint(config))


def save_iteration(config: JobConfig, out: RunDir, done: int, trainer, coordinator) -> None:
    """checkpoints/caid_iter_{done}: θ after ``done`` iterations, the config's fingerprint, then the coordinator's
    state (written last, so a folder without it is incomplete and never resumed from); older ones beyond
    checkpoint.keep are deleted."""
    path = out.checkpoint(f"{ITER_PREFIX}{done:04d}")
    trainer.save(str(path))
    atomic_write_text(path / FINGERPRINT_FILE, config_fingerprint(config))  # before the dual state
    coordinator.save(str(path / DUAL_FILE))
    out.prune_checkpoints(ITER_PREFIX, config.checkpoint.keep)


def iteration_line(done: int, total: int, names: list[str], record: dict, method: str = "caid") -> str:
    """``caid iteration 2/4 · λ safety 1.21 → 1.35 · slack safety -0.028 · reward 0.412``."""
    return f"{method} iteration {done}/{total} · {dual_line(names, record)}"


def dual_line(names: list[str], record: dict) -> str:
    """``λ safety 1.21 → 1.35 · slack safety -0.028 · reward 0.412``; ``slack none`` without a dual step."""
    lam = ", ".join(
        f"{n} {a:.3g} → {b:.3g}" for n, a, b in zip(names, record["lambda"], record["next_lambda"])
    )
    if record["slack"] is None:
        return f"λ {lam} · slack none (no dual step from θ_0 = π_ref)"
    slack = ", ".join(f"{n} {u:.3g}" for n, u in zip(names, record["slack"]))
    return f"λ {lam} · slack {slack} · reward {record['mean_reward']:.3g}"
