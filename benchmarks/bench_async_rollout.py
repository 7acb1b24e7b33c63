"""One RL step (PPO-Lagrangian) or one outer iteration (CAID) with and without `async_rollout`, side by side.

    python benchmarks/bench_async_rollout.py                       # tiny models, 12 steps × 64 responses × 32 tokens
    python benchmarks/bench_async_rollout.py --steps 20 --rollout 128 --max-tokens 64
    python benchmarks/bench_async_rollout.py --method caid         # known-optimum task, 5 iterations

Runs the same seeded job twice, synchronous then with async_rollout, each through the real driver (`ray-align
run`'s path, evaluation off), and reads the per-step phases from each run's metrics.jsonl.

- ppo_lag: the built-in dataset, tiny models, m = 1, local Ray. Steps after the first two are compared (the
  first samples on demand in both modes, the second still warms up).
- caid: the one-token known-optimum task (m = 1; tests/integration/known_optimum.py builds its reference model),
  DPO as its integration test (batch 128, lr 5e-3) with --epochs per iteration, K = --samples per prompt on
  its 3 prompts. Iterations after the first are compared (the first takes no dual step with async_rollout, so
  it samples nothing during its DPO); the whole loop, with async's extra sample of θ_T, is printed too.

Printed per mode: median step seconds, median sampling seconds, median time the step waited for its samples,
median training seconds, and the sum of the timed phases against the step (the rest is the driver's own work:
λ, GAE, batching, relabelling). Ratio = sync step / async step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from actors.launch import run_job
from ray_align.config import load_config
from ray_align.run_dir import RunDir


@dataclass(frozen=True)
class Method:
    stage: str  # the metrics stage of one step
    skip: int  # leading steps left out of the medians
    step: str
    sample: str
    waited: str
    phases: tuple[str, ...]  # the timed parts of a step


METHODS = {
    "ppo_lag": Method(
        "ppo_lag",
        2,
        "step_seconds",
        "rollout_seconds",
        "rollout_wait_seconds",
        ("rollout_wait_seconds", "experience_seconds", "train_seconds", "settle_seconds", "sync_seconds"),
    ),
    "caid": Method(
        "caid",
        1,
        "iteration_seconds",
        "sample_seconds",
        "sample_wait_seconds",
        ("sample_wait_seconds", "train_seconds", "settle_seconds", "sync_seconds"),
    ),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=sorted(METHODS), default="ppo_lag")
    p.add_argument("--steps", type=int, default=None, help="RL steps (12) or CAID iterations (5)")
    p.add_argument("--rollout", type=int, default=64, help="ppo_lag: responses per rollout")
    p.add_argument("--max-tokens", type=int, default=32, help="ppo_lag: tokens per response")
    p.add_argument(
        "--epochs", type=int, default=None, help="ppo.ppo_epochs (2) or caid.epochs_per_iteration (20)"
    )
    p.add_argument("--samples", type=int, default=256, help="caid: samples per prompt")
    return p.parse_args()


def ppo_lag_overrides(args: argparse.Namespace) -> list[str]:
    steps, epochs = args.steps or 12, args.epochs or 2
    return [
        "algorithm=ppo_lag",
        "models.tiny=true",
        "dual.constraints=[{name: harm, threshold: 0.0}]",
        f"data.max_length={64 + args.max_tokens}",
        f"generation.max_tokens={args.max_tokens}",
        f"ppo.steps={steps}",
        f"ppo.rollout_batch_size={args.rollout}",
        f"ppo.ppo_epochs={epochs}",
        "training.batch_size=16",
        "training.micro_batch_size=16",
        "checkpoint.every=0",
        "eval.enabled=false",
    ]


def caid_job(args: argparse.Namespace):
    """(reference, overrides) on the known-optimum task; its harness lives with the integration tests."""
    root = Path(__file__).resolve().parents[1] / "tests"
    sys.path[:0] = [str(root / "unit"), str(root / "integration")]
    from known_optimum import build_reference, caid_overrides

    reference = build_reference(Path(tempfile.mkdtemp(prefix="bench-async-caid-ref-")), 1)
    overrides = [
        *caid_overrides(args.samples, iterations=args.steps or 5, epochs=args.epochs or 20),
        "checkpoint.every=0",
        "eval.enabled=false",
    ]
    return reference, overrides


def run(args: argparse.Namespace, overlap: bool, reference, overrides: list[str]) -> tuple[list[dict], float]:
    """(the compared steps' metrics rows, seconds of the whole loop)."""
    out = tempfile.mkdtemp(prefix=f"bench-async-{args.method}-{int(overlap)}-")
    flag = f"{'ppo' if args.method == 'ppo_lag' else 'caid'}.async_rollout={str(overlap).lower()}"
    if reference is None:
        config = load_config(None, [*overrides, f"output_dir={out}", flag])
    else:
        from known_optimum import job_config

        config = job_config(reference, Path(out), "caid", *overrides, flag)
    result = run_job(config)
    method = METHODS[args.method]
    rows = RunDir(out).metrics(method.stage)
    loop = sum(r[method.step] for r in rows) + result.get("final_step", {}).get("sample_seconds", 0.0)
    return rows[method.skip :], loop


def summary(method: Method, rows: list[dict]) -> dict[str, float]:
    keys = {method.step, method.sample, "train_seconds", *method.phases}
    med = {key: statistics.median(r[key] for r in rows) for key in keys}
    med["phases_share"] = statistics.median(sum(r[k] for k in method.phases) / r[method.step] for r in rows)
    return med


def main() -> None:
    args = parse_args()
    method = METHODS[args.method]
    reference, overrides = caid_job(args) if args.method == "caid" else (None, ppo_lag_overrides(args))
    results, loops = {}, {}
    for mode in ("sync", "async"):
        rows, loops[mode] = run(args, mode == "async", reference, overrides)
        results[mode] = summary(method, rows)
    print(f"{'':6} {'step s':>8} {'sample s':>9} {'waited s':>9} {'train s':>8} {'phases/step':>12}")
    for mode, m in results.items():
        print(
            f"{mode:6} {m[method.step]:8.3f} {m[method.sample]:9.3f} {m[method.waited]:9.3f} "
            f"{m['train_seconds']:8.3f} {m['phases_share']:12.1%}"
        )
    ratio = results["sync"][method.step] / results["async"][method.step]
    unit = "RL step" if args.method == "ppo_lag" else "CAID iteration"
    print(f"speedup per {unit} (sync / async): {ratio:.2f}×")
    if args.method == "caid":
        print(f"whole loop s: sync {loops['sync']:.2f}, async {loops['async']:.2f} (with θ_T's final sample)")


if __name__ == "__main__":
    main()
