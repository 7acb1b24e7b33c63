"""The per-method sections of the job configuration: `ppo`, `dpo`, `kto`, `can`, `caid`, `sacpo`.

Each is read by the algorithms named in usage.py; checks that span sections stay in schema.py's JobConfig.
Defaults are the published values (ALGORITHMS.md) unless a comment says otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ray_align.config.section import Section


class PPOConfig(Section):
    """Safe RLHF PPO-Lagrangian; defaults are the reference script's."""

    steps: int = Field(default=100, gt=0)
    rollout_batch_size: int = Field(default=16, gt=0)
    ppo_epochs: int = Field(default=1, gt=0)
    clip_eps: float = Field(default=0.2, gt=0.0)
    value_clip: float = Field(default=5.0, gt=0.0)
    kl_coef: float = Field(default=0.01, ge=0.0)
    kl_in_cost: bool = True
    clip_range_score: float = Field(default=50.0, gt=0.0)
    gamma: float = Field(default=1.0, ge=0.0, le=1.0)
    gae_lambda: float = Field(default=0.95, ge=0.0, le=1.0)
    ptx_coef: float = Field(default=0.0, ge=0.0)  # the reference script uses 16 with a PTX dataset
    # λ updates per rollout: the first adds the rollout's episode costs to the rule's estimate, the others step
    # again on it, and the u-th λ serves the u-th equal share of the minibatch steps. 1: once per rollout; one
    # per optimizer step (ppo_epochs × rollout_batch_size / batch_size) is the reference trainer's schedule.
    lambda_updates_per_rollout: int = Field(default=1, gt=0)
    # The reference trainer does not whiten advantages; True standardises the combined Lagrangian advantage
    # over the rollout (a shift and a scale: the policy's fixed point is unchanged).
    whiten_advantages: bool = False
    save_rollouts: bool = True  # each step's scored rollouts to tables/rollouts/step_*.parquet
    # Actor, reference and critics (the critics one after another: they share their bundles) are called together
    # in the experience and training passes. False calls each in turn: for placements where roles share a GPU
    # and the extra activations of simultaneous calls do not fit.
    concurrent_calls: bool = True
    # Sample step k+1's rollout while the trainers train step k (from the weights before step k's update): one
    # step off-policy, the PPO ratio taken against the engines' behaviour log-probs. docs/methods-ppo-lag.md.
    async_rollout: bool = False

    @field_validator("ptx_coef")
    @classmethod
    def _no_ptx_data(cls, value: float) -> float:
        if value > 0:
            raise ValueError(
                "set 0: no PTX (pre-training) dataset is wired into ppo_lag yet, the actor loss is PPO only"
            )
        return value


class DPOConfig(Section):
    beta: float = Field(default=0.1, gt=0.0)
    preference: Literal["helpfulness", "safety"] = "helpfulness"  # which dataset preference plain DPO learns
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"


class KTOConfig(Section):
    beta: float = Field(default=0.1, gt=0.0)
    desirable_weight: float = Field(default=1.0, gt=0.0)
    undesirable_weight: float | None = Field(default=None, gt=0.0)  # None: n_desirable / n_undesirable
    # Reference point z0: "mismatched" = the paper's estimator on (x_i, y_j), j ≠ i (one extra forward per
    # example); "batch" = the batch's own completions (cheaper, not the paper's).
    kl_estimate: Literal["mismatched", "batch"] = "mismatched"


class CANConfig(Section):
    """One-shot CAN: the dual is solved once on N prompts x K reference samples."""

    beta: float = Field(default=0.1, gt=0.0)
    num_prompts: int = Field(default=1000, gt=1)
    samples_per_prompt: int = Field(default=128, gt=1)
    label: Literal["hard", "soft"] = "hard"
    pairs: Literal["dataset", "samples"] = (
        "dataset"  # which (y0, y1) pairs get relabelled; the paper: dataset
    )
    pecan_label: Literal["theory", "reference"] = "theory"


class CAIDConfig(Section):
    """CAID: T outer iterations (paper: 4 × 1 DPO epoch, 600 prompts × 64 samples). η is dual.lr."""

    iterations: int = Field(default=4, gt=0)
    epochs_per_iteration: int = Field(default=1, gt=0)
    num_prompts: int = Field(default=600, gt=1)
    samples_per_prompt: int = Field(default=64, gt=1)
    warm_start: bool = True
    # model: MoCAID (reward and cost models score the samples); preference: PeCAID (the implicit scores of
    # DPO-trained helpful and safe policies, as PeCAN, with no score models)
    form: Literal["model", "preference"] = "model"
    # Sample θ_t in the background while its DPO trains θ_{t+1}; λ then steps on θ_t's slack, one iteration old
    # (none from θ_0 = π_ref), and θ_T is sampled once more at the end. MoCAID only. docs/methods-dual.md.
    async_rollout: bool = False


class SACPOConfig(Section):
    first: Literal["helpfulness", "safety"] = "helpfulness"
    loss: Literal["dpo", "kto"] = "dpo"  # the safety step's loss (the paper compares DPO and KTO there)
    # The helpfulness step's loss: the paper uses DPO (PKU has pairwise helpfulness labels only); "kto" treats
    # the better response as desirable and the worse one as undesirable.
    helpfulness_loss: Literal["dpo", "kto"] = "dpo"
    beta: float = Field(default=0.1, gt=0.0)
    beta_over_lambda: float = Field(default=0.025, gt=0.0)
    merge_q: list[float] = Field(default_factory=list)  # P-SACPO weights q in (0, 1)
