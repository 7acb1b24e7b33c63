"""Harness for the known-optimum checks of the DEFAULT paths: dataset pairs, hard labels, classifier scorers.

MoCAN and CAID relabel the dataset's own pairs (``can.pairs: dataset``) with one hard Bernoulli label each
(``can.label: hard``), and ``algorithm: dpo`` learns the dataset's own labels. DPO on finitely many hard-labelled
pairs converges to the Bradley–Terry fit of their win counts (``ray_align.tasks.dpo_optimum``), so each run's
exact target is computed from the pairs it trained on: here the labels are redrawn exactly as the run drew them
(same pairs in the same order, the task's tables as scores, the run's λ and seed, ``mocan_labels``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from known_optimum import Reference, write_preference_pairs

from ray_align.algorithms.common import load_dataset
from ray_align.data import helpfulness_pairs
from ray_align.labels import mocan_labels
from ray_align.tasks import known_optimum as ko
from ray_align.tasks.answer_scorer import answer_index, prompt_index
from ray_align.tasks.dpo_optimum import dpo_optimum, preference_counts
from ray_align.tasks.score_classifier import build_table_classifier

write_pair_dataset = write_preference_pairs  # the stepwise suite's file: same rows, same stratified labels


def dataset_pairs(config) -> tuple[list[str], list[str], list[str]]:
    """(prompts, first, second) of the run's pairs, in its order: the helpfulness view (first = the better one)."""
    train, _ = load_dataset(config)
    view = helpfulness_pairs(train)
    return list(view["prompt"]), list(view["chosen"]), list(view["rejected"])


def dataset_wins(ref: Reference, config) -> np.ndarray:
    """W [X, A, A] of the dataset's own helpfulness labels (what ``algorithm: dpo`` trains on)."""
    return preference_counts(ref.task, *dataset_pairs(config))


def relabelled_wins(ref: Reference, config, lam: np.ndarray, seed: int) -> np.ndarray:
    """W [X, A, A] of MoCAN's / CAID's hard relabelling of the dataset pairs at λ with ``seed``: labels
    1[y1 ≻ y0] ~ Bernoulli(σ(R1 − R0)), R = r + λᵀg from the task's tables."""
    task = ref.task
    prompts, first, second = dataset_pairs(config)
    x = np.array([prompt_index(task, p) for p in prompts])
    a0 = np.array([answer_index(task, y) for y in first])
    a1 = np.array([answer_index(task, y) for y in second])
    labels = mocan_labels(
        task.reward[x, a0], task.reward[x, a1], task.utilities[x, a0], task.utilities[x, a1], lam, rng=seed
    )
    chosen = [s if k else f for f, s, k in zip(first, second, labels)]
    rejected = [f if k else s for f, s, k in zip(first, second, labels)]
    return preference_counts(task, prompts, chosen, rejected)


def target(ref: Reference, wins: np.ndarray) -> np.ndarray:
    """π̂ [X, V]: the exact DPO optimum on these counts (β = the task's)."""
    return dpo_optimum(ref.task, ref.pi_ref, wins, ref.task.beta, ref.answer_ids)


def lagrangian_policy(ref: Reference, lam: np.ndarray) -> np.ndarray:
    """π_λ [X, V] = π_ref e^{(r + λᵀg)/β}/Z, the population target at λ (π* at λ*)."""
    r, g = ko.score_tables(ref.task, ref.pi_ref.shape[1], ref.answer_ids)
    return ko.tilted_policy(ref.pi_ref, r + g @ np.asarray(lam, dtype=np.float64), ref.task.beta)


def classifier_models(ref: Reference, root: Path) -> dict[str, str]:
    """A reward classifier scoring r and one cost classifier per constraint scoring c_j = −g_j, as checkpoints
    that share the policy's tokenizer. Returns {"reward": path, name_j: path}."""
    from transformers import AutoTokenizer

    task = ref.task
    tokenizer = AutoTokenizer.from_pretrained(ref.policy)
    tables = {"reward": (task.reward, task.reward_out)}
    for j, name in enumerate(("safety", "humour")[: task.m]):
        tables[name] = (-task.utilities[..., j], -task.utility_out)
    return {
        name: str(build_table_classifier(root / name, tokenizer, ref.prompt_ids, ref.answer_ids, values, out))
        for name, (values, out) in tables.items()
    }
