"""Tokenizer checks on checkpoint folders, read from the files alone (no transformers import, so no torch).

The models that read the policy's token ids (the reference, the critics) must share the policy's vocabulary;
reward and cost models with another vocabulary are bridged (``ray_align.models.bridge``), so the preflight
compares only the former with ``tokenizer_mismatch``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
# Files that hold a vocabulary, compared byte for byte when a folder has no tokenizer.json.
_VOCAB_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "vocab.txt",
    "spiece.model",
    "added_tokens.json",
)


def _vocabulary(folder: Path) -> dict[str, Any] | None:
    """token → id from tokenizer.json (model vocabulary and added tokens), or a digest per vocabulary file;
    None when the folder has neither."""
    fast = folder / "tokenizer.json"
    if fast.is_file():
        data = json.loads(fast.read_text(encoding="utf-8"))
        vocab = data.get("model", {}).get("vocab") or {}
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
            vocab = {piece[0]: i for i, piece in enumerate(vocab)}
        vocab = dict(vocab)
        vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
        return {"tokens": vocab}
    files = {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in _VOCAB_FILES
        if (folder / name).is_file()
    }
    return {"files": files} if files else None


def tokenizer_mismatch(policy: Path, other: Path) -> str | None:
    """Why ``other`` would read the policy's token ids differently, or None when the two tokenizers agree."""
    a, b = _vocabulary(policy), _vocabulary(other)
    if a is None or b is None or a.keys() != b.keys():
        return None if a == b else "their tokenizer files are of different kinds and cannot be compared"
    if a == b:
        return None
    if "files" in a:
        return "their vocabulary files differ"
    ta, tb = a["tokens"], b["tokens"]
    if len(ta) != len(tb):
        return f"vocabularies of {len(ta)} and {len(tb)} tokens"
    moved = sum(1 for token, i in ta.items() if tb.get(token) != i)
    return f"{moved} of {len(ta)} tokens have other ids"


def _special_tokens(folder: Path) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file():
            settings.update({k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if v})
    return settings


def tokenizer_setting_problems(
    folder: Path, *, template: str, response_eos: bool, trains: bool, pad_token: str | None = None
) -> list[str]:
    """What the policy's tokenizer lacks for this job: a chat template, an EOS token, something to pad with
    (its pad token, else its EOS token, else ``models.pad_token``)."""
    if not (folder / "tokenizer_config.json").is_file():
        return []  # the settings live there; without it there is nothing to read
    settings = _special_tokens(folder)
    problems = []
    has_template = "chat_template" in settings or any(
        (folder / name).is_file() for name in ("chat_template.jinja", "chat_template.json")
    )
    if template == "chat" and not has_template:
        problems.append(
            f"data.template: 'chat' formats prompts with the tokenizer's chat template, and the policy's "
            f"tokenizer ({folder}) has none; use data.template: pku or a tokenizer with a chat template"
        )
    if response_eos and "eos_token" not in settings:
        problems.append(
            f"data.response_eos: the policy's tokenizer ({folder}) has no eos_token to end responses with; set "
            "eos_token in its tokenizer_config.json, or data.response_eos: false"
        )
    if trains and pad_token is None and "pad_token" not in settings and "eos_token" not in settings:
        problems.append(
            f"models.policy: its tokenizer ({folder}) has neither a pad_token nor an eos_token to pad training "
            "batches with; set models.pad_token to a token of its vocabulary"
        )
    return problems
