"""Prompt sets to evaluate on: a job's held-out split, or a file with a ``prompt`` column (and maybe ``category``).

Files: JSONL / JSON / Parquet / CSV. The BeaverTails-Evaluation CSV (index, prompt, category, category_id) reads
as it is; its category strings (possibly comma-joined labels) become the breakdown's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ray_align.config.schema import JobConfig
from ray_align.errors import UserError

_READERS = {
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".json": lambda p: pd.read_json(p),
    ".parquet": pd.read_parquet,
    ".csv": pd.read_csv,
}


@dataclass(frozen=True)
class PromptSet:
    """Prompt texts (distinct, in file order), their categories when known, and where they came from."""

    texts: list[str]
    categories: list[str] | None
    source: str

    def head(self, limit: int | None) -> PromptSet:
        if limit is None or limit >= len(self.texts):
            return self
        cats = self.categories[:limit] if self.categories is not None else None
        return PromptSet(self.texts[:limit], cats, self.source)


def held_out_prompts(config: JobConfig) -> PromptSet:
    """The job's eval split (data.eval_fraction); the training prompts when the job keeps no split."""
    from ray_align.algorithms.common import load_dataset, prompt_texts

    train, held_out = load_dataset(config)
    if held_out is None or len(held_out) == 0:
        return PromptSet(prompt_texts(train, None), None, "training prompts (data.eval_fraction is 0)")
    return PromptSet(
        prompt_texts(held_out, None), None, f"held-out split (data.eval_fraction {config.data.eval_fraction})"
    )


def prompts_from_file(path: str | Path) -> PromptSet:
    """Read a prompt file; a ``category`` column gives per-category rows. Duplicate prompts are kept once."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--prompts {path}: no such file; give a JSONL, JSON, Parquet or CSV file with a 'prompt' column"
        )
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(
            f"--prompts {path}: unknown file type '{path.suffix}'; use .jsonl, .json, .parquet or .csv"
        )
    try:
        frame = reader(path)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompts {path}: cannot be read as {path.suffix[1:].upper()} ({e})") from None
    if "prompt" not in frame.columns:
        raise UserError(
            f"--prompts {path}: no 'prompt' column (columns: {', '.join(map(str, frame.columns))})"
        )
    texts = frame["prompt"]
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise UserError(
            f"--prompts {path}: row {bad[0]} has an empty or non-text prompt ({len(bad)} such rows)"
        )
    keep = ~texts.duplicated()
    categories = None
    if "category" in frame.columns:
        categories = [str(c) for c in frame["category"][keep]]
    return PromptSet(list(texts[keep]), categories, str(path))
