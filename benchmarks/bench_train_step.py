"""Train-step and weight-gather time of a DeepSpeed TrainerGroup on a DPO-shaped batch, per ZeRO stage.

    python benchmarks/bench_train_step.py                          # tiny Llama, 2 ranks, ZeRO-0 and ZeRO-3
    python benchmarks/bench_train_step.py --stages 0 2 3 --pairs-per-rank 4 --seq-len 128
    python benchmarks/bench_train_step.py --model /path/to/hf/checkpoint --dtype bf16

For each stage it starts a group, runs one warm-up step, then prints per step the median seconds of
``train_step`` (DPO on [chosen..., rejected...] rows; every rank holds pairs_per_rank pairs), of the
reference forward ``logprobs`` on the same batch, and of ``state_dict`` (under ZeRO-3 a full gather on every
rank, then the copy of rank 0's weights to the driver).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ray
import torch

from actors.train_config import TrainConfig
from actors.trainer_group import TrainerGroup
from ray_align.losses.logprobs import sequence_logps
from ray_align.losses.specs import DPOSpec


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF causal-LM checkpoint directory (default: build the tiny Llama)")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--stages", type=int, nargs="+", default=[0, 3])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--pairs-per-rank", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--cpus-per-rank", type=float, default=1.0)
    p.add_argument("--address", help="Ray address to join (default: start a local instance)")
    return p.parse_args()


def model_path(arg: str | None) -> str:
    if arg:
        return arg
    from ray_align.models.tiny import build_tiny_models

    return str(build_tiny_models(os.path.join(tempfile.gettempdir(), "ray-align-bench-tiny")).policy)


def dpo_batch(pairs: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """[chosen_0..chosen_{P-1}, rejected_0..rejected_{P-1}]: random tokens, the second half of each row is the
    response; ref_logps filled in later from the reference forward."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 500, (2 * pairs, seq_len), generator=g)
    attention_mask = torch.ones_like(input_ids)
    response_mask = torch.zeros(2 * pairs, seq_len - 1)
    response_mask[:, seq_len // 2 :] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_stage(path: str, stage: int, args: argparse.Namespace) -> dict[str, float]:
    rows_per_rank = 2 * args.pairs_per_rank
    train = TrainConfig(
        lr=1e-6, zero_stage=stage, dtype=args.dtype, micro_batch_size=rows_per_rank, total_steps=10**6
    )
    start = time.perf_counter()
    group = TrainerGroup(path, "causal_lm", args.world_size, train, num_cpus_per_rank=args.cpus_per_rank)
    startup = time.perf_counter() - start
    try:
        batch = dpo_batch(args.pairs_per_rank * args.world_size, args.seq_len)
        batch["ref_logps"] = sequence_logps(group.logprobs(batch), batch["response_mask"])
        spec = DPOSpec(beta=0.1)
        group.train_step(batch, spec)  # warm-up
        return {
            "startup_s": startup,
            "train_step_s": median_seconds(lambda: group.train_step(batch, spec), args.steps),
            "logprobs_s": median_seconds(lambda: group.logprobs(batch), args.steps),
            "state_dict_s": median_seconds(group.state_dict, args.steps),
        }
    finally:
        group.shutdown()


def main() -> None:
    args = parse_args()
    path = model_path(args.model)
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = 2 * args.pairs_per_rank * args.world_size
    print(
        f"model {path}  ranks {args.world_size}  dtype {args.dtype}  batch {rows} rows × {args.seq_len} tokens"
    )
    print(f"{'stage':>5} {'startup s':>10} {'train_step s':>13} {'logprobs s':>11} {'state_dict s':>13}")
    for stage in args.stages:
        r = bench_stage(path, stage, args)
        print(
            f"{stage:>5} {r['startup_s']:>10.2f} {r['train_step_s']:>13.4f} "
            f"{r['logprobs_s']:>11.4f} {r['state_dict_s']:>13.4f}"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
