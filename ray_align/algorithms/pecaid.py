"""CAID (Zhang et al. 2025), preference-based form (PeCAID): `algorithm: caid` with `caid.form: preference`.

MoCAID's iterative dual with PeCAN's implicit scores in place of reward and cost models:

    0. DPO_H and DPO_S from π_ref with β (PeCAN's step 1); N × K samples of π_ref; the implicit scores
       h_r = log π_H − log π_ref, h_g = log π_S − log π_ref of the samples and of the pairs to relabel
       τ = Ē_ref[β h_g] + b;  λ_0 = the one-shot dual on the β·h table (PeCAN's λ*, warm start) or dual.lam_init
    for t = 0..T−1:
      1. relabel the pairs by σ(β(Δh_r + λ_tᵀΔh_g)) (can.pecan_label); DPO (β, reference π_ref) from θ_t → θ_{t+1}
      2. sync θ_{t+1} into the generators
      3. sample θ_{t+1} on the same prompts (ON-POLICY) and score the samples by β h_g: u = Ê_π[β h_g] − τ
      4. λ_{t+1} = [λ_t − η u]₊          (the coordinator's projected rule, η = dual.lr)

Why β h: DPO_S with β fits π_S = π_ref e^{g/β}/Z_S, so β h_g = g − β log Z_S(x); the per-prompt constant cancels
in u = Ê_π g − Ê_ref g − b (τ holds Ē_ref[β h_g]), so u is the dual's gradient at λ_t as in MoCAID. The
pairs' labels target π_ref e^{h_r + λ h_g} = π_{r+λg} ("theory" labels), the Lagrangian maximiser at λ.
The loop order is MoCAID's (maximise at λ_t first; docs/methods-dual.md says why).

One trainer group at a time: the policy's group trains and syncs, then goes; the implicit scores of its samples
come from a group that loads π_ref, π_H and π_S in turn (pecan.implicit_scores: one forward code and dtype for
every term). So each iteration's DPO starts a fresh optimizer and learning-rate schedule from θ_t, and a resumed
run repeats an uninterrupted one. θ_t lives in checkpoints/pecaid (the result's checkpoint at the end).

Resume as MoCAID: with checkpoint.every = n, θ, the config's fingerprint and the coordinator's state are saved
after every n-th iteration and the last (checkpoints/pecaid_iter_XXXX); a rerun continues after the newest
complete one. DPO_H and DPO_S are recorded stages, reused; step 0's sampling is seeded and recomputed.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from ray_align.algorithms.caid import iteration_line, slack
from ray_align.algorithms.common import reference_path, sampling_from
from ray_align.algorithms.pecan import (
    Reference,
    implicit_scores,
    pecan_margin,
    reference_part,
    rollout_examples,
)
from ray_align.algorithms.preference import labelled_pairs, reference_pair_logps, steps_for, train_pairs
from ray_align.algorithms.rollout import DUAL_FILE, FINGERPRINT_FILE
from ray_align.algorithms.rollout import resume_point as resume_from
from ray_align.algorithms.stages import config_fingerprint
from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.data.formatting import tokenizer_pad_id
from ray_align.dual.can import thresholds
from ray_align.labels import pecan_labels
from ray_align.losses.specs import DPOSpec
from ray_align.run_dir import RunDir, atomic_write_text

logger = logging.getLogger(__name__)

ROLES = ("generator", "trainer")
STAGE = "pecaid"
ITER_PREFIX = "pecaid_iter_"


@dataclass
class Setup:
    """What every iteration shares: step 0's scores and pairs, the margin b, τ, π_ref's log-probs of the pairs."""

    reference: Reference
    margin: float
    tau: np.ndarray  # [m]
    ref_logps: np.ndarray  # [P, 2]: π_ref's log-probs of (y0, y1)
    pad_id: int
    ref_seconds: float  # the wall time of that reference pass


def oriented(ref_logps: np.ndarray, first: list, chosen: list) -> np.ndarray:
    """[P, 2] log-probs of (chosen, rejected), from those of (y0, y1): a pair whose chosen is not y0 swaps."""
    flip = np.asarray([c is not a for c, a in zip(chosen, first, strict=True)])
    return np.where(flip[:, None], ref_logps[:, ::-1], ref_logps)


def on_policy_slack(h_g: np.ndarray, prompt_index: np.ndarray, tau: np.ndarray, beta: float) -> np.ndarray:
    """u [m] = Ê_x Ê_{y~π_θ}[β h_g] − τ: the dual's gradient from implicit safety scores h_g [n] or [n, m]."""
    g = beta * np.asarray(h_g, dtype=np.float64).reshape(len(prompt_index), -1)
    return slack(g, np.asarray(prompt_index), tau)


def setup(config: JobConfig, cluster: Cluster, out: RunDir) -> Setup:
    """Step 0: DPO_H, DPO_S, the π_ref table (tables/pecaid_samples.parquet), τ, the pairs' π_ref log-probs."""
    c, b = config.caid, pecan_margin(config, "PeCAID", "MoCAID (caid.form: model)")[1]
    reference = reference_part(
        config, cluster, out, prefix=STAGE, sample=(c.num_prompts, c.samples_per_prompt)
    )
    tau = thresholds(reference.samples.table(), margin=[b])  # Ē_ref[β h_g] + b, the dual's τ
    pad_id = tokenizer_pad_id(AutoTokenizer.from_pretrained(cluster.policy_path), config.models.pad_token)
    both = [{"chosen": a, "rejected": z} for a, z in zip(reference.first, reference.second)]
    clock = time.perf_counter()
    ref_logps = reference_pair_logps(
        cluster, reference_path(config, cluster), both, pad_id, config.training.batch_size
    )
    return Setup(reference, b, tau, ref_logps, pad_id, time.perf_counter() - clock)


def maximise(
    config: JobConfig, cluster: Cluster, out: RunDir, s: Setup, lam: np.ndarray, it: int, start: str
):
    """Step 1-2: DPO from θ_t (``start``) on the pairs labelled at λ_t, saved to checkpoints/pecaid and synced
    into the generators. Returns (checkpoint, sync stats, seconds of the DPO steps)."""
    (h_r0, h_r1), (h_g0, h_g1), ref = s.reference.h_r, s.reference.h_g, s.reference
    soft, beta, t = config.can.label == "soft", config.can.beta, config.training
    labels = pecan_labels(
        h_r0, h_r1, h_g0, h_g1, lam, beta, form=config.can.pecan_label, rng=config.seed + it, soft=soft
    )
    pairs = labelled_pairs(ref.first, ref.second, labels, soft)
    ref_oriented = oriented(s.ref_logps, ref.first, [p["chosen"] for p in pairs.pairs])
    steps = steps_for(len(pairs), t.batch_size, config.caid.epochs_per_iteration)
    trainer = cluster.new_trainer(start, "causal_lm", total_steps=steps, rows_per_example=2)
    try:
        spec = DPOSpec(beta=beta, label_smoothing=config.dpo.label_smoothing, loss_type=config.dpo.loss_type)
        clock = time.perf_counter()  # the trainer's start-up is not training time, as in dpo_run
        train_pairs(
            trainer,
            pairs,
            ref_oriented,
            spec,
            pad_id=s.pad_id,
            batch_size=t.batch_size,
            epochs=config.caid.epochs_per_iteration,
            seed=config.seed + it,
            out=out,
            stage=f"{STAGE}_dpo_{it}",
        )
        seconds = time.perf_counter() - clock
        sync = cluster.sync_weights(trainer)
        checkpoint = trainer.save(str(out.checkpoint(STAGE)))
    finally:
        trainer.shutdown()
    return checkpoint, sync, seconds


def measure(config: JobConfig, cluster: Cluster, s: Setup, it: int) -> tuple[np.ndarray, float]:
    """Step 3: (slack u [m], mean β h_r) of a fresh on-policy sample of the generators' policy."""
    c, beta = config.caid, config.can.beta
    sampling = sampling_from(config, n=c.samples_per_prompt, seed=config.generation.seed + 1 + it)
    rollouts = cluster.generator.generate(s.reference.prompt_ids, sampling)
    h_r, h_g = implicit_scores(
        config,
        cluster,
        rollout_examples(rollouts),
        policy_h=s.reference.policies["helpfulness"],
        policy_s=s.reference.policies["safety"],
    )
    u = on_policy_slack(h_g, np.asarray(rollouts.prompt_index), s.tau, beta)
    return u, float(beta * h_r.mean())


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    name, _ = pecan_margin(config, "PeCAID", "MoCAID (caid.form: model)")  # before any training
    names, c = [name], config.caid
    resumed = resume_point(config, out)
    start = resumed[0] if resumed else 0
    s = setup(config, cluster, out)
    if resumed:
        cluster.coordinator.restore(str(resumed[1] / DUAL_FILE))
    elif c.warm_start:  # PeCAN's λ* on the β·h table, capped at dual.lam_max; not converged: only a warning
        cluster.coordinator.solve(
            s.reference.samples.table(), config.can.beta, margin=[s.margin], strict=False
        )
    history = [
        {k: v for k, v in row.items() if k not in ("step", "stage")}
        for row in out.metrics(STAGE)
        if row["step"] < start
    ]
    out.drop_metrics(*(f"{STAGE}_dpo_{it}" for it in range(start, c.iterations)))
    out.drop_metrics(STAGE, from_step=start)
    theta = str(resumed[1]) if resumed else cluster.policy_path
    lam = np.asarray(cluster.coordinator.lam())
    # π_ref's pass over the pairs and every DPO step (DPO_H's and DPO_S's are their stages' records)
    train_seconds = s.ref_seconds
    for it in range(start, c.iterations):
        theta, sync, seconds = maximise(config, cluster, out, s, lam, it, theta)  # 1-2
        train_seconds += seconds
        u, reward = measure(config, cluster, s, it)  # 3
        record = {
            "iteration": it,
            "lambda": lam.tolist(),  # the λ this iteration's policy was trained at
            "slack": u.tolist(),
            "sync_seconds": sync["seconds"],
            "train_seconds": seconds,
            "mean_reward": reward,  # Ê_π[β h_r]: the reward up to a per-prompt constant
        }
        lam = np.asarray(cluster.coordinator.update(u))  # 4
        record["next_lambda"] = lam.tolist()
        out.log_metrics(it, STAGE, record)
        logger.info(iteration_line(it + 1, c.iterations, names, record, method=STAGE))
        history.append(record)
        every = config.checkpoint.every
        if every and ((it + 1) % every == 0 or it + 1 == c.iterations):
            save_iteration(config, out, it + 1, theta, cluster.coordinator)
    result = {
        "checkpoint": str(out.checkpoint(STAGE)) if history else theta,
        "policies": s.reference.policies,
        "lambda": dict(zip(names, np.asarray(cluster.coordinator.lam()).tolist())),
        "iterations": history,
        "resumed_from_iteration": start,
        "final_slack": dict(zip(names, history[-1]["slack"])) if history else {},
        "label_form": config.can.pecan_label,
        "pairs": len(s.reference.first),
        "train_seconds": round(train_seconds, 3),  # this attempt's
    }
    out.write_result(result)
    return result


def resume_point(config: JobConfig, out: RunDir) -> tuple[int, Path] | None:
    """(iterations done, folder) of the newest complete iteration checkpoint this config wrote, or None."""
    return resume_from(config, out, ITER_PREFIX, config_fingerprint(config))


def save_iteration(config: JobConfig, out: RunDir, done: int, theta: str, coordinator) -> None:
    """checkpoints/pecaid_iter_{done}: a copy of θ, the config's fingerprint, then the coordinator's state
    (last: a folder without it is incomplete and never resumed from); older ones beyond checkpoint.keep go."""
    path = out.checkpoint(f"{ITER_PREFIX}{done:04d}")
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(theta, path)
    atomic_write_text(path / FINGERPRINT_FILE, config_fingerprint(config))  # before the dual state
    coordinator.save(str(path / DUAL_FILE))
    out.prune_checkpoints(ITER_PREFIX, config.checkpoint.keep)
