"""Sample-and-score: N prompts × K responses from the policy, scored, written as a Parquet table.

The table is what `ray-align dual` reads to pick margins before any training; with constraints configured
the run also solves the CAN dual on it and reports λ* and the predicted outcome of π_λ*.

    1. load prompts (the configured dataset, or the built-in one)
    2. generate K responses per prompt with the vLLM engines
    3. score every response: reward and one cost per constraint
    4. write tables/samples.parquet
    5. (with dual.constraints) solve the dual in the coordinator; write the prediction
"""

from __future__ import annotations

import logging

import numpy as np

from ray_align.algorithms.common import (
    load_dataset,
    prompt_texts,
    prompt_token_ids,
    sample_and_score,
    sampling_from,
)
from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.dual.predict import predict
from ray_align.run_dir import RunDir

logger = logging.getLogger(__name__)
ROLES = ("generator", "scorer")


def dual_bounds(config: JobConfig, names: list[str]) -> dict[str, list[float] | None]:
    """margin / threshold vectors in the order of ``names`` (the dual's utility scale: threshold −d)."""
    by_name = {c.name: c for c in config.dual.constraints}
    chosen = [by_name[n] for n in names if n in by_name]
    if len(chosen) != len(names):
        raise ValueError(f"dual.constraints must list every constraint {names} once")
    if all(c.margin is not None for c in chosen):
        return {"margin": [c.margin for c in chosen], "threshold": None}
    if all(c.threshold is not None for c in chosen):
        # A cost threshold E[c] ≤ d is the utility threshold E[g] ≥ −d.
        return {"margin": None, "threshold": [-c.threshold for c in chosen]}
    raise ValueError(
        "mixing margins and thresholds across constraints is not supported; use one form for all"
    )


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    # 1. prompts
    train, _ = load_dataset(config)
    texts = prompt_texts(train, config.can.num_prompts)
    # 2-3. sample and score
    samples = sample_and_score(
        cluster,
        prompt_token_ids(texts, config, cluster.policy_path),
        sampling_from(config, n=config.can.samples_per_prompt),
    )
    # 4. the table
    path = samples.write(out.path("tables", "samples.parquet"), texts, cluster.constraint_names)
    result: dict = {
        "table": str(path),
        "prompts": len(texts),
        "responses": len(samples.rollouts),
        "mean_reward": float(samples.reward.mean()),
        "mean_cost": {n: float(samples.costs[:, j].mean()) for j, n in enumerate(cluster.constraint_names)},
    }
    # 5. the dual, when constraints are configured
    if config.dual.constraints:
        table = samples.table()
        bounds = dual_bounds(config, cluster.constraint_names)
        solution = cluster.coordinator.solve(table, config.can.beta, **bounds)
        prediction = predict(table, config.can.beta, solution.lam)
        result["lambda"] = dict(zip(cluster.constraint_names, np.asarray(solution.lam).tolist()))
        result["predicted"] = {
            "reward": prediction.reward,
            **{n: float(prediction.utilities[j]) for j, n in enumerate(cluster.constraint_names)},
            "kl": prediction.kl,
        }
        result["predicted_margin"] = dict(zip(cluster.constraint_names, prediction.margin.tolist()))
        result["dual_value"] = float(solution.dual_value)
    out.write_result(result)
    return result
