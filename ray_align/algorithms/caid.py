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

The DPO reference stays π_ref throughout (the KL in the objective is to π_ref); its log-probs are taken once,
before the first step. The pairs are π_ref samples (or the dataset's pairs, can.pairs), as in MoCAN.

Resume: with checkpoint.every = n, θ, the config's fingerprint and the coordinator's state are saved after every
n-th iteration and the last (checkpoints/caid_iter_XXXX). A rerun of the same job with checkpoint.resume continues
after the newest complete one; step 0 is recomputed (seeded, so the same samples and pairs), the optimizer's
moments and the learning-rate schedule start fresh, as in PPO-Lagrangian.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from ray_align.algorithms.common import (
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


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    names, c, t = cluster.constraint_names, config.caid, config.training
    train, _ = load_dataset(config)
    tokenizer = AutoTokenizer.from_pretrained(cluster.policy_path)
    bounds = dual_bounds(config, names)
    resumed = resume_point(config, out)
    start = resumed[0] if resumed else 0
    # 0. π_ref samples: the reference utilities, the warm start and the pairs (recomputed on resume: seeded)
    texts = prompt_texts(train, c.num_prompts)
    ids = prompt_token_ids(texts, config, cluster.policy_path)
    generators_on_reference(config, cluster)
    ref_samples = sample_and_score(cluster, ids, sampling_from(config, n=c.samples_per_prompt))
    table = ref_samples.table()
    tau = thresholds(table, margin=bounds["margin"], threshold=bounds["threshold"])
    if resumed:
        cluster.coordinator.restore(str(resumed[1] / DUAL_FILE))
    elif c.warm_start:  # capped at dual.lam_max; a non-converged solve only warns: the iterations correct it
        cluster.coordinator.solve(table, config.can.beta, strict=False, **bounds)
    if config.can.pairs == "samples":
        first, second, (r0, r1, g0, g1) = sample_pairs(ref_samples, ids)
    else:
        first, second, (r0, r1, g0, g1) = dataset_pairs_scored(cluster, train, tokenizer, config)

    per_iteration = steps_for(len(first), t.batch_size, c.epochs_per_iteration)
    steps = max(1, c.iterations - start) * per_iteration
    pad_id = tokenizer_pad_id(tokenizer, config.models.pad_token)
    both = [{"chosen": a, "rejected": b} for a, b in zip(first, second)]
    # π_ref log-probs of both orientations; the labels only pick "chosen". From models.reference when it is
    # another checkpoint (before θ's trainer takes the bundles), else from θ's initial weights.
    ref_path = reference_path(config, cluster)
    ref = (
        None
        if ref_path == cluster.policy_path
        else reference_pair_logps(cluster, ref_path, both, pad_id, t.batch_size)
    )
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
    try:
        if ref is None:
            ref = pair_logps(trainer, both, pad_id, t.batch_size)
        if resumed:  # θ_start; the generators sample it only after the next DPO step, which syncs them
            trainer.load(str(resumed[1]))
        spec = DPOSpec(
            beta=config.can.beta, label_smoothing=config.dpo.label_smoothing, loss_type=config.dpo.loss_type
        )
        soft = config.can.label == "soft"
        lam = np.asarray(cluster.coordinator.lam())
        for it in range(start, c.iterations):
            # 1. Lagrangian maximisation at λ_t: DPO on pairs relabelled by r + λ_tᵀg, reference π_ref
            labels = mocan_labels(r0, r1, g0, g1, lam, rng=config.seed + it, soft=soft)
            pairs = labelled_pairs(first, second, labels, soft)
            flip = np.asarray([p["chosen"] is not a for p, a in zip(pairs.pairs, first)])
            ref_oriented = np.where(flip[:, None], ref[:, ::-1], ref)
            train_pairs(
                trainer,
                pairs,
                ref_oriented,
                spec,
                pad_id=pad_id,
                batch_size=t.batch_size,
                epochs=c.epochs_per_iteration,
                seed=config.seed + it,
                out=out,
                stage=f"caid_dpo_{it}",
            )
            # 2. the generators now sample θ_{t+1}
            sync = cluster.sync_weights(trainer)
            # 3. on-policy sample of θ_{t+1} and its constraint slack u
            sampling = sampling_from(config, n=c.samples_per_prompt, seed=config.generation.seed + 1 + it)
            samples = sample_and_score(cluster, ids, sampling)
            u = slack(samples.utilities, np.asarray(samples.rollouts.prompt_index), tau)
            # 4. dual descent in the coordinator: λ_{t+1} = [λ_t − η u]₊
            record = {
                "iteration": it,
                "lambda": lam.tolist(),  # the λ this iteration's policy was trained at
                "slack": u.tolist(),
                "sync_seconds": sync["seconds"],
                "mean_reward": float(samples.reward.mean()),
            }
            lam = np.asarray(cluster.coordinator.update(u))
            record["next_lambda"] = lam.tolist()
            out.log_metrics(it, "caid", record)
            logger.info(iteration_line(it + 1, c.iterations, names, record))
            history.append(record)
            every = config.checkpoint.every
            if every and ((it + 1) % every == 0 or it + 1 == c.iterations):
                save_iteration(config, out, it + 1, trainer, cluster.coordinator)
        checkpoint = trainer.save(str(out.checkpoint("caid")))
    finally:
        trainer.shutdown()
    result = {
        "checkpoint": checkpoint,
        "lambda": dict(zip(names, np.asarray(cluster.coordinator.lam()).tolist())),
        "iterations": history,
        "resumed_from_iteration": start,
        "final_slack": dict(zip(names, history[-1]["slack"])) if history else {},
    }
    out.write_result(result)
    return result


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
    lam = ", ".join(
        f"{n} {a:.3g} → {b:.3g}" for n, a, b in zip(names, record["lambda"], record["next_lambda"])
    )
    slack = ", ".join(f"{n} {u:.3g}" for n, u in zip(names, record["slack"]))
    return f"{method} iteration {done}/{total} · λ {lam} · slack {slack} · reward {record['mean_reward']:.3g}"
