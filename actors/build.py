"""Build the roles an algorithm needs from a job config: actors, their placement, and the sync wrappers.

Each actor gets only its own slice of the configuration (a model path and a few engine settings), never the
job config. Roles go into one placement group made from the resources file (ray_align.placement).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from actors.coordinator import DualCoordinator, DualRuleSpec
from actors.generator import GeneratorConfig
from actors.hf_generator import generator_class
from actors.pools import GeneratorPool, ScorerPool
from actors.remote import actor_env, in_bundle, remote_class
from actors.scorer import FunctionScorer, ReferenceScorer, SequenceScorer, resolve_function
from actors.train_config import LoraSettings, TrainConfig
from actors.trainer_group import TrainerGroup
from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.models.resolve import ResolvedModels
from ray_align.placement import PlacementPlan, ResourcesFile, plan_placement, resources_for

__all__ = ["ClusterBuilder", "JointScorer", "Sync", "build_cluster", "resources_for"]

logger = logging.getLogger(__name__)


class Sync:
    """Calls a single actor's methods synchronously: ``Sync(handle).lam()`` is ``ray.get(handle.lam.remote())``."""

    def __init__(self, handle: Any):
        self._handle = handle

    def __getattr__(self, name: str):
        method = getattr(self._handle, name)
        return lambda *args, **kwargs: ray.get(method.remote(*args, **kwargs))


@dataclass(frozen=True)
class StackedFunctions:
    """Several "module:function" scorers as one picklable callable returning one value per function."""

    paths: tuple[str, ...]

    def __call__(self, prompt: str, response: str) -> tuple[float, ...]:
        return tuple(float(resolve_function(path)(prompt, response)) for path in self.paths)


@dataclass
class JointScorer:
    """Reward and constraint scores side by side: [n, 1 + m], constraints on the cost scale (utility = −cost).

    ``parts`` are (pool, columns, signs): each pool returns its own columns; a sign of −1 turns a utility into
    a cost. Pools run concurrently.
    """

    parts: list[tuple[ScorerPool, list[int], list[float]]]
    width: int

    def __post_init__(self) -> None:
        covered = sorted(c for _, columns, _ in self.parts for c in columns)
        if covered != list(range(self.width)):
            # Never hand back a column nobody wrote (the preflight refuses such jobs; this guards the builder).
            missing = sorted(set(range(self.width)) - set(covered))
            raise ValueError(f"no scorer for score column(s) {missing} (0 = reward, j = constraint j)")

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.full((len(prompt_ids), self.width), np.nan)
        for pool, columns, signs in self.parts:
            scores = pool.score(prompt_ids, response_ids).reshape(len(prompt_ids), -1)
            out[:, columns] = scores * np.asarray(signs)
        return out


@dataclass
class ClusterBuilder:
    """Starts actors into one placement group; remembers them so ``shutdown`` frees everything."""

    config: JobConfig
    models: ResolvedModels
    plan: PlacementPlan
    pg: Any = None
    # Trainer groups that hold a role's bundles at the same time: each group asks for 1/share of every bundle.
    shares: dict[str, int] = field(default_factory=dict)
    groups: list[TrainerGroup] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    engines: GeneratorPool | None = None
    # (actors, role) started with wait=False: wait_ready() blocks until they answer
    pending: list[tuple[list[Any], str]] = field(default_factory=list)

    def start(self) -> None:
        self.pg = placement_group(self.plan.bundles, strategy=self.plan.strategy)
        if not self.pg.wait(timeout_seconds=600):
            raise RuntimeError(
                f"Ray could not place bundles {self.plan.bundles} (strategy {self.plan.strategy}); the cluster "
                "lacks the CPUs/GPUs the resources file asks for"
            )

    def _actor(self, cls: type, role: str, index: int, *args: Any, **kwargs: Any) -> Any:
        slot = self.plan.slot(role, index)
        handle = remote_class(
            cls,
            num_cpus=slot.cpus,
            num_gpus=slot.gpus,
            runtime_env=actor_env(max(1, int(slot.cpus))),
            scheduling_strategy=in_bundle(self.pg, slot.bundle),
        ).remote(*args, **kwargs)
        self.handles.append(handle)
        return handle

    def _wait_ready(self, handles: Sequence[Any], role: str, timeout_s: float = 600.0) -> None:
        """Block until the actors answer; an actor Ray cannot place would otherwise hang the first call."""
        pending = [h.ready.remote() for h in handles]
        done, waiting = ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
        if waiting:
            raise RuntimeError(
                f"{len(waiting)} {role} actor(s) did not start within {timeout_s:.0f} s: the placement "
                f"({self.plan.bundles}) may lack the resources they ask for; see the actor logs"
            )
        ray.get(done)  # re-raises a constructor error with its traceback

    def coordinator(self) -> Sync:
        spec = DualRuleSpec.from_config(self.config.dual, self.models.constraint_names)
        return Sync(self._actor(DualCoordinator, "coordinator", 0, spec))

    def wait_ready(self) -> None:
        """Block until every role started with ``wait=False`` answers."""
        while self.pending:
            self._wait_ready(*self.pending.pop(0))

    def generator(self, wait: bool = True) -> GeneratorPool:
        g = self.config.generation
        engine = GeneratorConfig(
            model_path=self.models.policy,
            dtype=g.dtype,
            tensor_parallel_size=g.tensor_parallel_size,
            seed=g.seed,
            max_model_len=self.config.data.max_length,
            gpu_memory_utilization=g.gpu_memory_utilization,
            kv_cache_gib=g.kv_cache_gib,
            enable_sleep_mode=self.plan.engine_sleep,
        )
        cls = generator_class(g.engine)
        handles = [
            self._actor(cls, "generator", i, engine.model_path, **engine.kwargs())
            for i in range(self.plan.count("generator"))
        ]
        self.engines = GeneratorPool(
            handles,
            g.tensor_parallel_size,
            sleep=self.plan.engine_sleep,
            colocated=self.plan.share_gpus("trainer", "generator"),
        )
        self.pending.append((handles, "generator"))
        if wait:
            self.wait_ready()
        return self.engines

    def scorer(self, wait: bool = True) -> JointScorer:
        m = self.models
        s = self.config.scoring
        n_pools = self.plan.count("scorer")
        parts: list[tuple[ScorerPool, list[int], list[float]]] = []
        paths = ([m.reward] if m.reward else []) + [c.path for c in m.constraints if c.path]
        columns = ([0] if m.reward else []) + [1 + j for j, c in enumerate(m.constraints) if c.path]
        signs = [
            1.0 if col == 0 else -1.0 if m.constraints[col - 1].kind == "utility" else 1.0 for col in columns
        ]
        if paths:
            pool = ScorerPool(
                [
                    # a scorer with another vocabulary than the policy's re-encodes the text (models/bridge.py)
                    self._actor(SequenceScorer, "scorer", i, paths, s.batch_size, s.dtype, m.policy)
                    for i in range(n_pools)
                ]
            )
            parts.append((pool, columns, signs))
        # Python-function scorers are light: one actor evaluates all of them, one column each.
        functions = [(0, m.reward_function, 1.0)] if m.reward_function else []
        functions += [
            (1 + j, c.function, -1.0 if c.kind == "utility" else 1.0)
            for j, c in enumerate(m.constraints)
            if c.function
        ]
        if functions:
            stacked = StackedFunctions(tuple(fn for _, fn, _ in functions))
            handle = self._actor(FunctionScorer, "scorer", 0, stacked, m.policy)
            parts.append((ScorerPool([handle]), [c for c, _, _ in functions], [s for _, _, s in functions]))
        self.pending.append(([h for pool, _, _ in parts for h in pool.handles], "scorer"))
        if wait:
            self.wait_ready()
        return JointScorer(parts, 1 + len(m.constraints))

    def reference(self) -> ScorerPool:
        # π_ref in the training dtype: the actor's log-probs are in it, so the KL is exactly zero at step 0
        dtype = {"fp32": "float32", "bf16": "bfloat16"}[self.config.training.dtype]
        handle = self._actor(ReferenceScorer, "reference", 0, self.models.reference, dtype=dtype)
        return ScorerPool([handle])

    def trainer(
        self,
        model_path: str,
        kind: str = "causal_lm",
        *,
        total_steps: int,
        lr: float | None = None,
        role: str = "trainer",
        rows_per_example: int = 1,
        wait: bool = True,
    ) -> TrainerGroup:
        """A DeepSpeed group on the ``role`` bundles; algorithms call this through ``Cluster.new_trainer``."""
        t = self.config.training
        world = self.plan.count(role)
        # training.batch_size / micro_batch_size count examples (pairs for preference losses); ranks see rows.
        per_rank = max(1, t.batch_size * rows_per_example // world)
        micro = min(t.micro_batch_size * rows_per_example, per_rank)
        if per_rank % micro:
            raise ValueError(
                f"training.batch_size ({t.batch_size}) split over {world} ranks gives {per_rank} rows per rank, "
                f"not a multiple of training.micro_batch_size ({micro // rows_per_example}); pick sizes that divide"
            )
        train = TrainConfig(
            lr=lr or t.lr,
            weight_decay=t.weight_decay,
            lr_schedule=t.scheduler,
            warmup_ratio=t.warmup_ratio,
            total_steps=max(1, total_steps),
            zero_stage=t.zero_stage,
            dtype=t.dtype,
            micro_batch_size=micro,
            grad_accum_steps=max(1, per_rank // micro),
            grad_clip=t.grad_clip,
            gradient_checkpointing=t.gradient_checkpointing,
            lora=LoraSettings(**t.lora.model_dump()) if t.lora else None,
            logprob_chunk_size=t.logprob_chunk_size,
            seed=t.seed,
        )
        slots = [self.plan.slot(role, i) for i in range(world)]
        share = self.shares.get(role, 1)
        group = TrainerGroup(
            model_path,
            kind,
            world,
            train,
            num_cpus_per_rank=slots[0].cpus / share,
            num_gpus_per_rank=slots[0].gpus / share,
            placement_group=self.pg,
            bundle_indices=[s.bundle for s in slots],
            # engines that share the trainers' GPUs free them first (engine_sleep in the resources file)
            before_compute=self.engines.sleep if self.engines and role == "trainer" else None,
            wait=wait,
        )
        self.groups.append(group)
        return group

    def shutdown(self) -> None:
        for group in self.groups:
            group.shutdown()
        for handle in self.handles:
            ray.kill(handle)
        if self.pg is not None:
            remove_placement_group(self.pg)


def build_cluster(
    config: JobConfig, models: ResolvedModels, roles: Sequence[str], resources: ResourcesFile | None = None
) -> tuple[Cluster, ClusterBuilder]:
    """Start the roles in ``roles`` (and the coordinator). Returns the algorithm's view and the builder.

    ``resources``: the placement to use instead of the job's (the evaluation phase fills in roles a job's
    resources file may lack)."""
    resources = resources or resources_for(config, roles)
    builder = ClusterBuilder(config, models, plan_placement(resources))
    builder.start()
    cluster = Cluster(
        coordinator=builder.coordinator(),
        constraint_names=models.constraint_names,
        policy_path=models.policy,
        new_trainer=builder.trainer,
        critic_path=models.critic,
        cost_critic_path=models.cost_critic,
    )
    if "critic" in roles:
        # PPO-Lagrangian holds 1 + m critic groups at once (reward, one per constraint) on the critic bundles.
        builder.shares["critic"] = 1 + len(models.constraint_names)
    # The roles start side by side (process starts, imports and model loads overlap), unless the scorer shares
    # the generator's GPU: vLLM sizes its KV cache from the memory free while it starts.
    overlap = not builder.plan.share_gpus("scorer", "generator")
    if "generator" in roles:
        cluster.generator = builder.generator(wait=not overlap)
    if "scorer" in roles:
        cluster.scorer = builder.scorer(wait=not overlap)
    if "reference" in roles:
        cluster.reference = builder.reference()
    builder.wait_ready()
    return cluster, builder
