"""Sample K responses per prompt from each policy and score them: the evaluation frame (one row per sample).

Everything goes through the run's roles (``ray_align.cluster.Cluster``): the generators load each policy's
weights in turn, the scorers give reward and costs, and the reference model gives log π_ref of the sampled
tokens, so KL(π‖π_ref) is estimated from the same samples (docs/eval.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ray_align.cluster import Cluster, Sampling
from ray_align.errors import UserError
from ray_align.eval.prompts import PromptSet

CHUNK_PROMPTS = 16  # prompts per generate call: the progress bar's unit


@dataclass(frozen=True)
class PolicyToEvaluate:
    """A policy by name and checkpoint folder (a Hugging Face causal LM of the engines' architecture)."""

    name: str
    path: str


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint folder's tensors under their checkpoint names (what the engines' weight reload takes)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise UserError(f"{path}: no *.safetensors weights; give a checkpoint folder written by a run")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    return weights


def _rows(policy: str, prompts: PromptSet, rollouts, scores: np.ndarray, ref_logps, names) -> pd.DataFrame:
    index = np.asarray(rollouts.prompt_index)
    sample = np.zeros(len(index), dtype=np.int64)
    for i in range(1, len(index)):  # entries are grouped by prompt: count within each group
        sample[i] = sample[i - 1] + 1 if index[i] == index[i - 1] else 0
    frame = pd.DataFrame(
        {
            "policy": policy,
            "prompt_id": index,
            "sample": sample,
            "prompt": [prompts.texts[i] for i in index],
            "response": list(rollouts.text),
        }
    )
    if prompts.categories is not None:
        frame["category"] = [prompts.categories[i] for i in index]
    if not np.isnan(scores[:, 0]).all():
        frame["reward"] = scores[:, 0]
    for j, name in enumerate(names):
        frame[f"cost.{name}"] = scores[:, 1 + j]
    frame["logp"] = [float(sum(lp)) for lp in rollouts.response_logprobs]
    frame["ref_logp"] = [float(sum(lp)) for lp in ref_logps]
    frame["tokens"] = [len(r) for r in rollouts.response_ids]
    return frame


def sample_policy(
    cluster: Cluster,
    name: str,
    prompts: PromptSet,
    prompt_ids: Sequence[Sequence[int]],
    sampling: Sampling,
    progress: Callable[[int], None] = lambda n: None,
) -> pd.DataFrame:
    """Rows of one policy already loaded in the generators; ``progress(k)`` after each chunk of k prompts."""
    parts = []
    for start in range(0, len(prompt_ids), CHUNK_PROMPTS):
        chunk = list(prompt_ids[start : start + CHUNK_PROMPTS])
        rollouts = cluster.generator.generate(chunk, sampling, first_index=start)
        rollouts.prompt_index = [i + start for i in rollouts.prompt_index]
        scores = np.asarray(
            cluster.scorer.score(rollouts.prompt_ids, rollouts.response_ids), dtype=np.float64
        )
        ref = cluster.reference.response_logprobs(rollouts.prompt_ids, rollouts.response_ids)
        parts.append(_rows(name, prompts, rollouts, scores, ref, cluster.constraint_names))
        progress(len(chunk))
    return pd.concat(parts, ignore_index=True)


def collect(
    cluster: Cluster,
    policies: Sequence[PolicyToEvaluate],
    prompts: PromptSet,
    prompt_ids: Sequence[Sequence[int]],
    sampling: Sampling,
    progress: Callable[[int], None] = lambda n: None,
) -> pd.DataFrame:
    """The evaluation frame of every policy, in order; each policy's weights are loaded into the generators
    first (the engines start with ``cluster.policy_path``, which needs no reload)."""
    loaded = cluster.policy_path
    frames = []
    for policy in policies:
        if Path(policy.path).resolve() != Path(loaded).resolve():
            cluster.generator.update_weights(load_weights(policy.path))
            loaded = policy.path
        frames.append(sample_policy(cluster, policy.name, prompts, prompt_ids, sampling, progress))
    return pd.concat(frames, ignore_index=True)
