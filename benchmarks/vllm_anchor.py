"""``bench_generation.py --compare-vllm``: the generator actor against vLLM's ``LLM.generate`` in a plain process.

vLLM runs in a subprocess of this file (the anchor, no Ray in it) and in one ``VLLMGenerator`` actor, on the same
token ids, engine arguments and per-request ``SamplingParams`` (``actors.generator.request_params``): ``--calls``
standalone calls before Ray starts, then ``--rounds`` rounds of ``--calls`` calls of each side, alternating which
goes first (the machine's speed drifts: measure interleaved). Prints tokens/s of each, the ratios, where an actor
call's time goes (engine, our wrapper, Ray), and the CPU used during the calls by the engine's threads and by
every other process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from actors.generator import VLLMGenerator, cpu_scheduler_args, request_params
from ray_align.cluster import Sampling

MAX_MODEL_LEN = 512
RESULT = "@@result "  # prefix of the standalone worker's answers on its stdout (vLLM logs there too)


def prompt_token_ids(path: str, args: argparse.Namespace, synthetic: list[str]) -> list[list[int]]:
    """The first ``--prompts`` prompts of ``--prompts-file`` (or the ``synthetic`` ones), in the checkpoint's chat
    template when it has one (else the PKU template), as token ids: both runners get the same ids."""
    from transformers import AutoTokenizer

    from ray_align.data.formatting import encode_prompt

    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.prompts_file:
        with open(args.prompts_file) as f:
            texts = [json.loads(line)["prompt"] for line, _ in zip(f, range(args.prompts))]
    else:
        texts = [p.split("USER: ")[1].removesuffix(" ASSISTANT:") for p in synthetic]
    template = "chat" if getattr(tokenizer, "chat_template", None) else "pku"
    return [encode_prompt(tokenizer, text, template) for text in texts]


def standalone_worker(spec_path: str) -> None:
    """The anchor: vLLM's ``LLM`` in this plain process, one ``LLM.generate`` per line read from stdin."""
    with open(spec_path) as f:
        spec = json.load(f)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=spec["path"],
        dtype=spec["dtype"],
        seed=0,
        max_model_len=MAX_MODEL_LEN,
        gpu_memory_utilization=0.5,
        enforce_eager=True,
        **cpu_scheduler_args(MAX_MODEL_LEN),
    )
    batch = [TokensPrompt(prompt_token_ids=ids) for ids in spec["prompt_ids"]]
    params = request_params(Sampling(**spec["sampling"]), len(batch))
    print(RESULT + json.dumps({"threads": torch.get_num_threads()}), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        outputs = llm.generate(batch, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        response_ids = [list(c.token_ids) for o in outputs for c in o.outputs]
        print(RESULT + json.dumps({"seconds": seconds, "response_ids": response_ids}), flush=True)


class TimedGenerator(VLLMGenerator):
    """``VLLMGenerator`` that records, per ``generate`` call, its own seconds and those of ``LLM.generate``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timings: list[dict[str, float]] = []
        self._engine_seconds = 0.0
        engine_generate = self.llm.generate

        def timed(*a, **kw):
            start = time.perf_counter()
            out = engine_generate(*a, **kw)
            self._engine_seconds = time.perf_counter() - start
            return out

        self.llm.generate = timed

    def generate(self, prompts, sampling, first_index=0):
        start = time.perf_counter()
        out = super().generate(prompts, sampling, first_index)
        self.timings.append({"method": time.perf_counter() - start, "engine": self._engine_seconds})
        return out

    def threads(self) -> dict[str, object]:
        return {
            "torch": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "pid": os.getpid(),
        }

    def take_timings(self) -> list[dict[str, float]]:
        out, self.timings = self.timings, []
        return out


class Standalone:
    """The worker subprocess, driven one call at a time."""

    def __init__(self, path: str, dtype: str, ids: list[list[int]], sampling: Sampling, cpus: int) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"path": path, "dtype": dtype, "prompt_ids": ids, "sampling": vars(sampling)}, f)
        self.spec_path = f.name
        env = dict(os.environ, OMP_NUM_THREADS=str(cpus), MKL_NUM_THREADS=str(cpus))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.spec_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.threads = self._read()["threads"]

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT) :])
        raise RuntimeError(f"the standalone vLLM process ended (exit code {self.proc.wait()})")

    def generate(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        os.unlink(self.spec_path)


def process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds so far) of every process; a Python process is named by its script."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times, cmd, name = p.info["cpu_times"], p.info["cmdline"] or [], p.info["name"] or "?"
        if times is None:
            continue
        script = next((os.path.basename(a) for a in cmd[1:3] if a.endswith(".py") or "/bin/" in a), None)
        out[p.pid] = (name if name.startswith("ray::") or not script else script, times.user + times.system)
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread name of process ``pid`` (Linux)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(os.path.join(task.path, "stat")) as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        utime, stime = stat[stat.rindex(")") + 2 :].split()[11:13]
        out[name] = out.get(name, 0.0) + (int(utime) + int(stime)) / tick
    return out


def measured(call, pid: int) -> dict:
    """One call, with the CPU seconds spent during it by the engine process's threads (by thread name) and by
    every other process (by process name)."""
    threads, procs = thread_cpu(pid), process_cpu()
    out = call()
    threads_after, procs_after = thread_cpu(pid), process_cpu()
    out["threads"] = {k: v - threads.get(k, 0.0) for k, v in threads_after.items()}
    out["others"] = {}
    for p, (name, cpu) in procs_after.items():
        if p != pid:
            out["others"][name] = out["others"].get(name, 0.0) + cpu - procs.get(p, (name, 0.0))[1]
    return out


def compare_vllm(args: argparse.Namespace, path: str, synthetic: list[str]) -> None:
    import ray

    from actors.pools import GeneratorPool
    from actors.remote import actor_env, remote_class

    ids = prompt_token_ids(path, args, synthetic)
    sampling = Sampling(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    cpus = args.engine_cpus or os.cpu_count() or 1
    print(f"model {path}  dtype {args.dtype}  {len(ids)} prompts x n={args.n} x <={args.max_tokens} tokens")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; engine threads: {cpus}")
    standalone = Standalone(path, args.dtype, ids, sampling, cpus)
    pid = standalone.proc.pid
    standalone.generate()  # warm-up
    # Before Ray starts: the anchor on a machine without Ray's own processes (not interleaved).
    runs: dict[str, list[dict]] = {"standalone, Ray not started": []}
    runs["standalone, Ray not started"] = [measured(standalone.generate, pid) for _ in range(args.calls)]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.update(item.split("=", 1) for item in args.ray_env)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    actor = remote_class(TimedGenerator, num_cpus=cpus, num_gpus=0, runtime_env=actor_env(cpus))
    handle = actor.remote(path, dtype=args.dtype, max_model_len=MAX_MODEL_LEN, kv_cache_gib=1)
    pool = GeneratorPool([handle])
    pool.ready()
    threads = ray.get(handle.threads.remote())
    print(f"threads: standalone torch {standalone.threads}, actor {threads}")

    def pool_call() -> dict:
        start = time.perf_counter()
        rollouts = pool.generate(ids, sampling)
        return {"seconds": time.perf_counter() - start, "response_ids": rollouts.response_ids}

    same = standalone.generate()["response_ids"] == pool_call()["response_ids"]  # also the actor's warm-up
    ray.get(handle.take_timings.remote())
    runs |= {"standalone": [], "actor": []}
    for r in range(args.rounds):
        order = [("standalone", standalone.generate, pid), ("actor", pool_call, threads["pid"])]
        for name, call, engine_pid in order if r % 2 == 0 else order[::-1]:
            runs[name] += [measured(call, engine_pid) for _ in range(args.calls)]
    inside = ray.get(handle.take_timings.remote())
    standalone.close()
    ray.shutdown()
    report(runs, inside, same)


def report(runs: dict[str, list[dict]], inside: list[dict[str, float]], same: bool) -> None:
    med = statistics.median
    for calls in runs.values():
        for c in calls:
            c["tokens"] = sum(len(r) for r in c["response_ids"])
    rate = {name: med(c["tokens"] / c["seconds"] for c in calls) for name, calls in runs.items()}
    print(f"same samples in both runners: {same}")
    print("| runner | tokens/s (median) | min–max | calls | engine process, cores | other processes, cores |")
    print("|---|---|---|---|---|---|")
    for name, calls in runs.items():
        rates = [c["tokens"] / c["seconds"] for c in calls]
        engine = med(sum(c["threads"].values()) / c["seconds"] for c in calls)
        others = med(sum(c["others"].values()) / c["seconds"] for c in calls)
        print(
            f"| {name} | {rate[name]:.1f} | {min(rates):.1f}–{max(rates):.1f} | {len(calls)} | {engine:.2f} "
            f"| {others:.3f} |"
        )
    print(f"actor / standalone (interleaved): {rate['actor'] / rate['standalone']:.3f}")
    print(f"actor / standalone before Ray started: {rate['actor'] / rate['standalone, Ray not started']:.3f}")
    actor = runs["actor"]
    parts = {
        "standalone LLM.generate": med(c["seconds"] for c in runs["standalone"]),
        "actor: driver wall": med(c["seconds"] for c in actor),
        "actor: VLLMGenerator.generate": med(t["method"] for t in inside),
        "actor: its LLM.generate": med(t["engine"] for t in inside),
        "actor: Ray call + transfer (wall - method)": med(
            c["seconds"] - t["method"] for c, t in zip(actor, inside)
        ),
        "actor: ours around LLM.generate (method - engine)": med(t["method"] - t["engine"] for t in inside),
    }
    for name, seconds in parts.items():
        print(f"  {name}: median {seconds * 1e3:.1f} ms")
    for name, calls in runs.items():  # CPU seconds per call: the engine's threads, and every other process
        for key in ("threads", "others"):
            names = {k for c in calls for k in c[key]}
            per = {k: statistics.mean(c[key].get(k, 0.0) for c in calls) for k in names}
            top = sorted(per.items(), key=lambda kv: -kv[1])[:8]
            print(f"  {name}, {key}, CPU s per call: " + ", ".join(f"{k} {v:.3f}" for k, v in top))


if __name__ == "__main__":  # the anchor's process: Standalone starts it with its spec file
    standalone_worker(sys.argv[1])
