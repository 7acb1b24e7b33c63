"""Optimisation settings of a trainer group and what DeepSpeed and torch AdamW are built from.

:class:`TrainConfig` is the trainer's own view of ``training.*`` (actors.build maps the job config onto it);
:func:`lr_factor` is the warmup + constant/cosine schedule; :func:`deepspeed_config` the engine's config dict;
:func:`fused_adamw` and :func:`adamw_param_groups` the optimizer's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters through peft; ``modules_to_save`` are trained in full (e.g. ("score",) for a scorer)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    modules_to_save: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one trainer group (torch AdamW under DeepSpeed).

    One ``train_step`` is one optimizer step on micro_batch_size × grad_accum_steps rows per rank.
    The learning rate is lr · lr_factor(step) (see :func:`lr_factor`) over ``total_steps`` optimizer steps.
    ``zero3_persistence_threshold``: ZeRO-3 keeps parameters with fewer elements than this unpartitioned
    (DeepSpeed's default 1e5; 0 partitions everything).
    """

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_schedule: str = "constant"  # "constant" | "cosine", both after a linear warmup
    warmup_ratio: float = 0.0
    total_steps: int = 1
    min_lr_ratio: float = 0.0
    zero_stage: int = 0
    zero3_persistence_threshold: int = 100_000
    dtype: str = "fp32"  # "fp32" | "bf16"
    micro_batch_size: int = 1
    grad_accum_steps: int = 1
    grad_clip: float = 1.0  # 0 disables clipping
    gradient_checkpointing: bool = False
    disable_dropout: bool = True  # RL ratios and values compare train-mode outputs with no-grad ones
    lora: LoraSettings | None = None
    logprob_chunk_size: int = 256
    # Speed levers of the "logprobs" output, on by default (docs/performance.md); off gives the padded batch
    # and the LM head over every position, for comparison. Neither changes a loss or a gradient.
    unpad: bool = True  # each right-padded row runs at its own length (CPU only; not under ZeRO-3)
    response_only_logprobs: bool = True  # train_step computes log-probs where response_mask is 1 only
    dedup_rows: bool = True  # identical rows of a batch run once (not while dropout is active)
    seed: int = 0
    extra_ds_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be 'fp32' or 'bf16', got {self.dtype!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0..3, got {self.zero_stage}")
        if min(self.micro_batch_size, self.grad_accum_steps, self.total_steps, self.logprob_chunk_size) < 1:
            raise ValueError(
                "micro_batch_size, grad_accum_steps, total_steps, logprob_chunk_size must be >= 1"
            )


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based).

    Warmup: (step+1)/warmup_steps for step < warmup_steps, so the first step already moves the weights.
    Then "constant": 1; "cosine": min_lr_ratio + (1 - min_lr_ratio)·½(1 + cos(π·p)) with
    p = (step - warmup_steps)/(total_steps - warmup_steps) clipped to [0, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def deepspeed_config(train: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for ``train`` (the optimizer and schedule are passed as objects, not here)."""
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = train.zero3_persistence_threshold
    config = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": train.dtype == "bf16"},
        # torch AdamW: DeepSpeed's fused/CPU Adam would JIT-compile C++ at startup.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    config.update(train.extra_ds_config)
    return config


def fused_adamw(device: Any) -> bool | None:
    """torch's fused AdamW kernel on CPU (one pass over each tensor instead of a chain of foreach ops: 0.26 →
    0.08 s per step for 135M fp32 parameters on two cores, docs/performance.md); None, torch's default, on
    other devices. Same update up to float rounding."""
    return True if str(device) == "cpu" else None


def adamw_param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices decay, vectors (norm weights, biases) do not.

    Empty groups are left out (e.g. LoRA trains matrices only). The rank is read from ``ds_shape`` when
    ZeRO-3 has already partitioned a parameter (its data is then 1-D).
    """
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if len(getattr(param, "ds_shape", param.shape)) >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]  # DeepSpeed drops empty groups; the lr schedule must match
