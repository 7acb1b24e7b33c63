"""MoCAN (Huang et al. 2024): one-shot safety alignment with score models and the optimal dual.

1. sample K responses for each of N prompts from π_ref; score reward and constraints   (the dual's table)
2. the coordinator solves λ* = argmin_{λ≥0} D̂(λ) for the configured margins/thresholds
3. build pairs (y0, y1): the dataset's own pairs (the paper), or pairs of the π_ref samples
4. relabel: 1[y1 ≻ y0] ~ Bernoulli(σ(R(y1) − R(y0))), R = r + λ*ᵀg  (or soft labels)
5. one DPO run with β from π_ref
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import AutoTokenizer

from ray_align.algorithms.common import (
    ScoredSamples,
    generators_on_reference,
    load_dataset,
    prompt_texts,
    prompt_token_ids,
    reference_path,
    sample_and_score,
    sampling_from,
    tokenize_options,
)
from ray_align.algorithms.dpo import dpo_run
from ray_align.algorithms.preference import Example, labelled_pairs, split_example
from ray_align.algorithms.sample_score import dual_bounds
from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.data import helpfulness_pairs, tokenize_pairs
from ray_align.data.formatting import join_example
from ray_align.dual.can import ScoredTable
from ray_align.dual.predict import Prediction, predict
from ray_align.labels import mocan_labels
from ray_align.run_dir import RunDir

ROLES = ("generator", "scorer", "trainer")


def sample_pairs(samples, prompt_ids: list[list[int]]):
    """Consecutive samples of the same prompt as pairs (y0, y1): K samples give K // 2 pairs per prompt."""
    first, second, rows = [], [], []
    index = np.asarray(samples.rollouts.prompt_index)
    for i in np.unique(index):
        mine = np.flatnonzero(index == i)
        for a, b in zip(mine[0::2], mine[1::2]):
            first.append(join_example(prompt_ids[i], list(samples.rollouts.response_ids[a])))
            second.append(join_example(prompt_ids[i], list(samples.rollouts.response_ids[b])))
            rows.append((a, b))
    rows = np.asarray(rows)
    scores = (
        samples.reward[rows[:, 0]],
        samples.reward[rows[:, 1]],
        samples.utilities[rows[:, 0]],
        samples.utilities[rows[:, 1]],
    )
    return first, second, scores


def dataset_pairs_scored(cluster: Cluster, ds, tokenizer, config: JobConfig):
    """The dataset's (response_0, response_1) pairs, tokenised and scored: (first, second, (r0, r1, g0, g1))."""
    view = helpfulness_pairs(ds)  # any orientation works: the labels below decide
    tokenized = tokenize_pairs(view, tokenizer, **tokenize_options(config))
    first = [p["chosen"] for p in tokenized]
    second = [p["rejected"] for p in tokenized]
    scores = []
    for side in (first, second):
        split = [split_example(e) for e in side]
        s = np.asarray(cluster.scorer.score([p for p, _ in split], [r for _, r in split]), dtype=np.float64)
        scores.append((s[:, 0], -s[:, 1:]))
    (r0, g0), (r1, g1) = scores
    return first, second, (r0, r1, g0, g1)


@dataclass
class Reference:
    """What every λ shares: π_ref's scored samples (the dual's table) and the scored pairs to relabel.

    The sweep (ray_align/sweep) computes this once and trains one policy per margin from it."""

    samples: ScoredSamples
    first: list[Example]
    second: list[Example]
    scores: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # r0, r1, g0, g1 of the pairs

    def table(self) -> ScoredTable:
        return self.samples.table()


def reference_part(config: JobConfig, cluster: Cluster, out: RunDir) -> Reference:
    """Steps 1 and 3: sample and score π_ref (written to tables/reference_samples.parquet), score the pairs."""
    names = cluster.constraint_names
    train, _ = load_dataset(config)
    texts = prompt_texts(train, config.can.num_prompts)
    ids = prompt_token_ids(texts, config, cluster.policy_path)
    generators_on_reference(config, cluster)
    samples = sample_and_score(cluster, ids, sampling_from(config, n=config.can.samples_per_prompt))
    samples.write(out.path("tables", "reference_samples.parquet"), texts, names)
    if config.can.pairs == "samples":
        first, second, scores = sample_pairs(samples, ids)
    else:
        tokenizer = AutoTokenizer.from_pretrained(cluster.policy_path)
        first, second, scores = dataset_pairs_scored(cluster, train, tokenizer, config)
    return Reference(samples, first, second, scores)


def optimal_dual(config: JobConfig, cluster: Cluster, reference: Reference) -> tuple[np.ndarray, Prediction]:
    """Step 2: λ* from the coordinator, and what π_λ* is predicted to score on the reference table."""
    names = cluster.constraint_names
    table = reference.table()
    solution = cluster.coordinator.solve(table, config.can.beta, **dual_bounds(config, names))
    lam = np.asarray(solution.lam)
    return lam, predict(table, config.can.beta, lam)


def train_at(
    config: JobConfig,
    cluster: Cluster,
    out: RunDir,
    reference: Reference,
    lam: np.ndarray,
    prediction: Prediction,
) -> dict:
    """Steps 4-5: relabel the pairs by r + λᵀg, one DPO run from π_ref; writes and returns the result."""
    names = cluster.constraint_names
    r0, r1, g0, g1 = reference.scores
    soft = config.can.label == "soft"
    labels = mocan_labels(r0, r1, g0, g1, lam, rng=config.seed, soft=soft)
    pairs = labelled_pairs(reference.first, reference.second, labels, soft)
    checkpoint, stats = dpo_run(
        config,
        cluster,
        out,
        model_path=cluster.policy_path,
        pairs=pairs,
        beta=config.can.beta,
        stage="mocan_dpo",
        reference_path=reference_path(config, cluster),
    )
    result = {
        "checkpoint": checkpoint,
        "lambda": dict(zip(names, lam.tolist())),
        "predicted": {"reward": prediction.reward, **dict(zip(names, prediction.utilities.tolist()))},
        # E_π*[g] − E_ref[g] on the reference table: what the evaluation's achieved margin is compared with
        "predicted_margin": dict(zip(names, prediction.margin.tolist())),
        "predicted_kl": prediction.kl,
        "pairs": len(pairs),
        **stats,
    }
    out.write_result(result)
    return result


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    reference = reference_part(config, cluster, out)  # 1, 3
    lam, prediction = optimal_dual(config, cluster, reference)  # 2
    return train_at(config, cluster, out, reference, lam, prediction)  # 4-5
