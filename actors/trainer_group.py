"""A DeepSpeed data-parallel group of :class:`actors.trainer.TrainerRank` Ray actors behind one synchronous API.

The group implements the PolicyTrainer role of ray_align.cluster: the driver calls ``train_step(batch, spec)``
as if on one model. Each batch is cut into one shard per rank in the driver and each shard is put in the
object store separately, so a rank receives only its own rows. A critic group is the same class with
``model_kind="token_value"``, a reward/cost model trainer with ``"sequence_score"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray
import torch
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from actors.distributed import rendezvous_address, shard_batch
from actors.model_outputs import OUTPUT_OF_KIND
from actors.remote import actor_env, in_bundle, remote_class, run_on_node
from actors.train_config import TrainConfig
from actors.trainer import TrainerRank, mean_stats

__all__ = ["TrainerGroup", "shard_batch"]

_FORWARD_KEYS = ("input_ids", "attention_mask")


class TrainerGroup:
    """N TrainerRank actors forming one DeepSpeed process group.

    Placement: each rank lives in one bundle of ``placement_group`` (``bundle_indices[r]`` for rank r, default
    0..N-1); without one the group reserves its own (PACK) and frees it in :meth:`shutdown`. Rank 0's node
    hosts the rendezvous (MASTER_ADDR/MASTER_PORT), found by a zero-CPU task pinned to that node.
    ``wait=False`` returns as soon as the actors are requested; call :meth:`wait_ready` before use.
    """

    def __init__(
        self,
        model_path: str,
        model_kind: str,
        world_size: int,
        train: TrainConfig,
        *,
        num_cpus_per_rank: float = 1.0,
        num_gpus_per_rank: float = 0.0,
        placement_group: Any = None,
        bundle_indices: Sequence[int] | None = None,
        env_vars: Mapping[str, str] | None = None,
        ready_timeout_s: float = 600.0,
        wait: bool = True,
        before_compute: Callable[[], None] | None = None,
    ):
        if model_kind not in OUTPUT_OF_KIND:
            raise ValueError(f"model_kind must be one of {sorted(OUTPUT_OF_KIND)}, got {model_kind!r}")
        self.model_kind, self.world_size, self.train = model_kind, world_size, train
        # Called before the ranks use their devices (a colocated engine pool's ``sleep``).
        self._before_compute = before_compute or (lambda: None)
        self._before_compute()  # loading the model takes device memory too
        self._own_pg = placement_group is None
        if placement_group is None:
            bundle = {"CPU": num_cpus_per_rank} | ({"GPU": num_gpus_per_rank} if num_gpus_per_rank else {})
            placement_group = _reserve([bundle] * world_size, ready_timeout_s)
        self.placement_group = placement_group
        indices = list(bundle_indices) if bundle_indices is not None else list(range(world_size))
        if len(indices) != world_size:
            raise ValueError(f"{len(indices)} bundle indices for {world_size} ranks")

        master_node = placement_group_table(placement_group)["bundles_to_node_id"][indices[0]]
        master_addr, master_port = run_on_node(master_node, rendezvous_address)
        runtime_env = actor_env(int(num_cpus_per_rank), env_vars)
        self.ranks = [
            remote_class(
                TrainerRank,
                num_cpus=num_cpus_per_rank,
                num_gpus=num_gpus_per_rank,
                runtime_env=runtime_env,
                scheduling_strategy=in_bundle(placement_group, indices[rank]),
            ).remote(model_path, model_kind, rank, world_size, master_addr, master_port, train)
            for rank in range(world_size)
        ]
        self._ready = [r.ready.remote() for r in self.ranks]
        self._ready_timeout_s = ready_timeout_s
        self.info: list[dict[str, Any]] = []
        if wait:
            self.wait_ready()

    def wait_ready(self) -> list[dict[str, Any]]:
        """Block until every rank has its engine; with ``wait=False`` several groups can start side by side.

        Surfaces a failed rank (bad path, port taken, ...) here rather than at the first step.
        """
        if not self.info:
            self.info = ray.get(self._ready, timeout=self._ready_timeout_s)
        return self.info

    # ---- outputs (no grad) ---------------------------------------------------------------------------------

    def _forward(self, batch: Mapping[str, torch.Tensor], output: str) -> torch.Tensor:
        """Each rank's outputs on its shard, concatenated back in row order: [B, T-1] or [B], CPU float32."""
        self._before_compute()
        inputs = {key: batch[key] for key in _FORWARD_KEYS}
        shards = shard_batch(inputs, self.world_size, paired=False)
        refs = [r.forward_outputs.remote(ray.put(s), output) for r, s in zip(self.ranks, shards, strict=True)]
        return torch.cat(ray.get(refs))

    def logprobs(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-token log-probs [B, T-1] of a causal LM group (see ray_align.losses.logprobs for the convention)."""
        return self._forward(batch, "logprobs")

    def values(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-token values [B, T-1] of a token_value (critic) group."""
        return self._forward(batch, "values")

    def scores(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sequence scores [B] of a sequence_score group."""
        return self._forward(batch, "scores")

    # ---- training ------------------------------------------------------------------------------------------

    def train_step(
        self, batch: Mapping[str, torch.Tensor], spec: Any, paired: bool | None = None
    ) -> dict[str, float]:
        """One optimizer step of the whole group; every rank gets B / N rows (pairs kept together).

        ``paired`` defaults to ``spec.paired`` when the spec defines it, else False. Returns the ranks'
        stats averaged (lr and grad_norm are the same on every rank).
        """
        self._before_compute()
        paired = bool(getattr(spec, "paired", False)) if paired is None else paired
        shards = shard_batch(batch, self.world_size, paired)
        refs = [
            r.train_step.remote(ray.put(s), spec, paired) for r, s in zip(self.ranks, shards, strict=True)
        ]
        return mean_stats(ray.get(refs))

    # ---- weights -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full weights (base model names, LoRA merged) on CPU, from rank 0, into this process. Under ZeRO-3
        every rank gathers. Engines get the weights with ``GeneratorPool.sync_from(group)`` instead, which
        never brings them here."""
        return ray.get([r.full_state_dict.remote() for r in self.weight_senders()])[0]

    def weight_senders(self) -> list[Any]:
        """The ranks that take part in sending the weights, rank 0 first: all under ZeRO-3 (the gather is a
        collective), rank 0 alone otherwise."""
        return self.ranks if self.train.zero_stage == 3 else self.ranks[:1]

    def save(self, path: str) -> str:
        """Write a Hugging Face checkpoint at ``path`` (atomic; rank 0 writes) and return the path."""
        ray.get([r.save_hf.remote(str(path)) for r in self.ranks])
        return str(path)

    def load(self, path: str) -> None:
        """Restart every rank from the checkpoint at ``path`` (fresh optimizer and lr schedule)."""
        self._before_compute()
        ray.get([r.load_hf.remote(str(path)) for r in self.ranks])

    def shutdown(self) -> None:
        """Kill the ranks and free the placement group if the group reserved it."""
        for rank in self.ranks:
            ray.kill(rank)
        self.ranks = []
        if self._own_pg:
            remove_placement_group(self.placement_group)


def _reserve(bundles: list[dict[str, float]], timeout_s: float) -> Any:
    """A PACK placement group for the ranks, waiting until Ray grants it (a clear error if it never does)."""
    pg = placement_group(bundles, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as err:
        remove_placement_group(pg)
        raise RuntimeError(f"Ray could not reserve {bundles} within {timeout_s} s") from err
    return pg
