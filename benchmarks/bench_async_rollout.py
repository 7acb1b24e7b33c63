"""PPO-Lagrangian's RL step with and without `ppo.async_rollout`, side by side in one invocation.

    python benchmarks/bench_async_rollout.py                       # tiny models, 12 steps × 64 responses × 32 tokens
    python benchmarks/bench_async_rollout.py --steps 20 --rollout 128 --max-tokens 64

Runs the same seeded job (the built-in dataset, tiny models, m = 1, local Ray) twice, synchronous then with
async_rollout, each through the real driver (`ray-align run`'s path, evaluation off), and reads the per-step
phases from each run's metrics.jsonl. Steps after the first two are compared (the first samples on demand in
both modes, the second still warms up). Printed per mode: median step seconds, median sampling seconds, median
time the step waited for its rollout, and the sum of the timed phases against the step (the rest is the
driver's own work: λ, GAE, batching). Ratio = sync step / async step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from actors.launch import run_job
from ray_align.config import load_config
from ray_align.run_dir import RunDir

PHASES = ("rollout_wait_seconds", "experience_seconds", "train_seconds", "settle_seconds", "sync_seconds")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rollout", type=int, default=64, help="responses per rollout")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="ppo.ppo_epochs")
    return p.parse_args()


def run(args: argparse.Namespace, overlap: bool) -> list[dict]:
    out = tempfile.mkdtemp(prefix=f"bench-async-{int(overlap)}-")
    config = load_config(
        None,
        [
            "algorithm=ppo_lag",
            f"output_dir={out}",
            "models.tiny=true",
            "dual.constraints=[{name: harm, threshold: 0.0}]",
            f"data.max_length={64 + args.max_tokens}",
            f"generation.max_tokens={args.max_tokens}",
            f"ppo.steps={args.steps}",
            f"ppo.rollout_batch_size={args.rollout}",
            f"ppo.ppo_epochs={args.epochs}",
            "training.batch_size=16",
            "training.micro_batch_size=16",
            "checkpoint.every=0",
            "eval.enabled=false",
            f"ppo.async_rollout={str(overlap).lower()}",
        ],
    )
    run_job(config)
    return RunDir(out).metrics("ppo_lag")[2:]


def summary(rows: list[dict]) -> dict[str, float]:
    med = {key: statistics.median(r[key] for r in rows) for key in ("step_seconds", "rollout_seconds", *PHASES)}
    med["phases_share"] = statistics.median(sum(r[k] for k in PHASES) / r["step_seconds"] for r in rows)
    return med


def main() -> None:
    args = parse_args()
    results = {mode: summary(run(args, mode == "async")) for mode in ("sync", "async")}
    print(f"{'':6} {'step s':>8} {'sample s':>9} {'waited s':>9} {'train s':>8} {'phases/step':>12}")
    for mode, m in results.items():
        print(
            f"{mode:6} {m['step_seconds']:8.3f} {m['rollout_seconds']:9.3f} {m['rollout_wait_seconds']:9.3f} "
            f"{m['train_seconds']:8.3f} {m['phases_share']:12.1%}"
        )
    ratio = results["sync"]["step_seconds"] / results["async"]["step_seconds"]
    print(f"speedup per RL step (sync / async): {ratio:.2f}×")


if __name__ == "__main__":
    main()
