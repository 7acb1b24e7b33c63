"""The roles of the distributed system as typed Protocols, and the plain data passed between them.

Algorithms program against these Protocols only. The Ray actor classes in ``actors/`` implement them; the driver
wires the two together. Keeping the seam here means every algorithm loop can run with in-process objects.

Token convention used everywhere: for ``input_ids`` [B, T], ``logprobs[:, t] = log p(input_ids[:, t+1] | input_ids[:, :t+1])``
has shape [B, T-1], and ``response_mask`` [B, T-1] marks the positions whose target token belongs to the response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one generate call (vLLM's names)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int | None = 0
    stop: tuple[str, ...] = ()


@dataclass
class Rollouts:
    """Generated responses, one entry per (prompt, sample); ragged token lists.

    ``prompt_index[i]`` is the index of the prompt in the request that produced entry i; entries are grouped by prompt
    in request order, ``n`` consecutive samples per prompt.
    """

    prompt_index: list[int]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    response_logprobs: list[list[float]]
    text: list[str]

    def __len__(self) -> int:
        return len(self.prompt_index)

    @staticmethod
    def concat(parts: Sequence[Rollouts], offsets: Sequence[int]) -> Rollouts:
        """Join the results of several engines; ``offsets[j]`` shifts part j's prompt indices back to the batch's."""
        out = Rollouts([], [], [], [], [])
        for part, offset in zip(parts, offsets, strict=True):
            out.prompt_index += [i + offset for i in part.prompt_index]
            out.prompt_ids += part.prompt_ids
            out.response_ids += part.response_ids
            out.response_logprobs += part.response_logprobs
            out.text += part.text
        return out


Batch = Mapping[str, torch.Tensor]


class LossSpec(Protocol):
    """What a trainer executes: the model output it needs (``output``) and the loss on it."""

    output: str  # "logprobs" | "values" | "scores"
    paired: bool  # rows are [first..., second...] halves that must be sharded together (pair losses)

    def __call__(self, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


class Generator(Protocol):
    def generate(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], sampling: Sampling, first_index: int = 0
    ) -> Rollouts: ...

    def sync_from(self, trainer: PolicyTrainer) -> dict[str, float]:
        """Load the trainer's current weights, sent by the trainer itself (never through the caller)."""
        ...

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Load weights the caller holds (e.g. a checkpoint read from disk)."""
        ...


class Scorer(Protocol):
    """Scores full sequences (prompt + response token ids). Returns [n] for one head or [n, m] for m heads."""

    def score(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> np.ndarray: ...


class PolicyTrainer(Protocol):
    """A trainer group (N DeepSpeed ranks). The model kind decides which forward exists: a policy has
    ``logprobs``, a critic ``values``, a reward/cost model ``scores``."""

    def logprobs(self, batch: Batch) -> torch.Tensor: ...

    def values(self, batch: Batch) -> torch.Tensor: ...

    def scores(self, batch: Batch) -> torch.Tensor: ...

    def train_step(self, batch: Batch, spec: LossSpec) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def save(self, path: str) -> str: ...

    def load(self, path: str) -> None: ...

    def wait_ready(self) -> Any: ...

    def shutdown(self) -> None: ...


class DualCoordinator(Protocol):
    def lam(self) -> np.ndarray: ...

    def update(self, estimate: np.ndarray) -> np.ndarray: ...

    def solve(self, table: Any, **kwargs: Any) -> Any: ...

    def set_lam(self, lam: np.ndarray, event: str = "set", **info: Any) -> None: ...

    def history(self) -> list[dict[str, Any]]: ...

    def save(self, path: str) -> str: ...

    def restore(self, path: str) -> np.ndarray: ...


class TrainerFactory(Protocol):
    """Starts a trainer group on the bundles of ``role`` ("trainer" for policies, "critic" for value models).

    kind: "causal_lm" (a policy), "token_value" (a critic) or "sequence_score" (a reward/cost model).
    ``total_steps`` sizes the learning-rate schedule. Call ``shutdown()`` on the result to free its bundles.
    ``wait=False`` returns before the group is up, so several can start side by side; ``wait_ready()`` then.
    """

    def __call__(
        self,
        model_path: str,
        kind: str = "causal_lm",
        *,
        total_steps: int,
        lr: float | None = None,
        role: str = "trainer",
        wait: bool = True,
    ) -> PolicyTrainer: ...


class ReferenceModel(Protocol):
    """Per-token log-probs of the frozen reference policy for (prompt, response) token lists."""

    def response_logprobs(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> list[list[float]]: ...


@dataclass
class Cluster:
    """Handles to the running roles. Algorithms receive one of these; they never create actors themselves.

    ``scorer.score`` returns [n, 1 + m]: column 0 the reward, then one column per constraint on the COST scale
    (higher = more harmful; a utility g is stored as −g), in the order of ``constraint_names``.
    Roles an algorithm does not use are None.
    """

    coordinator: DualCoordinator
    constraint_names: list[str]
    policy_path: str  # the initial policy (= π_ref unless models.reference says otherwise); its tokenizer too
    new_trainer: TrainerFactory | None = None
    generator: Generator | None = None
    scorer: Scorer | None = None
    reference: ReferenceModel | None = None
    critic_path: str | None = None  # models.critic: where the reward critic starts (PPO-Lagrangian)
    cost_critic_path: str | None = None  # models.cost_critic: where each constraint's cost critic starts

    def sync_weights(self, trainer: PolicyTrainer) -> dict[str, float]:
        """The generators now sample the trainer's current policy. Returns {"seconds", "bytes", ...}."""
        if self.generator is None:
            raise RuntimeError("this run has no generator role to sync weights to")
        return self.generator.sync_from(trainer)
