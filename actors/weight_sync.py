"""Trainer → engine weight sync: trainer rank 0 broadcasts its weights straight to every engine.

The group: trainer rank 0 (rank 0) and every engine worker (engine e's worker w is rank ``1 + e·tp + w``), a torch
process group of their own — gloo on CPU, NCCL on GPU, the same code — over a TCPStore that rank 0 hosts. It is
apart from DeepSpeed's and vLLM's process groups, so neither side's ``torch.distributed`` state is touched. The
driver only coordinates (:class:`WeightSync`): it asks rank 0 to open the group, tells the engines where it is,
and starts each sync on both sides. The weights never pass through it or the object store.

One sync: rank 0 writes the tensor list (names, dtypes, shapes) into the store, then broadcasts the weights in
buckets of about ``bucket_bytes``, each one flat byte buffer (one collective per bucket, not per tensor). Under
ZeRO-3 every rank gathers one bucket's parameters at a time, so no rank holds the whole model at once, and rank 0
sends each bucket as soon as it is gathered. Receivers stream the tensors of each bucket into vLLM's
``reload_weights`` (:class:`WeightReceiverExtension`) or the HF fallback's ``load_state_dict``.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

logger = logging.getLogger(__name__)

BUCKET_BYTES = 256 << 20  # per broadcast: large enough to amortise a collective, small next to a 7B model
GROUP_TIMEOUT = timedelta(minutes=10)  # a member that never joins or sends fails the sync after this
_ALIGN = 64  # byte offset of every tensor in a bucket, so a byte slice can be viewed as any dtype

Meta = list[tuple[str, str, list[int]]]  # (name, dtype name, shape) per tensor, in send order


def weight_meta(named: Iterable[tuple[str, torch.Tensor]]) -> Meta:
    """What a receiver needs to allocate the tensors of one sync. A ZeRO-3 parameter reports its full shape."""
    out = []
    for name, t in named:
        shape = list(getattr(t, "ds_shape", t.shape))
        out.append((name, str(t.dtype).removeprefix("torch."), shape))
    return out


@dataclass(frozen=True)
class Entry:
    """One tensor's place in a bucket."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def plan_buckets(meta: Meta, bucket_bytes: int) -> list[list[Entry]]:
    """Tensors in send order, cut into buckets of at most ``bucket_bytes`` (a larger tensor gets one alone).

    Sender and receivers compute the same plan from the same meta, so only the meta travels."""
    buckets: list[list[Entry]] = []
    current: list[Entry] = []
    end = 0
    for name, dtype, shape in meta:
        nbytes = torch.Size(shape).numel() * getattr(torch, dtype).itemsize
        offset = -(-end // _ALIGN) * _ALIGN
        if current and offset + nbytes > bucket_bytes:
            buckets.append(current)
            current, offset = [], 0
        current.append(Entry(name, dtype, tuple(shape), offset, nbytes))
        end = offset + nbytes
    if current:
        buckets.append(current)
    return buckets


def bucket_nbytes(bucket: Sequence[Entry]) -> int:
    return bucket[-1].offset + bucket[-1].nbytes


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def pack(bucket: Sequence[Entry], tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One flat byte buffer holding the bucket's tensors (a lone tensor is sent as its own bytes, uncopied)."""
    if len(bucket) == 1 and tensors[0].device == device:
        return _as_bytes(tensors[0])
    buf = torch.empty(bucket_nbytes(bucket), dtype=torch.uint8, device=device)
    for entry, tensor in zip(bucket, tensors, strict=True):
        buf[entry.offset : entry.offset + entry.nbytes].copy_(_as_bytes(tensor))
    return buf


def unpack(buf: torch.Tensor, bucket: Sequence[Entry]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) views into a received buffer."""
    for e in bucket:
        piece = buf[e.offset : e.offset + e.nbytes].view(getattr(torch, e.dtype))
        yield e.name, piece.view(e.shape)


def _group(store: Any, rank: int, world_size: int, backend: str) -> Any:
    """A process group object of its own (not the default group): NCCL on GPU, gloo on CPU."""
    import torch.distributed as dist

    cls = dist.ProcessGroupNCCL if backend == "nccl" else dist.ProcessGroupGloo
    return cls(store, rank, world_size, GROUP_TIMEOUT)


def named_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """What an engine loads: the parameters (a tied weight once, under its first name) and persistent buffers,
    under the checkpoint's names. Under ZeRO-3 the parameters are still partitioned here."""
    persistent = set(model.state_dict().keys())
    named = list(model.named_parameters())
    return named + [(n, b) for n, b in model.named_buffers() if n in persistent]


def gathered_chunks(
    named: Sequence[tuple[str, torch.Tensor]], buckets: Sequence[Sequence[Entry]], zero3: bool
) -> Iterator[list[torch.Tensor]]:
    """Each bucket's full tensors in turn. Under ZeRO-3 a bucket's parameters are gathered (a collective on the
    trainer's group: every rank iterates) and released when the caller asks for the next bucket."""
    by_name = dict(named)
    for bucket in buckets:
        tensors = [by_name[e.name] for e in bucket]
        gathered: Any = contextlib.nullcontext()
        if zero3:
            import deepspeed

            params = [t for t in tensors if hasattr(t, "ds_id")]
            gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        with gathered:
            yield [t.data for t in tensors]


def staging_device(backend: str, device: torch.device) -> torch.device:
    """Where a bucket lives while it is broadcast: the GPU for NCCL, host memory for gloo."""
    return device if backend == "nccl" else torch.device("cpu")


class WeightSender:
    """Rank 0's end: hosts the store (a free port chosen by the OS, so no race for it) and broadcasts."""

    def __init__(self, receivers: int, backend: str, device: torch.device) -> None:
        import ray
        import torch.distributed as dist

        self.world_size, self.backend = 1 + receivers, backend
        self.device = staging_device(backend, device)
        self.address = ray.util.get_node_ip_address()
        self.store = dist.TCPStore(
            self.address, 0, self.world_size, True, GROUP_TIMEOUT, wait_for_workers=False
        )
        self.group: Any = None

    def endpoint(self) -> tuple[str, int, str]:
        return self.address, self.store.port, self.backend

    def join(self) -> None:
        """Blocks until every receiver has joined too."""
        self.group = _group(self.store, 0, self.world_size, self.backend)

    def send(
        self, sync_id: int, meta: Meta, chunks: Iterable[Sequence[torch.Tensor]], bucket_bytes: int
    ) -> dict[str, float]:
        """Publish the meta, then broadcast each bucket's tensors (``chunks``: one list per bucket)."""
        start = time.perf_counter()
        self.store.set(f"meta/{sync_id}", pickle.dumps((meta, bucket_bytes)))
        buckets = plan_buckets(meta, bucket_bytes)
        for bucket, tensors in zip(buckets, chunks, strict=True):
            self.group.broadcast(pack(bucket, tensors, self.device), 0).wait()
        if self.backend == "nccl":
            torch.cuda.synchronize()
        nbytes = sum(e.nbytes for b in buckets for e in b)
        return {
            "seconds": time.perf_counter() - start,
            "bytes": float(nbytes),
            "buckets": float(len(buckets)),
        }


class WeightReceiver:
    """An engine worker's end of the group."""

    def __init__(
        self, address: str, port: int, rank: int, world_size: int, backend: str, device: torch.device
    ) -> None:
        import torch.distributed as dist

        self.device = staging_device(backend, device)  # the loader copies host tensors onto its device
        self.store = dist.TCPStore(address, port, world_size, False, GROUP_TIMEOUT)
        self.group = _group(self.store, rank, world_size, backend)
        self.received = 0  # bytes of the last sync

    def receive(self, sync_id: int) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors of one sync, bucket by bucket as they arrive. A fresh buffer per bucket: the loader may
        keep views of the tensors it was given."""
        meta, bucket_bytes = pickle.loads(self.store.get(f"meta/{sync_id}"))
        self.received = 0
        for bucket in plan_buckets(meta, bucket_bytes):
            buf = torch.empty(bucket_nbytes(bucket), dtype=torch.uint8, device=self.device)
            self.group.broadcast(buf, 0).wait()
            self.received += sum(e.nbytes for e in bucket)
            yield from unpack(buf, bucket)


def drain(stream: Iterator[Any]) -> None:
    """Join the broadcasts a loader did not ask for: every member must take part in every one."""
    for _ in stream:
        pass


class WeightReceiverExtension:
    """Mixed into every vLLM worker (``worker_extension_cls``); runs there through ``collective_rpc``."""

    def init_weight_group(
        self, address: str, port: int, rank_offset: int, world_size: int, backend: str
    ) -> None:
        self._weight_receiver = WeightReceiver(
            address, port, rank_offset + self.rank, world_size, backend, self.device
        )

    def receive_weights(self, sync_id: int) -> int:
        """Receive one sync and load it (vLLM's layerwise ``reload_weights``); returns the bytes received."""
        receiver = self._weight_receiver
        stream = receiver.receive(sync_id)
        self.reload_weights(weights_iterator=stream, is_checkpoint_format=True)
        drain(stream)
        self.retie_word_embeddings()
        return receiver.received

    def retie_word_embeddings(self) -> bool:
        """Tie the LM head to the input embeddings again after a reload, when the model ties them (SmolLM2).

        A tied checkpoint's ``lm_head.weight`` is skipped by the loader, and the layerwise reload gives the
        embeddings a new tensor: the head kept the old one (and on CPU the GEMM packed from it), so the engine
        sampled from the new body with the old head. Returns whether it re-tied."""
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

        config = self.model_runner.model_config.hf_config.get_text_config()
        if not getattr(config, "tie_word_embeddings", False):
            return False
        model = self.model_runner.get_model()
        heads = [m for m in model.modules() if isinstance(m, ParallelLMHead)]
        embeddings = [m for m in model.modules() if type(m) is VocabParallelEmbedding]
        if len(heads) != 1 or len(embeddings) != 1:
            return False
        head = heads[0].tie_weights(embeddings[0])
        head.quant_method.process_weights_after_loading(head)  # CPU: re-pack the head's GEMM
        return True


class WeightSync:
    """Driver side, for one trainer group and a list of engine actors: forms the group once, then syncs.

    ``senders``: the trainer ranks that take part in a send (all of them under ZeRO-3, whose gather is a
    collective; rank 0 alone otherwise), rank 0 first. ``backend``: None lets rank 0 choose (NCCL where it has a
    GPU, else gloo); "gloo" when an engine shares rank 0's GPU, which NCCL cannot span (the buckets then go
    through host memory)."""

    def __init__(
        self,
        senders: Sequence[Any],
        engines: Sequence[Any],
        tensor_parallel_size: int = 1,
        bucket_bytes: int = BUCKET_BYTES,
        backend: str | None = None,
    ) -> None:
        self.senders, self.engines, self.backend = list(senders), list(engines), backend
        self.tensor_parallel_size, self.bucket_bytes = tensor_parallel_size, bucket_bytes
        self.syncs = 0
        self.history: list[dict[str, float]] = []

    def connect(self) -> None:
        import ray

        tp = self.tensor_parallel_size
        world_size = 1 + len(self.engines) * tp
        address, port, backend = ray.get(
            self.senders[0].open_weight_group.remote(world_size - 1, self.backend)
        )
        joins = [
            engine.init_weight_group.remote(address, port, 1 + e * tp, world_size, backend)
            for e, engine in enumerate(self.engines)
        ]
        ray.get([*joins, self.senders[0].join_weight_group.remote()])
        logger.debug("weight group: %s:%d (%s), %d members", address, port, backend, world_size)

    def sync(self) -> dict[str, float]:
        """Push the trainer's current weights to every engine; returns and records the stats."""
        import ray

        if self.syncs == 0:
            self.connect()
        self.syncs += 1
        start = time.perf_counter()
        sends = [r.send_weights.remote(self.syncs, self.bucket_bytes) for r in self.senders]
        loads = [e.receive_weights.remote(self.syncs) for e in self.engines]
        sent = ray.get(sends)[0]
        loaded = ray.get(loads)
        stats = {
            "seconds": time.perf_counter() - start,
            "bytes": sent["bytes"],
            "send_seconds": sent["seconds"],
            "load_seconds": max(s["seconds"] for s in loaded),
        }
        if any(s["bytes"] != sent["bytes"] for s in loaded):
            raise RuntimeError(f"weight sync: sent {sent['bytes']} bytes, engines received {loaded}")
        self.history.append(stats)
        logger.debug(
            "weights to %d engines: %.0f bytes in %.3f s", len(self.engines), sent["bytes"], stats["seconds"]
        )
        return stats
