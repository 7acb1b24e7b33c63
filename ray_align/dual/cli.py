"""``ray-align dual``: solve CAN's dual on a scored table and predict the aligned policy, before training.

    ray-align dual TABLE.parquet --beta 0.1 --constraint safety:1.5 [--constraint humor:0.3] [--json OUT.json]
    ray-align dual TABLE.parquet --beta 0.1 --threshold safety:-0.2          (absolute form E_π[safety] ≥ −0.2)
    ray-align dual TABLE.parquet --beta 0.1 --constraint safety:1.5 --sweep safety:0:3:13 --plot curve.png

``--constraint NAME:b`` asks for a margin b over the reference mean (τ = Ē_ref g + b); ``--threshold NAME:t``
for an absolute threshold (τ = t); each constraint uses one of them, and their order on the command line is
the order of λ. ``--sweep NAME:START:STOP:COUNT`` sweeps λ_NAME over linspace(START, STOP, COUNT) with the other
multipliers held at λ*, and prints the predicted trade-off. Exit status: 0 solved, 1 infeasible on this sample
(the JSON is still written, with nulls) or not converged, 2 bad input. Also runs as
``python -m ray_align.dual.cli``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from ray_align.dual.can import solve_dual
from ray_align.dual.predict import bootstrap_ci, predict, sweep
from ray_align.dual.report import plot_sweep, summary_json, summary_text, sweep_text
from ray_align.dual.table import DualInputError, read_scored_table


class _AppendSpec(argparse.Action):
    """--constraint and --threshold append (form, text) to one list, keeping command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        specs = list(getattr(namespace, self.dest) or [])
        specs.append((self.const, values))
        setattr(namespace, self.dest, specs)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "table", help="Parquet table: prompt_id, reward, one column per constraint (higher safer)"
    )
    parser.add_argument("--beta", type=float, default=0.1, help="KL strength β (default 0.1)")
    spec = {"dest": "specs", "action": _AppendSpec, "metavar": "NAME:VALUE"}
    parser.add_argument("--constraint", const="margin", help="margin b over the reference mean", **spec)
    parser.add_argument("--threshold", const="threshold", help="absolute threshold on E[NAME]", **spec)
    parser.add_argument("--json", dest="json_out", help="write the result as JSON here")
    parser.add_argument("--sweep", metavar="NAME:START:STOP:COUNT", help="λ grid of one constraint")
    parser.add_argument("--plot", help="PNG of the predicted trade-off (the --sweep grid, or a default one)")
    parser.add_argument("--method", choices=("newton", "pgd"), default="newton", help="dual solver")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the CIs (0: none)")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")


def add_dual_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``dual`` sub-command on a top-level CLI; its handler is :func:`run_dual`."""
    parser = subparsers.add_parser(
        "dual",
        help="solve the CAN dual on a scored table and predict the aligned policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_dual)
    return parser


def _finite(text: str, where: str) -> float:
    """``text`` as a finite float; NaN and ±inf would propagate silently through the solver."""
    try:
        value = float(text)
    except ValueError:
        raise DualInputError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DualInputError(f"{where}: {text!r} is not a finite number")
    return value


def _parse_specs(specs: list[tuple[str, str]] | None) -> tuple[list[str], list[str], list[float]]:
    """[(form, "NAME:VALUE")] -> (names, forms, values); refuses a malformed or repeated constraint."""
    if not specs:
        raise DualInputError("give at least one --constraint NAME:MARGIN or --threshold NAME:VALUE")
    names, forms, values = [], [], []
    for form, text in specs:
        name, sep, value = text.rpartition(":")
        if not sep or not name:
            raise DualInputError(f"expected NAME:VALUE, got {text!r}")
        if name in names:
            raise DualInputError(f"constraint {name!r} is given twice")
        values.append(_finite(value, text))
        names.append(name)
        forms.append(form)
    return names, forms, values


def _parse_sweep(text: str, names: list[str]) -> tuple[int, np.ndarray]:
    """ "NAME:START:STOP:COUNT" -> (index of NAME in λ, the λ grid)."""
    parts = text.rsplit(":", 3)
    if len(parts) != 4 or parts[0] not in names:
        raise DualInputError(f"--sweep wants NAME:START:STOP:COUNT with NAME one of {names}, got {text!r}")
    start, stop = _finite(parts[1], f"--sweep {text!r}"), _finite(parts[2], f"--sweep {text!r}")
    try:
        count = int(parts[3])
    except ValueError:
        raise DualInputError(f"--sweep {text!r}: COUNT {parts[3]!r} is not a whole number") from None
    if count < 2 or start < 0 or stop < 0:
        raise DualInputError(f"--sweep {text!r}: needs COUNT ≥ 2 and λ values ≥ 0")
    return names.index(parts[0]), np.linspace(start, stop, count)


def _check_flags(args: argparse.Namespace) -> None:
    """Numeric flags in range and output paths writable, before any solving."""
    if not (math.isfinite(args.beta) and args.beta > 0):
        raise DualInputError(f"--beta must be a finite number > 0, got {args.beta}")
    if not (math.isfinite(args.level) and 0 < args.level < 1):
        raise DualInputError(f"--level must lie in (0, 1), got {args.level}")
    if args.n_boot < 0:
        raise DualInputError(f"--n-boot must be 0 (no intervals) or more, got {args.n_boot}")
    for flag, out in (("--json", args.json_out), ("--plot", args.plot)):
        if out is None:
            continue
        folder = Path(out).parent
        if Path(out).is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
            raise DualInputError(f"{flag} {out}: cannot write a file there; give a file path in a writable folder")


def _solve_and_report(args: argparse.Namespace) -> int:
    names, forms, values = _parse_specs(args.specs)
    _check_flags(args)
    grid = _parse_sweep(args.sweep, names) if args.sweep else None
    table, _ = read_scored_table(args.table, names)
    margin = [v if f == "margin" else None for f, v in zip(forms, values)]
    threshold = [v if f == "threshold" else None for f, v in zip(forms, values)]
    sol = solve_dual(table, args.beta, margin, threshold, method=args.method)
    pred = predict(table, args.beta, sol.lam) if sol.feasible else None
    ci = None
    if sol.feasible and args.n_boot > 0:
        ci = bootstrap_ci(
            table,
            args.beta,
            margin,
            threshold,
            lam=sol.lam,
            n_boot=args.n_boot,
            seed=args.seed,
            level=args.level,
        )
    labels = [f"{f} {v:g}" for f, v in zip(forms, values)]
    print(summary_text(args.table, table, args.beta, names, labels, sol, pred, ci))
    if not sol.feasible:
        print(f"error: {sol.message}", file=sys.stderr)
    elif not sol.converged:
        print(f"error: the {sol.method} solver did not converge ({sol.message})", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary_json(names, sol, pred, ci), indent=2) + "\n")
    if grid is None and args.plot:
        top = max(1.0, 2.0 * float(sol.lam[0])) if sol.feasible else 1.0
        grid = (0, np.linspace(0.0, top, 21))
    if grid is not None:
        index, lams = grid
        base = sol.lam if sol.feasible else np.zeros(table.m)
        curve = sweep(table, args.beta, lams, index=index, lam_base=base)
        print(sweep_text(names, index, curve))
        if args.plot:
            plot_sweep(args.plot, names, index, curve, float(base[index]) if sol.feasible else np.nan)
    return 0 if sol.feasible and sol.converged else 1


def run_dual(args: argparse.Namespace) -> int:
    """Handler of ``ray-align dual``; returns the exit status (bad input: message on stderr, 2)."""
    try:
        return _solve_and_report(args)
    except DualInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ray_align.dual.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return run_dual(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
