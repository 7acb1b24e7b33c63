"""Generation and weight-sync figures for one vLLM engine (and optionally a pool of Ray engine actors).

    python benchmarks/bench_generation.py                       # tiny model, in-process engine
    python benchmarks/bench_generation.py --ray-engines 2       # plus a GeneratorPool of 2 actors
    python benchmarks/bench_generation.py --model /path/to/hf/checkpoint --dtype bfloat16
    python benchmarks/bench_generation.py --compare-vllm \
        --model runs/smollm2-safety/models/SmolLM2-135M-Instruct \
        --prompts-file ../shared/data/pku-saferlhf/PKU-SafeRLHF_train_sample500.jsonl \
        --prompts 16 --n 1 --max-tokens 64                       # the actor path against standalone vLLM

Prints: engine start time (including ``import vllm``), generated tokens per second for prompts × n × max_tokens,
and per weight sync the seconds and bytes (in-process ``update_weights``; with Ray, the pool's ``update_weights``
through the object store).

``--compare-vllm`` runs vLLM's ``LLM.generate`` in a plain subprocess (the anchor) and a ``VLLMGenerator`` actor
side by side, interleaved (benchmarks/vllm_anchor.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from vllm_anchor import compare_vllm

from actors.generator import VLLMGenerator
from ray_align.cluster import Rollouts, Sampling


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF checkpoint directory (default: build the tiny Llama)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--syncs", type=int, default=5)
    p.add_argument(
        "--ray-engines", type=int, default=0, help="also measure a GeneratorPool of this many actors"
    )
    p.add_argument("--compare-vllm", action="store_true", help="the actor path against standalone vLLM")
    p.add_argument("--prompts-file", help="JSONL with a 'prompt' field (default: synthetic prompts)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=4, help="timed calls per runner per round")
    p.add_argument("--engine-cpus", type=int, default=0, help="CPUs (threads) of the engine actor (0: all)")
    p.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the Ray processes --compare-vllm starts (repeatable), e.g. RAY_USAGE_STATS_ENABLED=0",
    )
    return p.parse_args()


def model_path(arg: str | None) -> str:
    if arg:
        return arg
    from ray_align.models.tiny import build_tiny_models

    return str(build_tiny_models(os.path.join(tempfile.gettempdir(), "ray-align-bench-tiny")).policy)


def prompts(count: int) -> list[str]:
    topics = ["bread", "the weather", "a webcam", "sleep", "Paris", "a fox", "numbers", "safety"]
    return [
        f"BEGINNING OF CONVERSATION: USER: Tell me about {topics[i % len(topics)]} ({i}). ASSISTANT:"
        for i in range(count)
    ]


def tokens_per_second(generate, batch: list[str], sampling: Sampling) -> tuple[float, int, float]:
    """(seconds, generated tokens, tokens/s) of one generate call, after one warm-up call."""
    generate(batch[:2], sampling)
    start = time.perf_counter()
    rollouts: Rollouts = generate(batch, sampling)
    seconds = time.perf_counter() - start
    tokens = sum(len(r) for r in rollouts.response_ids)
    return seconds, tokens, tokens / seconds


def noisy(state_dict: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in state_dict.items()}


def main() -> None:
    args = parse_args()
    if args.compare_vllm:
        return compare_vllm(args, model_path(args.model), prompts(args.prompts))
    path = model_path(args.model)
    batch, sampling = (
        prompts(args.prompts),
        Sampling(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0),
    )
    print(
        f"model {path}  dtype {args.dtype}  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )

    start = time.perf_counter()
    engine = VLLMGenerator(path, dtype=args.dtype, max_model_len=512)
    print(f"engine start (import vllm + build): {time.perf_counter() - start:.2f} s")

    seconds, tokens, rate = tokens_per_second(engine.generate, batch, sampling)
    print(
        f"generate {args.prompts} prompts x n={args.n} x {args.max_tokens} tokens: {tokens} tokens in {seconds:.2f} s = {rate:.0f} tokens/s"
    )

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    syncs = [engine.update_weights(noisy(base, seed)) for seed in range(args.syncs)]
    times = [s["seconds"] for s in syncs]
    print(
        f"update_weights in-process: {syncs[0]['bytes'] / 1e6:.3f} MB per sync, "
        f"median {statistics.median(times) * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}) over {len(times)}"
    )
    if args.ray_engines:
        bench_pool(path, args, batch, sampling, base)


def bench_pool(path: str, args: argparse.Namespace, batch: list[str], sampling: Sampling, base) -> None:
    import ray

    from actors.pools import GeneratorPool

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=max(2, args.ray_engines), include_dashboard=False, log_to_driver=False)
    actor = ray.remote(num_cpus=1)(VLLMGenerator)
    start = time.perf_counter()
    pool = GeneratorPool(
        [actor.remote(path, dtype=args.dtype, max_model_len=512) for _ in range(args.ray_engines)]
    )
    pool.ready()
    print(f"{args.ray_engines} engine actors ready in {time.perf_counter() - start:.2f} s")
    seconds, tokens, rate = tokens_per_second(pool.generate, batch, sampling)
    print(f"pool generate: {tokens} tokens in {seconds:.2f} s = {rate:.0f} tokens/s")
    syncs = [pool.update_weights(noisy(base, seed)) for seed in range(args.syncs)]
    print(
        f"pool update_weights to {args.ray_engines} engines: {syncs[0]['bytes'] / 1e6:.3f} MB, median "
        f"{statistics.median(s['seconds'] for s in syncs) * 1e3:.1f} ms (put {statistics.median(s['put_seconds'] for s in syncs) * 1e3:.1f} ms, "
        f"slowest engine load {statistics.median(s['load_seconds'] for s in syncs) * 1e3:.1f} ms)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
