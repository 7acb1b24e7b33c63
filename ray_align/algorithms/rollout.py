"""The pieces of one PPO-Lagrangian step that are not the loop itself (ray_align.algorithms.ppo_lag).

    prompt_indices        which prompts the k-th rollout batch samples (epoch-wise permutations)
    call_all              calls on different actors, issued together (the experience and training passes)
    collect_experience    one rollout → token tensors, old / reference log-probs, reward and cost values
    lagrangian_targets    KL-shaped streams → GAE per stream → the Lagrangian advantage and the critics' returns
    with_lambda           the same targets for another λ (several λ updates per rollout)
    minibatches           the actor's and the critics' train batches for some rows of the rollout
    save_checkpoint / resume_point        actor, critics, fingerprint and dual state of one step; where to resume

Shapes: B rollouts (one response per prompt), T tokens after padding, per-token tensors [B, T-1] in the
next-token convention of ray_align.cluster, m constraints.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ray_align.algorithms.common import ScoredSamples
from ray_align.cluster import Cluster, PolicyTrainer
from ray_align.config.schema import JobConfig
from ray_align.data.formatting import collate, join_example
from ray_align.rl.advantages import gae, masked_sum, masked_whiten
from ray_align.rl.kl import kl_k1, lagrangian_advantage, shaped_streams
from ray_align.run_dir import RunDir, atomic_write_text

logger = logging.getLogger(__name__)

STEP_PREFIX = "step_"
DUAL_FILE = "dual.json"  # written last into a step's checkpoint: its presence marks the checkpoint complete
FINGERPRINT_FILE = "config_fingerprint"  # the settings a checkpoint was written with (config_fingerprint)


def prompt_indices(n_prompts: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Prompt indices of RL step ``step`` (1-based): consecutive slices of a stream of shuffled epochs.

    Epoch e is a permutation of range(n_prompts) seeded by (seed, e); step k takes stream items
    [(k−1)·B, k·B). A pure function of the step, so a resumed run samples the prompts the uninterrupted run
    would have. Returns [batch_size] int64.
    """
    if n_prompts < 1:
        raise ValueError("no prompts to sample from")
    stream = np.arange((step - 1) * batch_size, step * batch_size)
    epochs, within = np.divmod(stream, n_prompts)
    perms = {int(e): np.random.default_rng([seed, int(e)]).permutation(n_prompts) for e in np.unique(epochs)}
    return np.array([perms[int(e)][i] for e, i in zip(epochs, within)], dtype=np.int64)


def ragged_to_tokens(rows: Sequence[Sequence[float]], prompt_lengths: Sequence[int], width: int) -> Tensor:
    """Per-response-token values (ragged, row b has R_b entries) → [B, width] in next-token positions.

    Response token j of row b is input token P_b + j, the target of position P_b − 1 + j; other positions are 0.
    """
    out = torch.zeros(len(rows), width)
    for b, (row, p) in enumerate(zip(rows, prompt_lengths, strict=True)):
        out[b, p - 1 : p - 1 + len(row)] = torch.as_tensor(row, dtype=torch.float32)
    return out


@dataclass
class Experience:
    """One scored rollout as the models saw it before this step's update.

    batch: input_ids, attention_mask [B, T] and response_mask [B, T-1]; logprobs = log π_old and
    ref_logprobs = log π_ref [B, T-1]; reward [B]; costs [B, m] (cost scale); reward_values [B, T-1] and
    cost_values [B, T-1, m] from the critics.
    """

    batch: dict[str, Tensor]
    logprobs: Tensor
    ref_logprobs: Tensor
    reward: Tensor
    costs: Tensor
    reward_values: Tensor
    cost_values: Tensor

    def __len__(self) -> int:
        return self.reward.shape[0]


def call_all(calls: Sequence[Callable[[], Any]], concurrent: bool = True) -> list[Any]:
    """The results of zero-argument ``calls`` that each wait on their own actors: issued together from threads
    (``ray.get`` releases the GIL), or one after another with ``concurrent=False``."""
    if not concurrent or len(calls) < 2:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


def in_turn(calls: Sequence[Callable[[], Any]]) -> Callable[[], list[Any]]:
    """One call that makes ``calls`` one after another (a lane of :func:`call_all`)."""
    return lambda: [call() for call in calls]


def collect_experience(
    cluster: Cluster,
    actor: PolicyTrainer,
    critics: Sequence[PolicyTrainer],
    samples: ScoredSamples,
    pad_id: int,
    concurrent: bool = True,
    behaviour_logprobs: bool = False,
) -> Experience:
    """Old log-probs (the actor), reference log-probs (cluster.reference) and values (critics[0] for the reward,
    critics[1 + j] for constraint j) of the sampled responses. With ``behaviour_logprobs`` the old log-probs are
    the ones the engines returned with the samples (the sampling policy, when it is not the actor's current
    weights: ppo.async_rollout) and the actor is not called.

    The actor, the reference and the critics are different actors, so by default their forwards are issued
    together (:func:`call_all`; the 1 + m critics one after another, as they share bundles); ``concurrent=False``
    runs everything in turn (ppo.concurrent_calls).
    """
    r = samples.rollouts
    batch = collate([join_example(p, y) for p, y in zip(r.prompt_ids, r.response_ids)], pad_id)
    width = batch["response_mask"].shape[1]
    prompt_lengths = [len(p) for p in r.prompt_ids]
    if behaviour_logprobs:
        old = partial(ragged_to_tokens, r.response_logprobs, prompt_lengths, width)
    else:
        old = partial(actor.logprobs, batch)
    ref, logprobs, values = call_all(
        [
            partial(cluster.reference.response_logprobs, r.prompt_ids, r.response_ids),
            old,
            in_turn([partial(c.values, batch) for c in critics]),  # the critic groups share their bundles
        ],
        concurrent,
    )
    return Experience(
        batch=batch,
        logprobs=logprobs,
        ref_logprobs=ragged_to_tokens(ref, prompt_lengths, width),
        reward=torch.as_tensor(samples.reward, dtype=torch.float32),
        costs=torch.as_tensor(samples.costs, dtype=torch.float32).reshape(len(r), -1),
        reward_values=values[0],
        cost_values=torch.stack(values[1:], dim=-1),
    )


@dataclass
class Targets:
    """advantages [B, T-1] (the Lagrangian one, for the actor); reward_returns [B, T-1] and cost_returns
    [B, T-1, m] (for the critics); reward_advantages / cost_advantages before combining (for stats)."""

    advantages: Tensor
    reward_returns: Tensor
    cost_returns: Tensor
    reward_advantages: Tensor
    cost_advantages: Tensor


def lagrangian_targets(
    exp: Experience,
    lam: Sequence[float] | np.ndarray,
    *,
    kl_coef: float,
    clip_range_score: float,
    kl_in_cost: bool,
    gamma: float,
    gae_lambda: float,
    whiten: bool = False,
) -> Targets:
    """Safe RLHF's step 1–3 targets for a fixed λ [m]:

        reward_t = −k·d_t + [t = T]·R,   cost_{t,j} = +k·d_t + [t = T]·C_j   (d = log π_old − log π_ref)
        A_r, G_r = GAE(reward, V_r);     A_cj, G_cj = GAE(cost_j, V_cj)       (γ, λ_GAE)
        A = (A_r − Σ_j λ_j A_cj) / (1 + Σ_j λ_j)

    ``whiten`` standardises A over the rollout's response tokens (the reference does not: default off). It
    only rescales and shifts A by constants, so the policy's fixed point is unchanged.
    """
    mask = exp.batch["response_mask"]
    rewards, costs = shaped_streams(
        exp.logprobs, exp.ref_logprobs, mask, exp.reward, exp.costs, kl_coef, clip_range_score, kl_in_cost
    )
    adv_r, ret_r = gae(rewards, exp.reward_values, mask, gamma, gae_lambda)
    per_cost = [
        gae(costs[..., j], exp.cost_values[..., j], mask, gamma, gae_lambda) for j in range(costs.shape[-1])
    ]
    adv_c = torch.stack([a for a, _ in per_cost], dim=-1)
    ret_c = torch.stack([g for _, g in per_cost], dim=-1)
    return with_lambda(Targets(adv_r, ret_r, ret_c, adv_r, adv_c), lam, mask, whiten)


def with_lambda(
    targets: Targets, lam: Sequence[float] | np.ndarray, mask: Tensor, whiten: bool = False
) -> Targets:
    """The targets for the multiplier λ [m]: A = (A_r − Σ_j λ_j A_cj) / (1 + Σ_j λ_j), whitened over the response
    tokens ``mask`` [B, T-1] if asked. The streams' advantages and the critics' returns do not depend on λ."""
    lam_t = torch.tensor(np.asarray(lam, dtype=np.float64))
    advantages = lagrangian_advantage(targets.reward_advantages, targets.cost_advantages, lam_t)
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return replace(targets, advantages=advantages)


def sequence_kl(exp: Experience) -> float:
    """Mean over rollouts of Σ_t (log π_old − log π_ref) over the response: the k1 estimate of KL(π‖π_ref)."""
    d = kl_k1(exp.logprobs, exp.ref_logprobs)
    return masked_sum(d, exp.batch["response_mask"], dim=-1).mean().item()


def minibatches(
    exp: Experience, targets: Targets, idx: np.ndarray
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Rows ``idx`` as (actor batch for PPOSpec, [reward critic batch, cost critic batches...] for ValueSpec)."""
    rows = torch.as_tensor(idx, dtype=torch.long)
    base = {k: v[rows] for k, v in exp.batch.items()}
    actor = base | {"old_logprobs": exp.logprobs[rows], "advantages": targets.advantages[rows]}
    critics = [base | {"old_values": exp.reward_values[rows], "returns": targets.reward_returns[rows]}]
    for j in range(exp.cost_values.shape[-1]):
        critics.append(
            base | {"old_values": exp.cost_values[rows, :, j], "returns": targets.cost_returns[rows, :, j]}
        )
    return actor, critics


def mean_stats(stats: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise mean of the per-minibatch stats."""
    keys = sorted({k for s in stats for k in s})
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in keys}


# ---- checkpoints ---------------------------------------------------------------------------------------------


def critic_dirs(checkpoint: Path, names: Sequence[str]) -> list[Path]:
    """Where the reward critic and the cost critic of each constraint sit inside a step checkpoint."""
    return [checkpoint / "critics" / "reward", *(checkpoint / "critics" / f"cost_{n}" for n in names)]


def save_checkpoint(
    out: RunDir,
    step: int,
    actor: PolicyTrainer,
    critics: Sequence[PolicyTrainer],
    coordinator,
    names: Sequence[str],
    keep: int,
    fingerprint: str,
) -> Path:
    """checkpoints/step_{k:06d}: the actor as a Hugging Face checkpoint, critics under critics/, the config's
    ``fingerprint``, then dual.json.

    The dual state is written last, so a step folder without it is incomplete and never resumed from.
    Older step folders beyond ``keep`` are deleted.
    """
    path = out.checkpoint(f"{STEP_PREFIX}{step:06d}")
    actor.save(str(path))
    for critic, folder in zip(critics, critic_dirs(path, names), strict=True):
        critic.save(str(folder))
    atomic_write_text(path / FINGERPRINT_FILE, fingerprint)
    coordinator.save(str(path / DUAL_FILE))
    out.prune_checkpoints(STEP_PREFIX, keep)
    return path


def latest_checkpoint(out: RunDir, prefix: str = STEP_PREFIX) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint ``{prefix}{step}`` of the run (one with DUAL_FILE), or
    None. CAID uses it with its own prefix for iterations."""
    folder = out.path("checkpoints")
    if not folder.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := re.fullmatch(rf"{re.escape(prefix)}(\d+)", p.name)) and (p / DUAL_FILE).is_file()
    ]
    return max(found) if found else None


def resume_point(config: JobConfig, out: RunDir, prefix: str, fingerprint: str) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint ``{prefix}{step}`` if it was written with ``fingerprint``
    and checkpoint.resume is on, else None. Without one, the run's ``prefix`` checkpoints are deleted (written
    with other settings, or before fingerprints were recorded): the run starts over."""
    found = latest_checkpoint(out, prefix) if config.checkpoint.resume else None
    if found:
        recorded = found[1] / FINGERPRINT_FILE
        if recorded.is_file() and recorded.read_text() == fingerprint:
            return found
        logger.info("checkpoints %s* in %s were written with other settings; starting over", prefix, out.root)
    out.prune_checkpoints(prefix, keep=0)
    return None
