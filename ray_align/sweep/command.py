"""`ray-align sweep`: a grid of settings of one job, run as one sweep, with the trade-off frontier.

    ray-align sweep --grid dual.constraints.0.margin=0.02,0.04,0.06,0.08          # the built-in quickstart
    ray-align sweep JOB.yaml --grid can.beta=0.1,0.2 --grid dual.constraints.0.margin=0.5,1 output_dir=runs/s

The plan (grid, point configs, mode) and every point's preflight are checked here, before Ray starts;
actors/sweep.py runs it. docs/sweep.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ray_align.errors import UserError
from ray_align.run_dir import is_run_folder


class _IntermixedParser(argparse.ArgumentParser):
    """Positionals may follow options: `sweep JOB.yaml --grid K=V1,V2 output_dir=X` (plain argparse would take
    the positionals only before the first option and refuse the rest)."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_sweep_parser(sub: Any, run_sweep: Callable[..., Any]) -> None:
    """``run_sweep``: the driver's sweep (actors/sweep.py), handed in by ray_align/cli.py so that this core
    module never imports the actors."""
    p = sub.add_parser(
        "sweep",
        help="run a grid of settings (margins, β, q ...) and draw the trade-off frontier (sweep.md)",
        allow_abbrev=False,
    )
    p.__class__ = _IntermixedParser
    p.add_argument("job", nargs="?", default=None, help="job YAML file (default: the built-in quickstart)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides as for run; output_dir= names the sweep",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a setting and its values (repeat for more axes: their product is swept)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="points trained at once (default: every point for MoCAN/PeCAN/SACPO, as the cluster's resources "
        "allow; 1 for whole runs)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="clear point folders that hold another configuration"
    )
    p.set_defaults(func=partial(_cmd_sweep, run_sweep=run_sweep))


def check_sweep_folder(root: Path) -> None:
    """A sweep folder is new, empty, or an earlier sweep (resumed); never a run folder or another folder."""
    if root.exists() and not root.is_dir():
        raise UserError(f"sweep: {root} is a file; choose a folder for the sweep (output_dir=...)")
    if is_run_folder(root):
        raise UserError(f"sweep: {root} holds a run (config.yaml); choose another folder (output_dir=...)")
    if root.is_dir() and any(root.iterdir()):
        known = {"sweep.json", "points", "shared"}
        if not any((root / name).exists() for name in known):
            raise UserError(f"sweep: {root} is not empty and holds no sweep; choose a new or empty folder")


def _cmd_sweep(args: argparse.Namespace, run_sweep: Callable[..., Any]) -> int:
    from ray_align.preflight import preflight
    from ray_align.sweep.plan import build_plan

    job, overrides = args.job, list(args.overrides)
    if job is not None and "=" in job:  # `sweep output_dir=x --grid ...`: an override, not a file
        job, overrides = None, [job, *overrides]
    if args.parallel is not None and args.parallel < 1:
        raise UserError(f"sweep: --parallel must be 1 or more, got {args.parallel}")
    plan = build_plan(job, overrides, args.grid)
    check_sweep_folder(plan.root)
    warnings: list[str] = []
    for point in plan.points:
        warnings += [
            w for w in preflight(point.config, mode="run", overwrite=args.overwrite) if w not in warnings
        ]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    record = run_sweep(plan, parallel=args.parallel, overwrite=args.overwrite)
    failed = [p["name"] for p in record["points"] if p["status"] != "done"]
    if failed:
        print(
            f"error: {len(failed)} of {len(record['points'])} points did not finish: {failed}",
            file=sys.stderr,
        )
        return 1
    return 0
