"""The `ray-align` command: check a job file, run a job, solve the dual, build the tiny models.

Heavy imports (torch, Ray, vLLM, DeepSpeed) happen inside the subcommands that need them, so `ray-align check`
answers in about a second. A mistake in the user's input (ray_align.errors.UserError and the config, data and
dual-table errors) exits 2 with one `error:` message and no traceback; anything else is a bug and keeps its
traceback (exit 1). docs/errors.md lists the checks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ray_align import __version__


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _cmd_check(args: argparse.Namespace) -> int:
    from ray_align.config import dump_config, load_config
    from ray_align.preflight import preflight

    config = load_config(args.job, args.overrides)
    warnings = preflight(config, mode="check")
    print(dump_config(config), end="")
    _warn(warnings)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ray_align.config import load_config
    from ray_align.preflight import preflight

    verbose = ["logging.verbose=true"] if args.verbose else []  # not fingerprinted: a resumed run may add it
    config = load_config(args.job, [*args.overrides, *verbose])
    _warn(preflight(config, mode="run", overwrite=args.overwrite))  # before any heavy import or Ray
    from actors.launch import LaunchError, run_job  # the driver is the only place that wires actors in

    try:
        run_job(config, overwrite=args.overwrite, preflight=False)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)  # one paragraph; logging.level=DEBUG logs the traceback
        return 1
    return 0


def _cmd_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ray_align.errors import UserError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"tiny-models: {out} is a file; give a folder to build the models in")
    if args.seed < 0:
        raise UserError(f"tiny-models: --seed must be 0 or more, got {args.seed}")
    from ray_align.models.tiny import TinySpec, build_tiny_models

    try:
        models = build_tiny_models(out, TinySpec(seed=args.seed))
    except PermissionError as e:
        raise UserError(f"tiny-models: cannot write in {e.filename or out}: permission denied") from None
    for role in ("policy", "reward", "cost", "critic"):
        print(f"{role}: {getattr(models, role)}")
    return 0


def _cmd_import_gguf(args: argparse.Namespace) -> int:
    import time

    from ray_align.models.gguf import import_gguf

    start = time.perf_counter()
    out = import_gguf(args.gguf_file, args.out, args.dtype)
    print(f"{out} ({args.dtype}, {time.perf_counter() - start:.1f} s)")
    return 0


def _run_eval(*args, **kwargs):
    from actors.evaluate import run_eval  # heavy: Ray and the roles, only once the arguments are sound

    return run_eval(*args, **kwargs)


def _run_sweep(*args, **kwargs):
    from actors.sweep import run_sweep  # heavy: Ray, vLLM and DeepSpeed, only once the plan is sound

    return run_sweep(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-align",
        description="Safety-constrained alignment of language models (PPO-Lagrangian, CAID, MoCAN/PeCAN, SACPO) on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"ray-align {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a job file and print the resolved configuration")
    check.add_argument("job", help="job YAML file")
    check.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. dual.lr=0.05"
    )
    check.set_defaults(func=_cmd_check)

    # allow_abbrev=False: a misspelt flag (--overwrit) is an error, never taken for --overwrite
    run = sub.add_parser(
        "run", help="run a job (the built-in quickstart when no file is given)", allow_abbrev=False
    )
    run.add_argument("job", nargs="?", default=None, help="job YAML file (default: the built-in quickstart)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. dual.lr=0.05")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="clear output_dir first when it holds a run of another configuration (default: refuse)",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="show the start-up and progress logs of Ray, vLLM and DeepSpeed (= logging.verbose=true)",
    )
    run.set_defaults(func=_cmd_run)

    tiny = sub.add_parser(
        "tiny-models", help="build the offline tiny model family (policy, reward, cost, critic)"
    )
    tiny.add_argument("out", help="output folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny)

    gguf = sub.add_parser(
        "import-gguf", help="dequantise a GGUF checkpoint into a plain Hugging Face folder (docs/models.md)"
    )
    gguf.add_argument("gguf_file", metavar="GGUF_FILE", help="a .gguf file (causal LM)")
    gguf.add_argument("--out", help="new or empty output folder (default: ./<file name without .gguf>)")
    gguf.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    gguf.set_defaults(func=_cmd_import_gguf)

    from ray_align.eval.command import add_eval_parser
    from ray_align.sweep.command import add_sweep_parser

    add_eval_parser(sub, _run_eval)
    add_sweep_parser(sub, _run_sweep)
    try:
        from ray_align.dual.cli import add_dual_parser
    except ImportError:  # pragma: no cover - the dual package is part of every install
        pass
    else:
        add_dual_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.job is not None and "=" in args.job:
        # `ray-align run dual.lr=0.1` means the built-in job with an override, not a file named "dual.lr=0.1".
        args.overrides = [args.job, *args.overrides]
        args.job = None
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise  # a bug: its traceback, exit 1
        print(f"error: {e}", file=sys.stderr)
        return 2


# Exceptions that describe the user's input, by module: looked up in sys.modules so that main() imports none
# of them (a raised one's module is necessarily loaded).
_USER_ERRORS = (
    ("ray_align.errors", "UserError"),
    ("ray_align.config.load", "ConfigError"),
    ("ray_align.data.errors", "DataError"),
    ("ray_align.dual.table", "DualInputError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    found = (getattr(sys.modules.get(module), name, None) for module, name in _USER_ERRORS)
    return tuple(t for t in found if isinstance(t, type))


if __name__ == "__main__":
    sys.exit(main())
