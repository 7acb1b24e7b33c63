"""PeCAN (Huang et al. 2024): one-shot safety alignment from preferences alone, with no score models.

1. DPO_H on helpfulness pairs and DPO_S on safety pairs, each from π_ref with β = can.beta
2. sample K responses for each of N prompts from π_ref (the generators)
3. implicit scores of every sample and every pair to relabel (sequence sums over the response tokens):
       h_r = log π_H − log π_ref,   h_g = log π_S − log π_ref
4. the dual on the samples with r = β h_r and g = β h_g: λ* = argmin_{λ≥0} D̂(λ) (coordinator.solve)
5. relabel pairs (y0, y1): 1[y1 ≻ y0] ~ Bernoulli(σ(β(Δh_r + λ*Δh_g)))  (can.pecan_label "theory", the
   default; "reference" is the released code's σ(Δh_r + λ*Δh_g))
6. one DPO run with β from π_ref

Scaling. DPO_H with β fits π_H = π_ref e^{r/β} / Z_H, so r(x,y) = β h_r(x,y) + β log Z_H(x); likewise g. The
dual table therefore holds r = β h_r and g = β h_g, and its tilted target π_ref e^{(r + λg)/β} is
π_ref e^{h_r + λ h_g}. DPO with β on labels σ(β Δ(h_r + λh_g)) fits exactly that policy; the "reference"
labels fit π_ref e^{(h_r + λh_g)/β} instead (see ray_align.labels).

Margins. The unknown log Z(x) terms are per-prompt constants: they cancel in the softmax over one prompt's
responses and, with a margin b, in E_π[g] − E_ref[g] (the solver puts τ = Ē_ref[g] + b). So the constraint
must be a margin, read in units of g = β h_g (the released code's b/β in units of h_g). Ē_ref[g] is the sample
estimate of −β KL(π_ref ‖ π_S) = β E_ref[h_g]: the released code's KL correction, here built in.
An absolute threshold would depend on log Z and is refused, as is more than one constraint (PKU has one
safety preference, so m = 1).
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
    sampling_from,
)
from ray_align.algorithms.dpo import dataset_pairs, dpo_run
from ray_align.algorithms.preference import Example, example_logps, labelled_pairs
from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.data import tokenizer_pad_id
from ray_align.data.formatting import join_example
from ray_align.dual.predict import Prediction, predict
from ray_align.labels import pecan_labels
from ray_align.run_dir import RunDir

ROLES = ("generator", "trainer")


def pecan_margin(config: JobConfig, method: str = "PeCAN", instead: str = "MoCAN") -> tuple[str, float]:
    """(constraint name, margin b): the implicit-score methods (PeCAN, PeCAID) take one constraint, a margin."""
    constraints = config.dual.constraints
    if len(constraints) != 1:
        raise ValueError(
            f"{method} learns one safety preference (safer_response_id), so it solves a dual with m = 1 "
            f"constraint; got {len(constraints)} in dual.constraints. Use {instead} (score models) for several "
            f"constraints."
        )
    c = constraints[0]
    if c.margin is None:
        raise ValueError(
            f"{method}'s implicit scores are known only up to a per-prompt constant (log Z), which an absolute "
            f"threshold would depend on; give dual.constraints '{c.name}' a margin (in units of β·h_g) instead"
        )
    return c.name, float(c.margin)


def sample_pair_rows(prompt_index: np.ndarray) -> np.ndarray:
    """Rows [P, 2] pairing consecutive samples of the same prompt: K samples give K // 2 pairs per prompt."""
    prompt_index = np.asarray(prompt_index)
    rows = []
    for i in np.unique(prompt_index):
        mine = np.flatnonzero(prompt_index == i)
        rows += list(zip(mine[0::2], mine[1::2]))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def rollout_examples(rollouts) -> list[Example]:
    """The sampled (prompt, response) pairs as tokenised examples, the form the log-prob passes take."""
    return [join_example(list(p), list(r)) for p, r in zip(rollouts.prompt_ids, rollouts.response_ids)]


def implicit_scores(
    config: JobConfig, cluster: Cluster, examples: list[Example], *, policy_h: str, policy_s: str
) -> tuple[np.ndarray, np.ndarray]:
    """(h_r, h_g) [n] of ``examples``: sequence log-probs under π_H and π_S minus those under π_ref.

    One trainer computes all three, reloading the checkpoints in turn: the same forward code and dtype for
    every term, so their numerical error does not leak into the differences h. (cluster.reference serves
    π_ref only, and the generators' sampling log-probs come from another engine's kernels.)
    """
    batch_size = config.training.batch_size
    trainer = cluster.new_trainer(reference_path(config, cluster), "causal_lm", total_steps=1)
    try:
        pad_id = tokenizer_pad_id(AutoTokenizer.from_pretrained(cluster.policy_path), config.models.pad_token)
        logp_ref = example_logps(trainer, examples, pad_id, batch_size)
        trainer.load(policy_h)
        logp_h = example_logps(trainer, examples, pad_id, batch_size)
        trainer.load(policy_s)
        logp_s = example_logps(trainer, examples, pad_id, batch_size)
    finally:
        trainer.shutdown()
    return logp_h - logp_ref, logp_s - logp_ref


def pairs_to_relabel(
    config: JobConfig, train, tokenizer, prompt_index: list[int], sampled: list[Example]
) -> tuple[list[Example], list[Example]]:
    """(y0 examples, y1 examples): the dataset's pairs (can.pairs "dataset", the paper) or π_ref sample pairs."""
    if config.can.pairs == "dataset":
        tokenized = dataset_pairs(train, "helpfulness", tokenizer, config).pairs  # the labels set the order
        return [p["chosen"] for p in tokenized], [p["rejected"] for p in tokenized]
    rows = sample_pair_rows(np.asarray(prompt_index))
    return [sampled[a] for a in rows[:, 0]], [sampled[b] for b in rows[:, 1]]


def preference_policies(
    config: JobConfig, cluster: Cluster, out: RunDir, train, tokenizer, prefix: str = "pecan"
) -> dict[str, str]:
    """Step 1: {"helpfulness": DPO_H checkpoint, "safety": DPO_S checkpoint}, both from π_ref with β; recorded
    stages ``{prefix}_helpfulness`` and ``{prefix}_safety`` (a rerun of the job reuses finished ones)."""
    policies = {}
    for preference in ("helpfulness", "safety"):
        pairs = dataset_pairs(train, preference, tokenizer, config)
        policies[preference], _ = dpo_run(
            config,
            cluster,
            out,
            model_path=reference_path(config, cluster),  # DPO_H and DPO_S start at π_ref
            pairs=pairs,
            beta=config.can.beta,
            stage=f"{prefix}_{preference}",
        )
    return policies


@dataclass
class Reference:
    """What every margin shares: DPO_H and DPO_S, π_ref's samples scored by β·h (the dual's table), and the
    implicit scores of the pairs to relabel. The sweep (ray_align/sweep) computes this once per sweep."""

    policies: dict[str, str]
    samples: ScoredSamples  # reward β h_r, cost −β h_g
    first: list[Example]
    second: list[Example]
    h_r: tuple[np.ndarray, np.ndarray]  # of (y0, y1)
    h_g: tuple[np.ndarray, np.ndarray]
    prompt_ids: list[list[int]] | None = None  # the N sampled prompts, as the engines condition on them


def reference_part(
    config: JobConfig, cluster: Cluster, out: RunDir, *, prefix: str = "pecan", sample=None
) -> Reference:
    """Steps 1-3 and the table of step 4 (tables/{prefix}_samples.parquet): everything before λ*.

    ``sample``: (N prompts, K samples per prompt) of π_ref; default can.num_prompts × can.samples_per_prompt
    (PeCAID passes its caid.* sizes). ``prefix`` names the DPO_H/DPO_S stages and the table."""
    name = config.dual.constraints[0].name
    beta = config.can.beta
    num_prompts, per_prompt = sample or (config.can.num_prompts, config.can.samples_per_prompt)
    train, _ = load_dataset(config)
    tokenizer = AutoTokenizer.from_pretrained(cluster.policy_path)
    # 1. DPO_H and DPO_S from π_ref
    policies = preference_policies(config, cluster, out, train, tokenizer, prefix)
    # 2. N × K samples of π_ref
    texts = prompt_texts(train, num_prompts)
    ids = prompt_token_ids(texts, config, cluster.policy_path)
    generators_on_reference(config, cluster)
    rollouts = cluster.generator.generate(ids, sampling_from(config, n=per_prompt))
    sampled = rollout_examples(rollouts)
    # 3. implicit scores of the samples and of the pairs to relabel, in one pass per model
    first, second = pairs_to_relabel(config, train, tokenizer, rollouts.prompt_index, sampled)
    h_r, h_g = implicit_scores(
        config,
        cluster,
        sampled + first + second,
        policy_h=policies["helpfulness"],
        policy_s=policies["safety"],
    )
    n, p = len(sampled), len(first)
    # 4. the dual's table: r = β h_r, g = β h_g (stored on the cost scale, −g)
    samples = ScoredSamples(rollouts, beta * h_r[:n], -beta * h_g[:n, None])
    samples.write(out.path("tables", f"{prefix}_samples.parquet"), texts, [name])
    y0, y1 = slice(n, n + p), slice(n + p, n + 2 * p)
    return Reference(policies, samples, first, second, (h_r[y0], h_r[y1]), (h_g[y0], h_g[y1]), ids)


def optimal_dual(config: JobConfig, cluster: Cluster, reference: Reference) -> tuple[np.ndarray, Prediction]:
    """Step 4: λ* on the β·h table, and the prediction for π_λ* (in β·h units)."""
    _, margin = pecan_margin(config)
    table = reference.samples.table()
    lam = np.asarray(cluster.coordinator.solve(table, config.can.beta, margin=[margin]).lam)
    return lam, predict(table, config.can.beta, lam)


def train_at(
    config: JobConfig,
    cluster: Cluster,
    out: RunDir,
    reference: Reference,
    lam: np.ndarray,
    prediction: Prediction,
) -> dict:
    """Steps 5-6: relabel (y0, y1) with Δ = (y1) − (y0), one DPO run from π_ref; writes and returns the result."""
    name, _ = pecan_margin(config)
    beta = config.can.beta
    (h_r0, h_r1), (h_g0, h_g1) = reference.h_r, reference.h_g
    soft = config.can.label == "soft"
    labels = pecan_labels(
        h_r0, h_r1, h_g0, h_g1, lam, beta, form=config.can.pecan_label, rng=config.seed, soft=soft
    )
    pairs = labelled_pairs(reference.first, reference.second, labels, soft)
    checkpoint, stats = dpo_run(
        config,
        cluster,
        out,
        model_path=cluster.policy_path,
        pairs=pairs,
        beta=beta,
        stage="pecan_dpo",
        reference_path=reference_path(config, cluster),
    )
    result = {
        "checkpoint": checkpoint,
        "policies": reference.policies,
        "lambda": {name: float(lam[0])},
        "predicted": {
            "reward": prediction.reward,
            "margin": float(prediction.margin[0]),
            "kl": prediction.kl,
        },
        "label_form": config.can.pecan_label,
        "pairs": len(pairs),
        "preferred_second": float(np.mean(labels)),
        **stats,
    }
    out.write_result(result)
    return result


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    pecan_margin(config)  # refuse a bad constraint before any training
    reference = reference_part(config, cluster, out)  # 1-3
    lam, prediction = optimal_dual(config, cluster, reference)  # 4
    return train_at(config, cluster, out, reference, lam, prediction)  # 5-6
