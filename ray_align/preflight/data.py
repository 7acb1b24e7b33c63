"""The dataset: opened and every row validated, as the run will load it, with the data layer's messages."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from ray_align.config import JobConfig
from ray_align.preflight.findings import Findings

# The data layer speaks to Python callers; in a job file the same switch is a config key.
_API_HINT = "pass on_bad_row='drop' to drop such rows (they are counted in the LoadReport)"
_CONFIG_HINT = "set data.on_bad_row: drop to drop such rows (the run reports how many)"


def data_source(config: JobConfig) -> str:
    """The file, folder or Hub id the run reads: algorithms.common.dataset_source without its torch import
    (the same rule: unset = the built-in mini_safety set, ``builtin:NAME`` = ray_align/assets/NAME.jsonl)."""
    source = config.data.source or "builtin:mini_safety"
    if source.startswith("builtin:"):
        return str(resources.files("ray_align") / "assets" / f"{source.removeprefix('builtin:')}.jsonl")
    return source


def check_data(config: JobConfig, found: Findings) -> None:
    from ray_align.data.errors import DataError
    from ray_align.data.pku import _hub_reachable, _looks_like_hub_id, load_pku

    source = data_source(config)
    if (config.data.source or "").startswith("builtin:") and not Path(source).is_file():
        found.problem(
            f"data.source: no built-in dataset '{config.data.source}'; use builtin:mini_safety or builtin:quickstart, or a file"
        )
        return
    if _looks_like_hub_id(source) and not _hub_reachable():
        found.unverified(
            f"data.source: '{source}' is no local path and looks like a Hugging Face Hub dataset id, but the "
            "Hub is not reachable (offline or HF_HUB_OFFLINE is set); give a local .jsonl/.json/.parquet file "
            "or a folder of them"
        )
        return
    try:
        ds, report = load_pku(source, on_bad_row=config.data.on_bad_row)
    except DataError as e:
        where = ""
        if not Path(source).is_absolute() and not os.path.exists(source):
            where = f" (relative paths are read from the current folder, {os.getcwd()})"
        found.problem(f"data.source: {str(e).replace(_API_HINT, _CONFIG_HINT)}{where}")
        return
    except UnicodeDecodeError as e:
        found.problem(f"data.source: a file of {source} is not UTF-8 text ({e.reason} at byte {e.start})")
        return
    except (OSError, ValueError) as e:  # unreadable file, broken Parquet
        found.problem(f"data.source: cannot read {source}: {e}")
        return
    if report.n_dropped:
        found.warn(f"data.source: {report.n_dropped} malformed rows will be dropped: {report.summary()}")
    _check_split(config, ds, found)


def _check_split(config: JobConfig, ds, found: Findings) -> None:
    """The train/eval split the run makes (after data.max_prompts) leaves both parts non-empty."""
    from ray_align.data.views import split_train_eval

    d = config.data
    if d.max_prompts is not None:
        kept = set(list(dict.fromkeys(ds["prompt"]))[: d.max_prompts])
        ds = ds.select([i for i, p in enumerate(ds["prompt"]) if p in kept])
    if d.eval_fraction > 0:
        try:
            split_train_eval(ds, d.eval_fraction, d.seed)
        except ValueError as e:
            found.problem(f"data.eval_fraction: {e}")
