"""Synchronous fronts over several Ray actors of one role, for the algorithms.

``GeneratorPool`` is itself a ``ray_align.cluster.Generator`` and ``ScorerPool`` a ``Scorer``: a batch is cut
into contiguous shards, one per actor, the shards run in parallel, and the results are joined in batch order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from actors.weight_sync import WeightSync
from ray_align.cluster import Rollouts, Sampling

logger = logging.getLogger(__name__)


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges splitting n items over ``parts`` workers; sizes differ by at most one.

    Empty ranges are dropped, so fewer than ``parts`` items use fewer workers.
    """
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for j in range(parts):
        stop = start + base + (1 if j < extra else 0)
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds


class GeneratorPool:
    """Several generator actors (``VLLMGenerator``/``HFGenerator`` under ``ray.remote``) behind one ``generate``.

    Weights: ``sync_from(trainer)`` is the trainer → engines path (actors/weight_sync.py, the weights never visit
    the driver); ``update_weights(state_dict)`` loads weights the driver holds (a checkpoint read from disk).
    ``sleep=True`` (engines colocated with trainer ranks on GPUs, ``engine_sleep`` in the resources file): the
    engines free their GPU memory when :meth:`sleep` is called before the trainer computes, and every method
    here wakes them first. ``colocated``: engines share the trainer ranks' GPUs, so syncs use gloo.
    """

    def __init__(
        self,
        handles: Sequence[Any],
        tensor_parallel_size: int = 1,
        sleep: bool = False,
        colocated: bool = False,
    ) -> None:
        if not handles:
            raise ValueError("GeneratorPool needs at least one generator handle")
        self.handles = list(handles)
        self.tensor_parallel_size, self.can_sleep = tensor_parallel_size, sleep
        # An engine on a trainer rank's GPU: NCCL cannot join two processes on one device, gloo can.
        self.weight_backend = "gloo" if colocated else None
        self.asleep = False
        self._sleep_lock = threading.Lock()  # trainer calls may run in threads (concurrent critic steps)
        self.sync_history: list[dict[str, float]] = []
        self._weight_sync: WeightSync | None = None
        self._weight_source: Any = None

    def _all(self, method: str, *args: Any) -> list[Any]:
        import ray

        return ray.get([getattr(h, method).remote(*args) for h in self.handles])

    def ready(self) -> list[dict[str, Any]]:
        return self._all("ready")

    def sleep(self) -> None:
        """Free the engines' GPU memory for a colocated trainer (a no-op without sleep mode or when asleep)."""
        with self._sleep_lock:
            if self.can_sleep and not self.asleep:
                self._all("sleep", 1)
                self.asleep = True

    def _wake(self, tags: list[str] | None = None) -> None:
        if self.asleep:
            self._all("wake_up", tags)
            self.asleep = tags is not None and "kv_cache" not in tags

    def generate(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], sampling: Sampling, first_index: int = 0
    ) -> Rollouts:
        """Shard j gets prompts[start_j:stop_j]; ``first_index + start_j`` keeps each prompt's seed global (a
        caller that sends a long prompt list in chunks passes each chunk's offset)."""
        import ray

        self._wake()
        bounds = shard_bounds(len(prompts), len(self.handles))
        futures = [
            h.generate.remote(list(prompts[start:stop]), sampling, first_index=first_index + start)
            for h, (start, stop) in zip(self.handles, bounds)
        ]
        return Rollouts.concat(ray.get(futures), [start for start, _ in bounds])

    def sync_from(self, trainer: Any) -> dict[str, float]:
        """Load a trainer group's current weights into every engine, straight from its rank 0.

        The first sync with a trainer forms the weight group (a new trainer replaces the old group)."""
        if self._weight_source is not trainer:
            self._weight_sync = WeightSync(
                trainer.weight_senders(), self.handles, self.tensor_parallel_size, backend=self.weight_backend
            )
            self._weight_source = trainer
        assert self._weight_sync is not None
        self._wake(["weights"])
        stats = self._weight_sync.sync()
        self._wake(["kv_cache"])
        return self._record(stats)

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Load weights held by the driver (e.g. a checkpoint read from disk): ``ray.put`` once, every engine
        reloads from the same reference."""
        import ray

        self._wake()
        start = time.perf_counter()
        ref = ray.put(dict(state_dict))
        put_seconds = time.perf_counter() - start
        loads = self._all("update_weights", ref)
        stats = {
            "seconds": time.perf_counter() - start,
            "bytes": loads[0]["bytes"],
            "put_seconds": put_seconds,
            "load_seconds": max(s["seconds"] for s in loads),
        }
        return self._record(stats)

    def _record(self, stats: dict[str, float]) -> dict[str, float]:
        self.sync_history.append(stats)
        logger.debug(
            "weights to %d engines: %.0f bytes in %.3f s", len(self.handles), stats["bytes"], stats["seconds"]
        )
        return stats


class ScorerPool:
    """Several scorer actors of one kind (same models) behind one ``score``; rows are split contiguously."""

    def __init__(self, handles: Sequence[Any]) -> None:
        if not handles:
            raise ValueError("ScorerPool needs at least one scorer handle")
        self.handles = list(handles)

    def _map(self, method: str, *columns: Sequence[Any]) -> list[Any]:
        import ray

        bounds = shard_bounds(len(columns[0]), len(self.handles))
        futures = [
            getattr(h, method).remote(*(list(c[start:stop]) for c in columns), first_index=start)
            for h, (start, stop) in zip(self.handles, bounds)
        ]
        return ray.get(futures)

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """[n] or [n, m], as one scorer would return."""
        return np.concatenate(self._map("score", prompt_ids, response_ids), axis=0)

    def response_logprobs(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """For a pool of ``ReferenceScorer``s: ragged per-token log-probs, in batch order."""
        return [row for part in self._map("response_logprobs", prompt_ids, response_ids) for row in part]
