"""Loss specifications: what a trainer executes, without knowing which algorithm it serves.

A spec is a small frozen (hence picklable, hashable) dataclass. Its class attribute ``output`` tells the
trainer what the model must produce from ``batch["input_ids"]`` / ``batch["attention_mask"]`` [B,T]:

    "logprobs"  per-token log-probs [B, T-1]: outputs[:, t] = log p(input_ids[:, t+1] | input_ids[:, :t+1])
    "values"    per-token values [B, T-1], aligned like logprobs (value of the state before token t+1)
    "scores"    sequence scores [B]: the head's output at the last non-pad token

and ``spec(outputs, batch) -> (loss, stats)``. "logprobs"/"values" batches always carry
``response_mask`` [B, T-1] (1 where the target token is a response token). Extra keys per spec below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from torch import Tensor

from ray_align.losses.logprobs import sequence_logps
from ray_align.losses.policy import dpo_loss, kto_loss, sft_loss
from ray_align.losses.ppo import clipped_value_loss, ppo_policy_loss
from ray_align.losses.score import bradley_terry_loss, safe_rlhf_cost_loss

Batch = Mapping[str, Tensor]
LossAndStats = tuple[Tensor, dict[str, float]]


class LossSpec(Protocol):
    output: ClassVar[str]

    def __call__(self, outputs: Tensor, batch: Batch) -> LossAndStats: ...


def _halves(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split rows [first_0..first_{P-1}, second_0..second_{P-1}] into the two [P] sides."""
    if x.shape[0] % 2:
        raise ValueError(f"a paired batch needs an even number of rows, got {x.shape[0]}")
    p = x.shape[0] // 2
    return x[:p], x[p:]


@dataclass(frozen=True)
class DPOSpec:
    """DPO / IPO. Rows: [chosen_0..chosen_{P-1}, rejected_0..rejected_{P-1}].

    batch["ref_logps"] [B]: reference sequence log-prob sums over the response (for SACPO step 2: the
    step-1 policy, with ``beta`` = β/λ); optional batch["labels"] [P]: P(chosen ≻ rejected).
    """

    output: ClassVar[str] = "logprobs"
    paired: ClassVar[bool] = True  # rows [first..., second...]: a trainer shards pairs together
    beta: float
    label_smoothing: float = 0.0
    loss_type: str = "sigmoid"

    def __call__(self, outputs: Tensor, batch: Batch) -> LossAndStats:
        policy_chosen, policy_rejected = _halves(sequence_logps(outputs, batch["response_mask"]))
        ref_chosen, ref_rejected = _halves(batch["ref_logps"])
        return dpo_loss(
            policy_chosen,
            policy_rejected,
            ref_chosen,
            ref_rejected,
            self.beta,
            label_smoothing=self.label_smoothing,
            labels=batch.get("labels"),
            loss_type=self.loss_type,
        )


@dataclass(frozen=True)
class KTOSpec:
    """KTO on singletons: batch["ref_logps"] [B], batch["desirable"] [B] bool, batch["kl_estimate"] (0-dim).

    kl_estimate is the reference point z0 of the whole batch, estimated before the step
    (ray_align.algorithms.kto.reference_point): every rank and micro-batch must use the same z0, so the spec
    never estimates it from the rows it happens to see.
    """

    output: ClassVar[str] = "logprobs"
    beta: float
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    def __call__(self, outputs: Tensor, batch: Batch) -> LossAndStats:
        if "kl_estimate" not in batch:
            raise ValueError(
                "KTOSpec needs batch['kl_estimate']: z0 of the whole batch, taken before the step"
            )
        return kto_loss(
            sequence_logps(outputs, batch["response_mask"]),
            batch["ref_logps"],
            batch["desirable"],
            self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
            kl_estimate=batch["kl_estimate"],
        )


@dataclass(frozen=True)
class PPOSpec:
    """PPO-clip actor loss: batch["old_logprobs"], batch["advantages"] [B, T-1].

    Optional PTX rows (pre-training/SFT data mixed into the actor step, Safe RLHF): batch["is_ptx"] [B]
    bool marks them; their response_mask selects the supervised tokens and their old_logprobs/advantages
    are ignored. loss = PPO over the other rows + ptx_coef · SFT NLL over the PTX rows.
    """

    output: ClassVar[str] = "logprobs"
    clip_eps: float
    ptx_coef: float = 0.0

    def __call__(self, outputs: Tensor, batch: Batch) -> LossAndStats:
        mask = batch["response_mask"]
        is_ptx = batch.get("is_ptx")
        if is_ptx is None or not bool(is_ptx.any()):
            return ppo_policy_loss(outputs, batch["old_logprobs"], batch["advantages"], mask, self.clip_eps)
        is_ptx = is_ptx.bool()
        ptx, ptx_stats = sft_loss(outputs[is_ptx], mask[is_ptx])
        total = self.ptx_coef * ptx
        stats = {"ptx_loss": ptx_stats["loss"], "ptx_tokens": ptx_stats["n_tokens"]}
        rl = ~is_ptx
        if bool(rl.any()):  # an all-PTX micro-batch has no PPO term (its mean would be nan)
            loss, ppo_stats = ppo_policy_loss(
                outputs[rl], batch["old_logprobs"][rl], batch["advantages"][rl], mask[rl], self.clip_eps
            )
            total = total + loss
            stats |= {"ppo_loss": ppo_stats.pop("loss"), **ppo_stats}
        return total, {"loss": total.item(), **stats}


@dataclass(frozen=True)
class SFTSpec:
    """Masked mean NLL over the response tokens of the batch."""

    output: ClassVar[str] = "logprobs"

    def __call__(self, outputs: Tensor, batch: Batch) -> LossAndStats:
        return sft_loss(outputs, batch["response_mask"])


@dataclass(frozen=True)
class ValueSpec:
    """Clipped critic loss: batch["old_values"], batch["returns"] [B, T-1]."""

    output: ClassVar[str] = "values"
    clip: float

    def __call__(self, outputs: Tensor, batch: Batch) -> LossAndStats:
        return clipped_value_loss(
            outputs, batch["old_values"], batch["returns"], batch["response_mask"], self.clip
        )


@dataclass(frozen=True)
class RewardModelSpec:
    """Bradley–Terry reward model. Rows: [better_0..better_{P-1}, worse_0..worse_{P-1}]."""

    output: ClassVar[str] = "scores"
    paired: ClassVar[bool] = True  # rows [first..., second...]: a trainer shards pairs together
    l2_coef: float = 0.0

    def __call__(self, outputs: Tensor, batch: Batch) -> LossAndStats:
        better, worse = _halves(outputs)
        return bradley_terry_loss(better, worse, self.l2_coef)


@dataclass(frozen=True)
class CostModelSpec:
    """Safe RLHF cost model. Rows: [safer_0..safer_{P-1}, unsafer_0..unsafer_{P-1}].

    batch["is_unsafe"] [B] bool: each row's own safety label, in the same row order.
    """

    output: ClassVar[str] = "scores"
    paired: ClassVar[bool] = True  # rows [first..., second...]: a trainer shards pairs together
    l2_coef: float = 0.0

    def __call__(self, outputs: Tensor, batch: Batch) -> LossAndStats:
        safer, unsafer = _halves(outputs)
        safer_is_unsafe, unsafer_is_unsafe = _halves(batch["is_unsafe"])
        return safe_rlhf_cost_loss(safer, unsafer, safer_is_unsafe, unsafer_is_unsafe, self.l2_coef)
