"""What a shared-mode sweep runs once, and what it runs per point, for each one-shot method.

    shared = steps.shared(config, cluster, out)              once, in <sweep>/shared
    prepared = steps.prepare(config, cluster, shared)        per point, in the driver, before any training
    result = steps.train(config, cluster, out, shared, prepared)   per point, concurrently, in its run folder

``prepare`` is fast (MoCAN and PeCAN: λ* and the prediction) and may raise ValueError (an infeasible margin),
so every point's dual is solved, and a bad one reported, before the trainings start. The steps are the
methods' own functions (ray_align.algorithms.mocan, pecan, sacpo), so a point computes what `ray-align run`
of its config computes. Like the methods, nothing here imports Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.run_dir import RunDir


@dataclass(frozen=True)
class MocanSteps:
    """1, 3 once (π_ref sampled and scored, pairs scored); 2 per point (λ*); 4-5 per point (labels, DPO)."""

    roles = ("generator", "scorer")  # the shared part's roles; trainings get their own trainer groups
    tables = ("reference_samples.parquet",)  # copied into each point's tables/ (its report's trade-off plot)

    def shared(self, config: JobConfig, cluster: Cluster, out: RunDir) -> Any:
        from ray_align.algorithms import mocan

        return mocan.reference_part(config, cluster, out)

    def prepare(self, config: JobConfig, cluster: Cluster, shared: Any) -> Any:
        from ray_align.algorithms import mocan

        return mocan.optimal_dual(config, cluster, shared)

    def train(self, config: JobConfig, cluster: Cluster, out: RunDir, shared: Any, prepared: Any) -> dict:
        from ray_align.algorithms import mocan

        lam, prediction = prepared
        return mocan.train_at(config, cluster, out, shared, lam, prediction)


@dataclass(frozen=True)
class PecanSteps:
    """1-3 once (DPO_H, DPO_S, π_ref's samples and implicit scores); 4 per point (λ*); 5-6 per point."""

    roles = ("generator",)
    tables = ("pecan_samples.parquet",)

    def shared(self, config: JobConfig, cluster: Cluster, out: RunDir) -> Any:
        from ray_align.algorithms import pecan

        return pecan.reference_part(config, cluster, out)

    def prepare(self, config: JobConfig, cluster: Cluster, shared: Any) -> Any:
        from ray_align.algorithms import pecan

        return pecan.optimal_dual(config, cluster, shared)

    def train(self, config: JobConfig, cluster: Cluster, out: RunDir, shared: Any, prepared: Any) -> dict:
        from ray_align.algorithms import pecan

        lam, prediction = prepared
        return pecan.train_at(config, cluster, out, shared, lam, prediction)


@dataclass(frozen=True)
class SacpoSteps:
    """Step 1 once; step 2 and the P-SACPO merges per point (the q axis is every point's merge list)."""

    roles = ()
    tables = ()

    def shared(self, config: JobConfig, cluster: Cluster, out: RunDir) -> Any:
        from ray_align.algorithms import sacpo
        from ray_align.algorithms.common import load_dataset

        train, _ = load_dataset(config)
        return train, *sacpo.first_step(config, cluster, out, train)

    def prepare(self, config: JobConfig, cluster: Cluster, shared: Any) -> Any:
        return None

    def train(self, config: JobConfig, cluster: Cluster, out: RunDir, shared: Any, prepared: Any) -> dict:
        from ray_align.algorithms import sacpo

        train, step1, stats1 = shared
        return sacpo.second_step_and_merges(config, cluster, out, train, step1, stats1)


STEPS = {"mocan": MocanSteps(), "pecan": PecanSteps(), "sacpo": SacpoSteps()}
