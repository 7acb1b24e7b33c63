"""Scoring actors: sequence classifiers (reward/cost models), the reference policy's log-probs, Python functions.

All take token ids (prompt_ids, response_ids: ragged lists, one entry per rollout), run in batches, and refuse
non-finite scores with an error that names the model and the sample.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ray_align.losses.logprobs import next_token_logprobs

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged token lists -> (input_ids [B, T], attention_mask [B, T]), padded on the right."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def check_finite(scores: np.ndarray, source: str, first_index: int = 0) -> np.ndarray:
    """Raise on the first NaN/inf, naming ``source`` and the sample's index in the request."""
    bad = ~np.isfinite(scores)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise FloatingPointError(
            f"{source} gave a non-finite score {scores[row].tolist()} for sample {first_index + row}"
        )
    return scores


def _joined(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> list[list[int]]:
    return [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]


class SequenceScorer:
    """Reward and cost models: one score per sequence from each model.

    Implements ``ray_align.cluster.Scorer``. Each model is an ``AutoModelForSequenceClassification`` checkpoint.
    A decoder's head (named ``score``: Llama, GPT-2, Qwen, Mistral) runs on the base model's last hidden state at
    index ``attention_mask.sum(-1) - 1`` (right padding), rather than on HF's own pooling, which locates the
    last token by comparing ids to the pad id and so misreads sequences whose pad id is also their EOS. Other
    classifiers (BERT-style encoders) pool as their own forward does.

    ``policy_tokenizer``: the policy's checkpoint. A model whose vocabulary differs from it gets the samples as
    text re-encoded with its own tokenizer (``ray_align.models.bridge``); one with the same vocabulary reads the
    policy's ids untouched. Without it every model reads the ids as they are.
    """

    def __init__(
        self,
        model_paths: Sequence[str],
        batch_size: int = 16,
        dtype: str = "float32",
        policy_tokenizer: str | None = None,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ray_align.models.bridge import bridge_for

        self.model_paths = [str(p) for p in model_paths]
        self.batch_size = batch_size
        self.device = _device()
        self.models = [
            AutoModelForSequenceClassification.from_pretrained(p, dtype=_DTYPES[dtype]).to(self.device).eval()
            for p in self.model_paths
        ]
        for path, model in zip(self.model_paths, self.models):
            if model.config.num_labels != 1:  # one column per model: the cluster's score table needs it
                raise ValueError(
                    f"score model {path} has {model.config.num_labels} outputs; a reward or cost model has one "
                    "(num_labels: 1 in its config.json)"
                )
        tokenizers = [AutoTokenizer.from_pretrained(p) for p in self.model_paths]
        policy = AutoTokenizer.from_pretrained(str(policy_tokenizer)) if policy_tokenizer else None
        self.bridges = [bridge_for(policy, t) if policy is not None else None for t in tokenizers]
        self.pad_ids = [_pad_id(t) for t in tokenizers]

    def ready(self) -> bool:
        return True

    def bridged(self) -> list[bool]:
        """Per model: whether its input is re-encoded text (its vocabulary differs from the policy's)."""
        return [b is not None for b in self.bridges]

    @torch.no_grad()
    def _score_batch(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B, T] -> head output at the last real token [B, num_labels] (float32)."""
        head = getattr(model, "score", None)
        if not isinstance(head, torch.nn.Module):  # an encoder classifier: its own pooling ([CLS] for BERT)
            return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        hidden = model.base_model(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # [B,T,H]
        last = attention_mask.sum(-1) - 1  # [B]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B,H]
        return head(pooled).float()

    def score(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], first_index: int = 0
    ) -> np.ndarray:
        """Scores of prompt+response: [n] for one single-output model, else [n, m] (models side by side).

        ``first_index``: index of the first row in the whole batch (a pool's shard offset), for error messages.
        """
        joined = _joined(prompt_ids, response_ids)
        columns = []
        for path, model, bridge, pad_id in zip(self.model_paths, self.models, self.bridges, self.pad_ids):
            sequences = joined if bridge is None else bridge.encode(prompt_ids, response_ids)
            parts = []
            for rows in _batches(len(sequences), self.batch_size):
                input_ids, attention_mask = right_pad(sequences[rows], pad_id)
                scores = self._score_batch(model, input_ids.to(self.device), attention_mask.to(self.device))
                parts.append(
                    check_finite(scores.cpu().numpy(), f"score model {path}", first_index + rows.start)
                )
            columns.append(np.concatenate(parts, axis=0))  # [n, num_labels]
        table = np.concatenate(columns, axis=1)
        return table[:, 0] if table.shape[1] == 1 else table


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Parameters to ``dtype``, buffers unchanged (what DeepSpeed's bf16/fp16 modes do to the trained model)."""
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model


def _pad_id(tokenizer: Any) -> int:
    """Padding is masked out, so any real id serves: the pad token, else EOS, else 0."""
    for pad_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad_id is not None:
            return int(pad_id)
    return 0


class ReferenceScorer:
    """Per-token log-probs of a frozen reference policy.

    ``logprobs(batch)`` follows the convention of ``ray_align.cluster`` ([B, T] ids -> [B, T-1]) so that it can
    stand where a reference ``PolicyTrainer`` does; ``response_logprobs`` takes ragged ids and returns one
    list per response, entry j = log π_ref(response[j] | prompt, response[:j]).
    """

    def __init__(self, model_path: str, batch_size: int = 16, dtype: str = "float32") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = str(model_path)
        self.batch_size = batch_size
        self.device = _device()
        # loaded as a trainer rank's model is (fp32, then DeepSpeed casts the parameters and keeps buffers such as
        # the rotary frequencies in fp32), so the reference's log-probs equal the actor's at step 0: KL = 0
        self.model = cast_parameters(
            AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32), _DTYPES[dtype]
        ).to(self.device)
        self.model.eval()
        self.pad_id = _pad_id(AutoTokenizer.from_pretrained(self.model_path))

    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def logprobs(self, batch: dict[str, torch.Tensor], first_index: int = 0) -> torch.Tensor:
        """batch["input_ids"], batch["attention_mask"] [B, T] -> log-probs [B, T-1] float32 (cluster.py convention).

        Positions whose target is padding hold whatever the model says; callers mask them with response_mask.
        """
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        parts = []
        for rows in _batches(input_ids.shape[0], self.batch_size):
            ids, mask = input_ids[rows].to(self.device), attention_mask[rows].to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            parts.append(next_token_logprobs(logits, ids).cpu())
        out = torch.cat(parts, dim=0)
        real = out.masked_fill(attention_mask[:, 1:].cpu() == 0, 0.0)
        check_finite(real.numpy(), f"reference model {self.model_path}", first_index)
        return out

    def response_logprobs(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], first_index: int = 0
    ) -> list[list[float]]:
        """Ragged per-token log-probs of each response given its prompt (prompts must be non-empty)."""
        sequences = _joined(prompt_ids, response_ids)
        input_ids, attention_mask = right_pad(sequences, self.pad_id)
        logps = self.logprobs(
            {"input_ids": input_ids, "attention_mask": attention_mask}, first_index
        )  # [B, T-1]
        # Target t+1 is response token j when t+1 = len(prompt) + j.
        return [
            logps[row, len(p) - 1 : len(p) - 1 + len(r)].tolist()
            for row, (p, r) in enumerate(zip(prompt_ids, response_ids))
        ]


def resolve_function(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or an importable dotted path ``"package.module:function"``."""
    if callable(fn):
        return fn
    module, sep, name = fn.partition(":")
    if not sep or not name:
        raise ValueError(f"expected 'module:function', got {fn!r}")
    return getattr(importlib.import_module(module), name)


class FunctionScorer:
    """Scores from a Python function ``fn(prompt_text, response_text) -> float | tuple[float, ...]``.

    For verifiable tasks (exact answers, format checks). ``fn`` may be a dotted path so that only a string travels
    to the actor. Token ids are decoded with the tokenizer at ``tokenizer_path`` (special tokens dropped).
    """

    def __init__(self, fn: Callable[..., Any] | str, tokenizer_path: str | None = None) -> None:
        self.fn = resolve_function(fn)
        self.name = (
            fn
            if isinstance(fn, str)
            else f"{fn.__module__}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        )
        self.tokenizer = None
        if tokenizer_path is not None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))

    def ready(self) -> bool:
        return True

    def score_texts(
        self, prompts: Sequence[str], responses: Sequence[str], first_index: int = 0
    ) -> np.ndarray:
        """[n] when ``fn`` returns a number, [n, m] when it returns m-tuples."""
        rows = [self.fn(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores = np.asarray(rows, dtype=np.float64)
        return check_finite(scores, f"score function {self.name}", first_index)

    def score(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], first_index: int = 0
    ) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError(f"FunctionScorer({self.name}) needs tokenizer_path to score token ids")
        decode = self.tokenizer.batch_decode
        return self.score_texts(
            decode([list(p) for p in prompt_ids], skip_special_tokens=True),
            decode([list(r) for r in response_ids], skip_special_tokens=True),
            first_index,
        )
