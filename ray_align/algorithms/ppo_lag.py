"""PPO-Lagrangian, Safe RLHF (Dai et al., ICLR 2024): iterative primal-dual RLHF under cost constraints.

    maximise E_π[R] − k·KL(π‖π_ref)   subject to   E_π[C_j] ≤ d_j,  j = 1..m   (absolute thresholds)

Per RL step k = 1..ppo.steps:
    1. sample one response per prompt of a rollout batch from π_θ (temperature 1) through the generators
    2. score the reward R and the costs C_j (cost scale) through the scorer
       (ppo.async_rollout: steps 1-2 of step k+1 run during steps 3-6 of step k, from the weights before
       step k's update; ray_align/algorithms/rollout_source.py)
    3. log π_old (the actor; with async_rollout the engines' behaviour log-probs), log π_ref (the reference),
       values V_r and V_cj (one critic per stream)
    4. λ update: the coordinator's rule on this rollout's per-episode costs (safe_rlhf: one SGD step on log λ
       against the mean cost of the last 128 episodes); λ is then held constant in the actor step. As in the
       reference trainer, the update comes before the actor step and sees this rollout's costs. With
       ppo.lambda_updates_per_rollout = U > 1 the rule steps U times (dual_updates)
    5. KL-shaped reward and cost streams, GAE on each, A = (A_r − Σ_j λ_j A_cj) / (1 + Σ_j λ_j) for each λ
    6. ppo.ppo_epochs over the rollout in minibatches of training.batch_size: actor PPO-clip (the u-th λ for
       the u-th of U equal shares of the minibatches), critics clipped value loss
    7. weight sync actor → generators
    8. metrics; every checkpoint.every steps (and at the end) actor, critics and dual state

Resume: with checkpoint.resume and a complete step checkpoint written with the same settings (the config's
fingerprint, less ppo.steps) in the run folder, the actor and the critics restart from its weights and the
coordinator from its dual state (λ, the cost window, the history); steps continue from the next one. Optimizer
moments and learning-rate schedules start fresh. Checkpoints of other settings are deleted and the run starts
over, as CAID's. See docs/methods-ppo-lag.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from ray_align.algorithms.common import (
    load_dataset,
    prompt_texts,
    prompt_token_ids,
)
from ray_align.algorithms.preference import batches
from ray_align.algorithms.rollout import (
    DUAL_FILE,
    STEP_PREFIX,
    Experience,
    Targets,
    call_all,
    collect_experience,
    critic_dirs,
    in_turn,
    lagrangian_targets,
    mean_stats,
    minibatches,
    save_checkpoint,
    sequence_kl,
    with_lambda,
)
from ray_align.algorithms.rollout import resume_point as resume_from
from ray_align.algorithms.rollout_source import RolloutSource, sample_rollout
from ray_align.algorithms.stages import config_fingerprint
from ray_align.cluster import Cluster, PolicyTrainer
from ray_align.config.schema import JobConfig
from ray_align.data.formatting import tokenizer_pad_id
from ray_align.losses.specs import PPOSpec, ValueSpec
from ray_align.progress import step_line
from ray_align.run_dir import RunDir

logger = logging.getLogger(__name__)
ROLES = ("generator", "scorer", "trainer", "reference", "critic")
STAGE = "ppo_lag"
DUAL_RULES = ("safe_rlhf", "pid", "constant")  # the cost-form rules (ray_align.dual.rules)


def console_keys(names: list[str]) -> tuple[str, ...]:
    """What one console line per RL step shows: reward, each cost and λ, KL, seconds."""
    return ("reward", *(f"cost_{n}" for n in names), *(f"lambda_{n}" for n in names), "kl", "step_seconds")


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    p, names = config.ppo, cluster.constraint_names
    thresholds = check_config(config, names)
    train, _ = load_dataset(config)
    texts = prompt_texts(train, config.data.max_prompts)
    prompt_ids = prompt_token_ids(texts, config, cluster.policy_path)
    pad_id = tokenizer_pad_id(AutoTokenizer.from_pretrained(cluster.policy_path))
    resumed = resume_point(config, out)
    start, checkpoint = (resumed[0], str(resumed[1])) if resumed else (0, None)
    if resumed:
        cluster.coordinator.restore(str(resumed[1] / DUAL_FILE))
    out.drop_metrics(STAGE, from_step=start + 1)  # steps an interrupted attempt ran past its last checkpoint
    metrics: dict = {}
    if start < p.steps:
        actor, critics = start_models(config, cluster, checkpoint, p.steps - start)
        try:
            if resumed:  # the engines were built from models.policy
                cluster.sync_weights(actor)
            sample = partial(sample_rollout, config, cluster, out, texts, prompt_ids)
            with RolloutSource(sample, ahead=p.async_rollout) as rollouts:
                metrics, checkpoint = train_steps(
                    config, cluster, out, actor, critics, rollouts, range(start + 1, p.steps + 1), pad_id
                )  # the last step always checkpoints
        finally:
            for trainer in (actor, *critics):
                trainer.shutdown()
    lam = np.asarray(cluster.coordinator.lam())
    result = {
        "checkpoint": checkpoint,
        "steps": p.steps,
        "resumed_from_step": start,
        "lambda": dict(zip(names, lam.tolist())),
        "thresholds": dict(zip(names, thresholds.tolist())),
        "last_step": metrics,
    }
    out.write_result(result)
    return result


def train_steps(
    config: JobConfig,
    cluster: Cluster,
    out: RunDir,
    actor: PolicyTrainer,
    critics: list[PolicyTrainer],
    rollouts: RolloutSource,
    steps: range,
    pad_id: int,
) -> tuple[dict[str, float], str]:
    """RL ``steps`` (step 8 included); returns the last step's metrics and the newest checkpoint."""
    p, names = config.ppo, cluster.constraint_names
    metrics, checkpoint = {}, ""
    for k in steps:
        metrics = rl_step(k, config, cluster, actor, critics, rollouts, pad_id)
        # 8. metrics; checkpoints every checkpoint.every steps and at the end
        out.log_metrics(k, STAGE, metrics)
        if k % config.logging.every == 0 or k == p.steps:
            logger.info(step_line(STAGE, k, p.steps, metrics, console_keys(names)))
        every = config.checkpoint.every
        if k == p.steps or (every and k % every == 0):
            fingerprint = checkpoint_fingerprint(config)
            saved = save_checkpoint(
                out, k, actor, critics, cluster.coordinator, names, config.checkpoint.keep, fingerprint
            )
            checkpoint = str(saved)
    return metrics, checkpoint


def checkpoint_fingerprint(config: JobConfig) -> str:
    """The settings a step checkpoint must share with the run that resumes it: all that change what a step
    computes (stages.config_fingerprint), except ppo.steps, so that raising it extends a finished run."""
    return config_fingerprint(config, {"ppo": {"steps"}})


def resume_point(config: JobConfig, out: RunDir) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete step checkpoint written with these settings, or None (as CAID: step
    checkpoints of other settings are deleted and the run starts over)."""
    return resume_from(config, out, STEP_PREFIX, checkpoint_fingerprint(config))


def rl_step(
    k: int,
    config: JobConfig,
    cluster: Cluster,
    actor: PolicyTrainer,
    critics: list[PolicyTrainer],
    rollouts: RolloutSource,
    pad_id: int,
) -> dict[str, float]:
    """Steps 1–7 of RL step ``k``; returns the step's metrics."""
    p, names = config.ppo, cluster.constraint_names
    began = time.perf_counter()
    # 1-2. rollout: sampled now, or prefetched during the previous step (ppo.async_rollout)
    rollout = rollouts.take(k)
    samples = rollout.samples
    if k < p.steps:
        rollouts.prefetch(k + 1)  # async_rollout: from the engines' weights, θ before this step
    # 3. log π_old (or the engines' behaviour log-probs), log π_ref, V_r, V_c (issued together)
    scored = time.perf_counter()
    exp = collect_experience(
        cluster,
        actor,
        critics,
        samples,
        pad_id,
        concurrent=p.concurrent_calls,
        behaviour_logprobs=rollouts.ahead,
    )
    experience_seconds = time.perf_counter() - scored
    # 4. λ from this rollout's per-episode costs: ppo.lambda_updates_per_rollout steps of the rule
    lams = dual_updates(cluster.coordinator, config.dual.rule, samples.costs, p.lambda_updates_per_rollout)
    # 5. KL-shaped streams, GAE per stream, A = (A_r − Σλ_j A_cj)/(1 + Σλ_j) for each λ
    targets = lagrangian_targets(
        exp,
        lams[0],
        kl_coef=p.kl_coef,
        clip_range_score=p.clip_range_score,
        kl_in_cost=p.kl_in_cost,
        gamma=p.gamma,
        gae_lambda=p.gae_lambda,
        whiten=p.whiten_advantages,
    )
    mask = exp.batch["response_mask"]
    per_update = [targets] + [with_lambda(targets, lam, mask, p.whiten_advantages) for lam in lams[1:]]
    # 6. PPO epochs: actor PPO-clip (λ_u for the u-th share of the minibatches), critics clipped value loss
    trained = time.perf_counter()
    train_stats = ppo_epochs(
        config, actor, critics, exp, per_update, names, seed=config.seed + k, concurrent=p.concurrent_calls
    )
    train_seconds = time.perf_counter() - trained
    # 7. weight sync actor → generators, once no sampling is in flight (the state dict gather is part of it)
    settle_seconds = rollouts.settle()
    synced = time.perf_counter()
    sync = cluster.sync_weights(actor)
    response, lam = mask.bool(), lams[-1]
    return {
        "reward": float(samples.reward.mean()),
        **{f"cost_{n}": float(samples.costs[:, j].mean()) for j, n in enumerate(names)},
        **{f"lambda_{n}": float(lam[j]) for j, n in enumerate(names)},
        "kl": sequence_kl(exp),
        "response_length": response.sum(-1).float().mean().item(),
        "advantage": per_update[-1].advantages[response].mean().item(),
        **train_stats,
        "sync_seconds": time.perf_counter() - synced,
        "sync_engine_seconds": sync["seconds"],
        "sync_bytes": sync["bytes"],
        "rollout_seconds": rollout.seconds,
        "rollout_wait_seconds": rollout.waited,
        "experience_seconds": experience_seconds,
        "train_seconds": train_seconds,
        "settle_seconds": settle_seconds,
        "step_seconds": time.perf_counter() - began,
    }


def check_config(config: JobConfig, names: list[str]) -> np.ndarray:
    """Refuse what PPO-Lagrangian cannot run; return the cost thresholds d [m] in the order of ``names``."""
    by_name = {c.name: c for c in config.dual.constraints}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"ppo_lag needs a dual.constraints entry with a threshold for every cost model; missing {missing}"
        )
    margins = [n for n in names if by_name[n].margin is not None]
    if margins:
        raise ValueError(
            f"ppo_lag constrains the expected cost with an absolute threshold, E_π[C] ≤ d (Safe RLHF), but "
            f"dual.constraints {margins} set a margin (an improvement over π_ref, the CAN/CAID form). "
            "Set `threshold` instead (Safe RLHF uses threshold: 0.0)."
        )
    if config.dual.rule not in DUAL_RULES:
        raise ValueError(
            f"ppo_lag updates λ from costs: dual.rule must be one of {DUAL_RULES}, got {config.dual.rule!r}"
        )
    p = config.ppo
    if p.rollout_batch_size % config.training.batch_size:
        raise ValueError(
            f"ppo.rollout_batch_size ({p.rollout_batch_size}) must be a multiple of "
            f"training.batch_size ({config.training.batch_size}), the rows of one optimizer step"
        )
    steps = p.ppo_epochs * (p.rollout_batch_size // config.training.batch_size)
    if steps % p.lambda_updates_per_rollout:
        raise ValueError(
            f"ppo.lambda_updates_per_rollout ({p.lambda_updates_per_rollout}) must divide the {steps} optimizer "
            "steps of a rollout (ppo.ppo_epochs × ppo.rollout_batch_size / training.batch_size)"
        )
    return np.array([by_name[n].threshold for n in names], dtype=np.float64)


def dual_estimate(rule: str, costs: np.ndarray) -> np.ndarray:
    """What the coordinator's rule takes: per-episode costs [n, m] (safe_rlhf keeps its own window), else J_C [m]."""
    return costs if rule == "safe_rlhf" else costs.mean(axis=0)


def dual_updates(coordinator, rule: str, costs: np.ndarray, updates: int) -> list[np.ndarray]:
    """λ [m] after each of the rollout's ``updates`` rule steps (ppo.lambda_updates_per_rollout).

    The first step takes this rollout's per-episode costs [B, m]; the others step again on the same estimate
    (safe_rlhf: its window, which now holds this rollout; pid: the rollout's mean cost J_C). This is the
    reference trainer's schedule: its rollout fills the window before training, then every optimizer step
    takes one λ step. No step depends on the training, so all are taken before the actor's first step.
    """
    estimate = dual_estimate(rule, costs)
    again = estimate[:0] if rule == "safe_rlhf" else estimate  # no new episodes for the window
    return [np.asarray(coordinator.update(estimate if u == 0 else again)) for u in range(updates)]


def start_models(
    config: JobConfig, cluster: Cluster, checkpoint: str | None, steps: int
) -> tuple[PolicyTrainer, list[PolicyTrainer]]:
    """The actor and the 1 + m critics (reward first, then one per constraint), from a step checkpoint or from
    models.policy / models.critic / models.cost_critic."""
    names = cluster.constraint_names
    if checkpoint is None:
        actor_path = cluster.policy_path
        critic_paths = [cluster.critic_path] + [cluster.cost_critic_path] * len(names)
    else:
        actor_path, critic_paths = checkpoint, [str(d) for d in critic_dirs(Path(checkpoint), names)]
    if any(path is None for path in critic_paths):
        raise ValueError("ppo_lag needs critics: set models.critic and models.cost_critic (or models.tiny)")
    updates = steps * config.ppo.ppo_epochs * (config.ppo.rollout_batch_size // config.training.batch_size)
    # started side by side (each rank's process start, imports and engine build overlap), then awaited
    actor = cluster.new_trainer(actor_path, "causal_lm", total_steps=updates, wait=False)
    critics = [
        cluster.new_trainer(
            path, "token_value", total_steps=updates, lr=config.training.critic_lr, role="critic", wait=False
        )
        for path in critic_paths
    ]
    for trainer in (actor, *critics):
        trainer.wait_ready()
    return actor, critics


def ppo_epochs(
    config: JobConfig,
    actor: PolicyTrainer,
    critics: list[PolicyTrainer],
    exp: Experience,
    targets: Sequence[Targets],
    names: list[str],
    seed: int,
    concurrent: bool = True,
) -> dict[str, float]:
    """ppo.ppo_epochs shuffled passes over the rollout; per minibatch one actor step and one step per critic.
    ``targets`` holds one entry per λ update of the rollout: the u-th serves the u-th equal share of the
    minibatches, in order. The actor's step and the critics' (in turn, as they share bundles) are issued
    together unless ``concurrent`` is False (ppo.concurrent_calls)."""
    actor_spec = PPOSpec(clip_eps=config.ppo.clip_eps, ptx_coef=config.ppo.ptx_coef)
    value_spec = ValueSpec(clip=config.ppo.value_clip)
    critic_keys = ["reward_critic", *(f"cost_critic_{n}" for n in names)]
    stats = []
    order = batches(len(exp), config.training.batch_size, config.ppo.ppo_epochs, seed)
    per_update = len(order) // len(targets)
    for step, idx in enumerate(order):
        actor_batch, critic_batches = minibatches(exp, targets[step // per_update], idx)
        critic_steps = [
            partial(critic.train_step, batch, value_spec)
            for critic, batch in zip(critics, critic_batches, strict=True)
        ]
        a, critic_stats = call_all(
            [
                partial(actor.train_step, actor_batch, actor_spec),
                in_turn(critic_steps),
            ],  # critics share bundles
            concurrent,
        )
        row = {"actor_loss": a["loss"], "actor_grad_norm": a["grad_norm"], "actor_lr": a["lr"]}
        row |= {key: a[key] for key in ("clip_frac", "approx_kl", "ratio")}
        row |= {f"{key}_loss": c["loss"] for key, c in zip(critic_keys, critic_stats, strict=True)}
        stats.append(row)
    return mean_stats(stats)
