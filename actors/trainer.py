"""One data-parallel rank of a DeepSpeed trainer: a policy (causal LM), a critic (token values) or a scorer.

A :class:`TrainerRank` owns one DeepSpeed engine around a Hugging Face model. It knows nothing of algorithms:
``train_step`` takes a batch shard and a loss spec, asks the model for the output the spec names
(``spec.output``: "logprobs", "values" or "scores", see ray_align.losses.specs) and takes one optimizer step.
:class:`actors.trainer_group.TrainerGroup` starts one rank per Ray actor and slices batches for them. Its
settings are in actors.train_config, its model in actors.model_outputs.
"""

from __future__ import annotations

import copy
import gc
import math
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from actors.checkpoint import export_state_dict, save_hf_checkpoint
from actors.distributed import comm_backend, device, init_process_group, shard_batch
from actors.model_outputs import OUTPUT_OF_KIND, ModelOutputs, load_model
from actors.train_config import TrainConfig, adamw_param_groups, deepspeed_config, fused_adamw, lr_factor
from actors.weight_sync import WeightSender, gathered_chunks, named_weights, plan_buckets, weight_meta


def mean_stats(stats: list[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise mean over a list of stats dicts (a key counts only where it appears)."""
    keys = {key for s in stats for key in s}
    return {
        key: sum(s[key] for s in stats if key in s) / sum(key in s for s in stats) for key in sorted(keys)
    }


class TrainerRank:
    """One rank of a DeepSpeed data-parallel group; runs as a Ray actor (see actors.remote)."""

    def __init__(
        self,
        model_path: str,
        model_kind: str,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        train: TrainConfig,
    ):
        if model_kind not in OUTPUT_OF_KIND:
            raise ValueError(f"model_kind must be one of {sorted(OUTPUT_OF_KIND)}, got {model_kind!r}")
        self.model_kind, self.output = model_kind, OUTPUT_OF_KIND[model_kind]
        self.rank, self.world_size, self.train = rank, world_size, train
        self.backend = init_process_group(rank, world_size, master_addr, master_port)
        self.device = device()
        self.engine: Any = None
        self.tokenizer: Any = None
        self.weight_sender: WeightSender | None = None
        self._build(model_path)

    def _build(self, model_path: str) -> None:
        """(Re)create the model, optimizer, schedule and engine from a checkpoint; optimizer state starts fresh."""
        import deepspeed
        import transformers
        from transformers.integrations import HfDeepSpeedConfig

        if self.engine is not None:
            self.engine.destroy()
            self.engine = None
            gc.collect()
        train = self.train
        ds_config = deepspeed_config(train, self.world_size)
        # Alive during from_pretrained: under ZeRO-3 transformers then partitions the weights while loading.
        hf_ds = HfDeepSpeedConfig(ds_config) if train.zero_stage == 3 else None
        torch.manual_seed(train.seed)
        model = load_model(model_path, self.model_kind, train)
        module = ModelOutputs(model, self.output, train.logprob_chunk_size, train.unpad, train.dedup_rows)
        optimizer = torch.optim.AdamW(
            adamw_param_groups(module, train.weight_decay),
            lr=train.lr,
            betas=train.betas,
            eps=train.eps,
            fused=fused_adamw(self.device),
        )
        warmup_steps = math.ceil(train.warmup_ratio * train.total_steps)
        factor = partial(
            lr_factor,
            total_steps=train.total_steps,
            warmup_steps=warmup_steps,
            schedule=train.lr_schedule,
            min_lr_ratio=train.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self.engine, *_ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        del hf_ds
        # Kept from the first checkpoint when a later one (e.g. weights only) has no tokenizer files.
        if self.rank == 0 and os.path.exists(os.path.join(model_path, "tokenizer_config.json")):
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_path)

    # ---- queries ---------------------------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        """Where this rank runs; returning at all means the process group and the engine are up."""
        n_params = sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in self.engine.module.parameters()
        )
        return {"rank": self.rank, "backend": self.backend, "device": str(self.device), "n_params": n_params}

    def _check_output(self, output: str) -> None:
        if output != self.output:
            raise ValueError(f"a {self.model_kind} model produces {self.output!r}, not {output!r}")

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    @torch.no_grad()
    def forward_outputs(self, batch: Mapping[str, Tensor], output: str) -> Tensor:
        """Model outputs without grad (reference / old log-probs, values, scores), on CPU in float32.

        Rows run micro_batch_size at a time. Under ZeRO-3 every rank must call this with the same number of
        rows (each forward gathers parameters collectively).
        """
        self._check_output(output)
        self.engine.eval()
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        size, pieces = self.train.micro_batch_size, []
        for start in range(0, input_ids.shape[0], size):
            ids = input_ids[start : start + size].to(self.device)
            mask = attention_mask[start : start + size].to(self.device)
            pieces.append(self.engine(ids, mask).float().cpu())
        return torch.cat(pieces)

    # ---- training --------------------------------------------------------------------------------------

    def _target_mask(self, micro: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
        """(response_mask,) when the loss reads log-probs there only: every spec of the "logprobs" output
        masks with batch["response_mask"] (ray_align.losses.specs), so other positions need no LM head."""
        if self.output == "logprobs" and self.train.response_only_logprobs and "response_mask" in micro:
            return (micro["response_mask"],)
        return ()

    def _grad_norm(self) -> float:
        """‖g‖₂ over the full (already all-reduced) gradients: ZeRO-0 fp32 keeps them on the parameters."""
        grads = [p.grad.float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(grads)).item() if grads else float("nan")

    def train_step(
        self, batch: Mapping[str, Tensor], spec: Any, paired: bool | None = None
    ) -> dict[str, float]:
        """One optimizer step on this rank's shard: grad_accum_steps micro-batches, clipping, AdamW, schedule.

        batch: this rank's rows, exactly micro_batch_size × grad_accum_steps of them. ``paired`` (default:
        ``spec.paired`` if the spec has it, else False) keeps [first..., second...] pairs together when cutting
        micro-batches. Returns the spec's stats averaged over micro-batches, plus the lr this step used and
        the pre-clipping global gradient norm.
        """
        self._check_output(spec.output)
        paired = bool(getattr(spec, "paired", False)) if paired is None else paired
        rows, want = batch["input_ids"].shape[0], self.train.micro_batch_size * self.train.grad_accum_steps
        if rows != want:
            raise ValueError(
                f"rank {self.rank} got {rows} rows; one step takes micro_batch_size × grad_accum_steps = {want}"
            )
        self.engine.train()
        lr, grad_norm, stats = self.engine.get_lr()[0], None, []
        for micro in shard_batch(batch, self.train.grad_accum_steps, paired):
            micro = self._to_device(micro)
            outputs = self.engine(micro["input_ids"], micro["attention_mask"], *self._target_mask(micro))
            loss, micro_stats = spec(outputs, micro)
            self.engine.backward(loss)
            if self.engine.is_gradient_accumulation_boundary() and self.train.zero_stage == 0:
                grad_norm = self._grad_norm()
            self.engine.step()
            stats.append(micro_stats)
        ds_norm = self.engine.get_global_grad_norm()
        grad_norm = float(ds_norm) if ds_norm is not None else grad_norm
        return {
            **mean_stats(stats),
            "lr": float(lr),
            "grad_norm": float("nan") if grad_norm is None else grad_norm,
        }

    # ---- weights ---------------------------------------------------------------------------------------

    def full_state_dict(self, on_every_rank: bool = False) -> dict[str, Tensor] | None:
        """Full weights with the base model's names, on CPU (LoRA merged in). A collective under ZeRO-3.

        Returns None on ranks > 0 unless ``on_every_rank`` (the gathered copy is then returned everywhere).
        """
        zero3 = self.train.zero_stage == 3
        if not (zero3 or self.rank == 0 or on_every_rank):
            return None  # replicated weights: rank 0's copy is the answer, no collective to join
        state = export_state_dict(self.engine.module.hf_model(), zero3=zero3)
        return state if (self.rank == 0 or on_every_rank) else None

    def open_weight_group(self, receivers: int, backend: str | None = None) -> tuple[str, int, str]:
        """Rank 0: host the weight group for ``receivers`` engine workers; returns (address, port, backend).
        ``backend``: NCCL on a GPU, gloo on CPU, unless given."""
        self.weight_sender = WeightSender(receivers, backend or comm_backend(), self.device)
        return self.weight_sender.endpoint()

    def join_weight_group(self) -> None:
        """Rank 0: join the group (returns once every engine worker has joined too)."""
        assert self.weight_sender is not None, "open_weight_group first"
        self.weight_sender.join()

    def send_weights(self, sync_id: int, bucket_bytes: int) -> dict[str, float] | None:
        """Send the full weights (base names, LoRA merged) to the engines; rank 0 sends, and under ZeRO-3 every
        rank must call (each bucket is gathered collectively). Returns rank 0's {"seconds", "bytes", ...}."""
        hf = self.engine.module.hf_model()
        zero3 = self.train.zero_stage == 3
        if self.train.lora is not None:  # the merge needs whole layers: export once, then send in buckets
            named = list(export_state_dict(hf, zero3=zero3).items())
            zero3 = False
        else:
            named = named_weights(hf)
        meta = weight_meta(named)
        chunks = gathered_chunks(named, plan_buckets(meta, bucket_bytes), zero3)
        if self.rank != 0:
            for _ in chunks:  # take part in the gathers
                pass
            return None
        assert self.weight_sender is not None, "open_weight_group first"
        return self.weight_sender.send(sync_id, meta, chunks, bucket_bytes)

    def save_hf(self, path: str) -> str:
        """Rank 0 writes a Hugging Face checkpoint at ``path`` atomically; every rank must call (ZeRO-3 gather)."""
        hf = self.engine.module.hf_model()
        if self.train.zero_stage < 3 and self.rank != 0:
            return path
        state = export_state_dict(hf, zero3=self.train.zero_stage == 3)
        if self.rank == 0:
            config = copy.deepcopy(hf.config)
            config.dtype = next(t.dtype for t in state.values() if t.is_floating_point())
            generation = getattr(hf, "generation_config", None)
            save_hf_checkpoint(state, config, self.tokenizer, path, generation_config=generation)
        return path

    def load_hf(self, path: str) -> None:
        """Restart from the checkpoint at ``path`` (a directory every rank can read), optimizer state reset."""
        self._build(path)
