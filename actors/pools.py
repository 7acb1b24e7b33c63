"""Synchronous fronts over several Ray actors of one role, for the algorithms.

``GeneratorPool`` is itself a ``ray_align.cluster.Generator`` and ``ScorerPool`` a ``Scorer``: a batch is cut
into contiguous shards, one per actor, the shards run in parallel, and the results are joined in batch order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from actors.weight_sync import broadcast_state_dict
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
    """Several generator actors (``VLLMGenerator``/``HFGenerator`` under ``ray.remote``) behind one ``generate``."""

    def __init__(self, handles: Sequence[Any]) -> None:
        if not handles:
            raise ValueError("GeneratorPool needs at least one generator handle")
        self.handles = list(handles)
        self.sync_history: list[dict[str, float]] = []

    def ready(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([h.ready.remote() for h in self.handles])

    def generate(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], sampling: Sampling, first_index: int = 0
    ) -> Rollouts:
        """Shard j gets prompts[start_j:stop_j]; ``first_index + start_j`` keeps each prompt's seed global (a
        caller that sends a long prompt list in chunks passes each chunk's offset)."""
        import ray

        bounds = shard_bounds(len(prompts), len(self.handles))
        futures = [
            h.generate.remote(list(prompts[start:stop]), sampling, first_index=first_index + start)
            for h, (start, stop) in zip(self.handles, bounds)
        ]
        return Rollouts.concat(ray.get(futures), [start for start, _ in bounds])

    def broadcast_weights(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Object-store weight sync: ``ray.put`` once, every engine reloads from the same reference."""
        stats = broadcast_state_dict(self.handles, state_dict)
        self.sync_history.append(stats)
        logger.debug(
            "weights to %d engines: %.0f bytes in %.3f s (put %.3f s)",
            len(self.handles),
            stats["bytes"],
            stats["seconds"],
            stats["put_seconds"],
        )
        return stats

    update_weights = broadcast_weights  # the Generator protocol's name


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
