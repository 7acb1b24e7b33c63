"""The job configuration: one YAML file describes a run. Validated by pydantic before anything starts.

Every section forbids unknown keys, so a misspelt key fails with its dotted path instead of being ignored.
Defaults are the published values (ALGORITHMS.md) unless a comment says otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

# the per-method sections live in methods.py; imported here for JobConfig's fields (and importers of schema)
from ray_align.config.methods import CAIDConfig, CANConfig, DPOConfig, KTOConfig, PPOConfig, SACPOConfig
from ray_align.config.section import Section
from ray_align.config.usage import unused_options


class CostModel(Section):
    """One safety constraint's scorer: a cost model (higher = more harmful) or a Python function."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    path: str | None = None  # a sequence classifier checkpoint
    function: str | None = None  # "module:function" taking (prompt, response) -> float
    kind: Literal["cost", "utility"] = "cost"  # utility g = -cost; the dual always works with utilities

    @model_validator(mode="after")
    def _one_source(self) -> CostModel:
        if (self.path is None) == (self.function is None):
            raise ValueError(f"constraint scorer '{self.name}' needs exactly one of 'path' or 'function'")
        return self


class ModelsConfig(Section):
    """Checkpoints. ``tiny: true`` builds the offline tiny model family and uses it for every unset path."""

    tiny: bool = False
    policy: str | None = None
    # π_ref (sampled for the dual, the DPO/KTO reference, the KL); default: policy
    reference: str | None = None
    pad_token: str | None = None  # pads training batches; default: the tokenizer's pad token, else its EOS
    reward: str | None = None
    reward_function: str | None = None  # "module:function", for verifiable tasks
    costs: list[CostModel] = Field(default_factory=list)
    critic: str | None = None  # defaults to the reward model (as the Safe RLHF reference code does)
    cost_critic: str | None = None  # defaults to the first cost model

    @property
    def constraint_names(self) -> list[str]:
        """Names of the constraint scorers; the tiny family brings one cost model named 'safety'."""
        if self.costs:
            return [c.name for c in self.costs]
        return ["safety"] if self.tiny else []

    @model_validator(mode="after")
    def _policy_known(self) -> ModelsConfig:
        if not self.tiny and self.policy is None:
            raise ValueError(
                "set models.policy to a checkpoint path, or models.tiny: true for the tiny model family"
            )
        names = [c.name for c in self.costs]
        if len(set(names)) != len(names):
            raise ValueError(f"models.costs names must be unique, got {names}")
        return self


class DataConfig(Section):
    source: str | None = (
        None  # PKU-SafeRLHF: a local jsonl/json/parquet file or folder, or a hub id when online
    )
    template: Literal["pku", "chat"] = "pku"
    on_bad_row: Literal["error", "drop"] = "error"
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_prompts: int | None = Field(default=None, gt=0)
    max_length: int = Field(default=512, gt=8)
    max_prompt_length: int = Field(default=256, gt=0)
    # EOS after every dataset response (a response ended there). False when generation cuts responses at
    # generation.max_tokens instead, so that trained and generated responses are the same tokens.
    response_eos: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _lengths(self) -> DataConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be below data.max_length ({self.max_length})"
            )
        return self


class GenerationConfig(Section):
    engine: Literal["vllm", "hf", "auto"] = "vllm"
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, gt=0)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
    tensor_parallel_size: int = Field(default=1, gt=0)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    kv_cache_gib: int = Field(default=1, ge=1)  # vLLM CPU KV cache, whole GiB
    gpu_memory_utilization: float = Field(default=0.5, gt=0.0, le=1.0)


class ScoringConfig(Section):
    batch_size: int = Field(default=16, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"


class LoraConfig(Section):
    r: int = Field(default=8, gt=0)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class TrainingConfig(Section):
    lr: float = Field(default=1e-5, gt=0.0)
    critic_lr: float = Field(default=5e-6, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    epochs: int = Field(default=1, gt=0)
    batch_size: int = Field(default=8, gt=0)  # sequences (or pairs) per optimizer step, over all ranks
    micro_batch_size: int = Field(default=2, gt=0)
    grad_clip: float = Field(default=1.0, gt=0.0)
    zero_stage: Literal[0, 1, 2, 3] = 0
    dtype: Literal["fp32", "bf16"] = "fp32"
    # activation checkpointing: each decoder layer's activations are recomputed in the backward instead of
    # kept, for less memory at the cost of a second forward of the layers (measured in docs/performance.md)
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None
    logprob_chunk_size: int = Field(default=128, gt=0)
    seed: int = 0


class ConstraintConfig(Section):
    """A constraint of the dual: name of a scorer in models.costs, with a margin OR an absolute threshold.

    margin b: E_π[g] − E_ref[g] ≥ b (utility improvement over the reference). threshold d: E_π[c] ≤ d on the cost scale.
    """

    name: str
    margin: float | None = None
    threshold: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ConstraintConfig:
        if (self.margin is None) == (self.threshold is None):
            raise ValueError(f"dual constraint '{self.name}' needs exactly one of 'margin' or 'threshold'")
        return self


class PIDConfig(Section):
    kp: float = Field(default=0.1, ge=0.0)
    # unset: dual.lr (the integral term is dual ascent at rate lr)
    ki: float | None = Field(default=None, ge=0.0)
    kd: float = Field(default=0.0, ge=0.0)


class DualConfig(Section):
    constraints: list[ConstraintConfig] = Field(default_factory=list)
    rule: Literal["safe_rlhf", "projected", "pid", "constant"] = "safe_rlhf"
    lam_init: float = Field(default=1.0, ge=0.0)
    lam_max: float = Field(default=5.0, ge=0.0)
    lr: float = Field(default=0.1, gt=0.0)
    window: int = Field(default=128, gt=0)
    delay_steps: int = Field(default=0, ge=0)
    pid: PIDConfig = Field(default_factory=PIDConfig)

    @model_validator(mode="after")
    def _bounds(self) -> DualConfig:
        if self.lam_max < self.lam_init:
            raise ValueError(f"dual.lam_max ({self.lam_max}) must be >= dual.lam_init ({self.lam_init})")
        return self


Algorithm = Literal[
    "sample_score",
    "dpo",
    "kto",
    "reward_model",
    "cost_model",
    "ppo_lag",
    "caid",
    "mocan",
    "pecan",
    "sacpo",
]


class PlacementConfig(Section):
    """Where roles run. ``file`` names a resources file under clusters/; inline values override it."""

    file: str | None = None
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = None
    trainer_ranks: int | None = Field(default=None, gt=0)
    engines: int | None = Field(default=None, gt=0)


class RayConfig(Section):
    # None: a private local instance (or, under `ray job submit`, the cluster in RAY_ADDRESS); "auto": join the
    # instance running on this machine; "HOST:PORT" or "ray://HOST:10001": a remote cluster.
    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    every: int = Field(default=1, gt=0)  # one console line every this many training steps
    verbose: bool = False  # True: the start-up and progress logs of Ray, vLLM and DeepSpeed on the console
    tensorboard: bool = True  # scalars to <output_dir>/tensorboard (metrics.jsonl stays the record)
    wandb: bool = False  # also to Weights & Biases when installed (offline unless WANDB_MODE says otherwise)


class EvalConfig(Section):
    """The evaluation after every training run (and the defaults of `ray-align eval`): docs/eval.md."""

    enabled: bool = True
    num_prompts: int | None = Field(default=64, gt=0)  # held-out prompts evaluated; None: all of them
    samples_per_prompt: int = Field(default=4, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)  # None: generation.max_tokens
    # Temperature 1 with top_p 1 samples π itself: the KL estimate from the sampled tokens is then unbiased.
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    unsafe_threshold: float = 0.0  # a response is unsafe when its cost exceeds this (Safe RLHF: cost > 0)
    n_boot: int = Field(default=2000, ge=100)
    level: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed: int = 0


class CheckpointConfig(Section):
    every: int = Field(default=0, ge=0)  # steps between checkpoints; 0 = only at the end
    keep: int = Field(default=2, gt=0)
    resume: bool = True


class JobConfig(Section):
    name: str = "ray-align"
    output_dir: str = "runs/default"
    seed: int = 0
    algorithm: Algorithm = "sample_score"
    models: ModelsConfig = Field(default_factory=lambda: ModelsConfig(tiny=True))
    data: DataConfig = Field(default_factory=DataConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    dual: DualConfig = Field(default_factory=DualConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    kto: KTOConfig = Field(default_factory=KTOConfig)
    can: CANConfig = Field(default_factory=CANConfig)
    caid: CAIDConfig = Field(default_factory=CAIDConfig)
    sacpo: SACPOConfig = Field(default_factory=SACPOConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _constraints_have_scorers(self) -> JobConfig:
        scorers = self.models.constraint_names
        # PeCAID's constraint is the dataset's safety preference, scored by DPO_S: no cost model to name
        pecaid = self.algorithm == "caid" and self.caid.form == "preference"
        for i, c in enumerate(self.dual.constraints):
            if c.name not in scorers and not pecaid:
                raise ValueError(
                    f"dual.constraints.{i}.name: '{c.name}' has no scorer; add it to models.costs "
                    f"(known: {scorers or 'none'})"
                )
        for q in self.sacpo.merge_q:
            if not 0.0 < q < 1.0:
                raise ValueError(f"sacpo.merge_q: every q must lie in (0, 1), got {q}")
        room = self.data.max_length - self.data.max_prompt_length
        if self.generation.max_tokens > room:
            raise ValueError(
                f"generation.max_tokens ({self.generation.max_tokens}) must fit after the prompt: at most "
                f"data.max_length − data.max_prompt_length = {room}"
            )
        if self.algorithm == "caid" and self.dual.rule != "projected":
            raise ValueError(
                f"dual.rule: CAID's dual step is projected dual descent; set dual.rule: projected (got '{self.dual.rule}')"
            )
        if self.algorithm == "caid" and self.caid.form == "preference" and self.caid.async_rollout:
            raise ValueError(
                "caid.async_rollout: only MoCAID (caid.form: model) overlaps sampling with training; PeCAID scores "
                "its samples with a trainer group that starts after the policy's is shut down: set it to false"
            )
        if self.algorithm == "caid" and self.caid.form == "preference":
            bounds = [c.name for c in self.dual.constraints if c.margin is None]
            if len(self.dual.constraints) > 1 or bounds:
                raise ValueError(
                    "dual.constraints: caid.form preference (PeCAID) scores a constraint by the implicit score of "
                    "the dataset's one safety preference, known up to a per-prompt constant: give one constraint, "
                    f"with a margin (got {len(self.dual.constraints)}, thresholds on {bounds or 'none'})"
                )
        if self.algorithm == "ppo_lag":
            if self.dual.rule == "projected":
                raise ValueError(
                    "dual.rule: ppo_lag updates λ from costs; use safe_rlhf (the reference), pid or constant"
                )
            margins = [c.name for c in self.dual.constraints if c.margin is not None]
            if margins:
                raise ValueError(
                    f"dual.constraints: ppo_lag bounds the expected cost with an absolute threshold, E_π[c] ≤ d; set `threshold` instead of "
                    f"`margin` for {margins} (Safe RLHF uses threshold: 0.0)"
                )
        if unused := unused_options(self):
            raise ValueError(unused)
        needs_constraint = {"ppo_lag", "caid", "mocan", "pecan"}
        if self.algorithm in needs_constraint and not self.dual.constraints:
            raise ValueError(f"algorithm '{self.algorithm}' needs at least one entry in dual.constraints")
        return self
