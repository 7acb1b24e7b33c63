"""`ray-align eval`: compare policies (checkpoint or run folders) on a prompt set, with bootstrap intervals.

    ray-align eval runs/quickstart                         # reference vs the run's final policy, held-out split
    ray-align eval A=runs/a B=ckpt/b --prompts redteam.csv --samples 4 --out runs/eval-redteam

This module resolves the arguments (pure); actors/evaluate.py samples through the roles. docs/eval.md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ray_align.config.schema import JobConfig
from ray_align.errors import UserError


@dataclass(frozen=True)
class PolicyArg:
    """One positional argument: NAME=PATH or PATH; a run folder (result.json) or a checkpoint folder."""

    name: str
    checkpoint: str
    run_dir: Path | None  # the run folder, when the argument was one


def parse_policy(text: str) -> PolicyArg:
    name, sep, path = text.partition("=")
    if not sep:
        name, path = "", text
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"eval: {path} is not a folder; give a run folder or a checkpoint folder")
    name = name or folder.resolve().name
    result = folder / "result.json"
    if result.is_file():
        checkpoint = json.loads(result.read_text()).get("checkpoint")
        if not checkpoint:
            raise UserError(
                f"eval: the run in {path} has no final checkpoint (its algorithm trains no policy)"
            )
        return PolicyArg(name, str(checkpoint), folder)
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return PolicyArg(name, str(folder), None)
    raise UserError(
        f"eval: {path} is neither a finished run folder (result.json) nor a checkpoint folder "
        "(config.json and *.safetensors)"
    )


def job_config(args: argparse.Namespace, policies: list[PolicyArg]) -> JobConfig:
    """--job, else the first run folder's config.yaml: the scorers, generation settings and placement."""
    from ray_align.config import load_config

    job = args.job
    if job is None:
        runs = [p.run_dir for p in policies if p.run_dir is not None]
        if not runs:
            raise UserError(
                "eval: give --job JOB.yaml (scorers, generation and placement come from a job file)"
            )
        job = str(runs[0] / "config.yaml")
    config = load_config(job, args.set)
    updates: dict[str, Any] = {}
    if args.samples is not None:
        updates["samples_per_prompt"] = args.samples
    if args.num_prompts is not None:
        updates["num_prompts"] = args.num_prompts
    return config.model_copy(update={"eval": config.eval.model_copy(update=updates)}) if updates else config


def policies_to_evaluate(policies: list[PolicyArg], reference: str | None) -> list:
    """The reference first (unless None), then the arguments, as PolicyToEvaluate; names must be distinct."""
    from ray_align.eval.collect import PolicyToEvaluate  # imports torch: only once evaluating

    found = ([PolicyToEvaluate("reference", reference)] if reference else []) + [
        PolicyToEvaluate(p.name, p.checkpoint) for p in policies
    ]
    names = [p.name for p in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"eval: policy names {dupes} appear twice; name them with NAME=PATH")
    return found


def output_folder(out: str | None) -> Path:
    """--out, or runs/eval-<time>; an existing non-empty folder is refused (nothing is overwritten)."""
    path = Path(out) if out else Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"eval: --out {path} exists and is not empty; choose another folder")
    return path


def add_eval_parser(sub: Any, run_eval: Callable[..., Any]) -> None:
    """``run_eval``: the driver's evaluation (actors/evaluate.py), handed in by ray_align/cli.py so that this
    core module never imports the actors."""
    p = sub.add_parser(
        "eval", help="compare policies on a prompt set (reward, costs, share unsafe, KL, win rates)"
    )
    p.add_argument("policies", nargs="+", metavar="[NAME=]PATH", help="run folders or checkpoint folders")
    p.add_argument(
        "--job", help="job file for scorers, generation, placement (default: the first run's config)"
    )
    p.add_argument(
        "--prompts", help="JSONL/JSON/Parquet/CSV with a 'prompt' column (default: the held-out split)"
    )
    p.add_argument("--samples", type=int, help="responses per prompt (default: eval.samples_per_prompt)")
    p.add_argument("--num-prompts", type=int, help="evaluate the first N prompts (default: eval.num_prompts)")
    p.add_argument("--no-reference", action="store_true", help="leave out π_ref (no paired metrics, no KL)")
    p.add_argument("--out", help="output folder (default: runs/eval-<time>)")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="job overrides, e.g. eval.seed=1"
    )
    p.set_defaults(func=partial(_cmd_eval, run_eval=run_eval))


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"eval: {flag} must be a positive whole number, got {value}")


def _cmd_eval(args: argparse.Namespace, run_eval: Callable[..., Any]) -> int:
    _positive("--samples", args.samples)
    _positive("--num-prompts", args.num_prompts)
    policies = [parse_policy(p) for p in args.policies]
    config = job_config(args, policies)
    out = output_folder(args.out)
    run_eval(config, policies, out, prompts_file=args.prompts, with_reference=not args.no_reference)
    return 0
