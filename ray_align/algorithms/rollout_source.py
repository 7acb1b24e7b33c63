"""PPO-Lagrangian's rollouts: what one RL step samples, and when — when the step asks, or one step ahead.

With ``ppo.async_rollout`` the engines sample step k+1's rollout while the trainers train step k:

    step k:   take rollout k ─ prefetch k+1 (engines hold θ_{k-1}) ─ experience, λ, PPO epochs on θ_k ─
              settle (wait for k+1's sampling) ─ sync θ_k → engines
    step k+1: rollout k+1 is ready (sampled from θ_{k-1}); the actor is θ_k

So every rollout after the first is one update old. The PPO ratio is then taken against the behaviour policy
that produced the samples, log μ = the log-probs the engines returned with each token, instead of the actor's
recomputed log π_θ (which would be the previous step's weights, not the sampler's). The engines' weights can only
change between generate calls, hence the settle before each sync. On one machine the two phases share the cores,
so the gain is whatever the trainers leave idle; on a cluster, generation and training run on separate GPUs and
the step takes max(sample, train) instead of their sum. docs/methods-ppo-lag.md has the measured speedup.

CAID's iterations take their on-policy samples from the same source (caid.async_rollout, ray_align/algorithms/caid.py:
θ_t is sampled during its own DPO step).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from ray_align.algorithms.common import ScoredSamples, sample_and_score, sampling_from
from ray_align.algorithms.rollout import prompt_indices
from ray_align.cluster import Cluster, Sampling
from ray_align.config.schema import JobConfig
from ray_align.run_dir import RunDir


def sample_rollout(
    config: JobConfig, cluster: Cluster, out: RunDir, texts: list[str], prompt_ids: list[list[int]], k: int
) -> ScoredSamples:
    """Steps 1-2 of RL step ``k``: one response per prompt of the step's batch, scored (reward [B], costs [B, m])."""
    idx = prompt_indices(len(prompt_ids), config.ppo.rollout_batch_size, k, config.seed)
    samples = sample_and_score(cluster, [prompt_ids[i] for i in idx], rollout_sampling(config, k))
    if config.ppo.save_rollouts:
        names = cluster.constraint_names
        samples.write(out.path("tables", "rollouts", f"step_{k:06d}.parquet"), [texts[i] for i in idx], names)
    return samples


def rollout_sampling(config: JobConfig, step: int) -> Sampling:
    """One on-policy sample per prompt: temperature 1 and top_p 1 whatever generation.* says (the PPO ratio
    compares π_θ with the sampling distribution); a fresh seed per step, the same one on a resumed run."""
    return replace(sampling_from(config, n=1, seed=config.generation.seed + step), temperature=1.0, top_p=1.0)


@dataclass
class Rollout:
    """One step's scored samples and how long they took: ``seconds`` to sample and score them (on the engines),
    ``waited`` the step spent blocked on them (all of ``seconds`` when sampled on demand)."""

    samples: ScoredSamples
    seconds: float
    waited: float


class RolloutSource:
    """Rollouts for steps k = 1, 2, ...: ``sample(k)`` on demand, or one step ahead in a background thread
    (the calls wait on the generator and scorer actors; ``ray.get`` releases the GIL)."""

    def __init__(self, sample: Callable[[int], ScoredSamples], ahead: bool):
        self._sample = sample
        self.ahead = ahead
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout") if ahead else None
        self._pending: dict[int, Future] = {}

    def _timed(self, k: int) -> tuple[ScoredSamples, float]:
        start = time.perf_counter()
        samples = self._sample(k)
        return samples, time.perf_counter() - start

    def take(self, k: int) -> Rollout:
        """Step k's rollout: the one prefetched for k, else sampled now."""
        start = time.perf_counter()
        future = self._pending.pop(k, None)
        samples, seconds = future.result() if future is not None else self._timed(k)
        return Rollout(samples, seconds, time.perf_counter() - start)

    def prefetch(self, k: int) -> None:
        """Start sampling step k's rollout with the engines' current weights (only with ``ahead``)."""
        if self._pool is not None and k not in self._pending:
            self._pending[k] = self._pool.submit(self._timed, k)

    def settle(self) -> float:
        """Wait until no sampling is in flight (the engines may then load new weights); returns seconds waited.
        A failed prefetch raises in take(), for the step that needs it."""
        start = time.perf_counter()
        for future in self._pending.values():
            future.exception()  # waits without raising
        return time.perf_counter() - start

    def close(self) -> None:
        """Drop what was prefetched and not taken (a stopped run), after it finishes."""
        self.settle()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> RolloutSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
