"""PPO-Lagrangian's two multi-actor passes, with their calls issued one after another against issued together:
the experience pass (actor log-probs, reference log-probs, one value per critic: 2 + m forwards) and the training
pass (ppo_epochs: per minibatch one actor step and one step per critic).

    python benchmarks/bench_ppo_lag_passes.py                   # tiny models, m = 1, a rollout of 64 × 32 tokens
    python benchmarks/bench_ppo_lag_passes.py --rollout 128 --max-tokens 64 --repeats 7

It builds the PPO-Lagrangian roles from the built-in job (tiny models, local Ray), samples and scores one rollout,
then times each pass with concurrent=False and concurrent=True alternately, after one warm-up round, and prints
the medians and their ratio. The roles share this machine's cores, so the gain here is bounded by the cores free;
on a cluster each role has its own devices.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
from transformers import AutoTokenizer

from actors.build import build_cluster, resources_for
from actors.launch import connect
from ray_align.algorithms import ppo_lag
from ray_align.algorithms.common import load_dataset, prompt_texts, prompt_token_ids, sample_and_score
from ray_align.algorithms.rollout import collect_experience, lagrangian_targets
from ray_align.cluster import Sampling
from ray_align.config import load_config
from ray_align.models.resolve import resolve_models
from ray_align.placement import plan_placement


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollout", type=int, default=64, help="responses in the rollout")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = tempfile.mkdtemp(prefix="bench-experience-")
    config = load_config(
        None,
        [
            "algorithm=ppo_lag",
            f"output_dir={out}",
            "models.tiny=true",
            "dual.constraints=[{name: harm, threshold: 0.0}]",
            f"data.max_length={64 + args.max_tokens}",
        ],
    )
    plan = plan_placement(resources_for(config, ppo_lag.ROLES))
    connect(config, sum(b.get("CPU", 0.0) for b in plan.bundles))
    models = resolve_models(config.models, seed=config.seed)
    cluster, builder = build_cluster(config, models, ppo_lag.ROLES)
    try:
        actor, critics = ppo_lag.start_models(config, cluster, None, steps=1)
        texts = prompt_texts(load_dataset(config)[0], None)
        ids = prompt_token_ids(texts, config, cluster.policy_path)
        prompts = [ids[i % len(ids)] for i in range(args.rollout)]
        samples = sample_and_score(cluster, prompts, Sampling(n=1, max_tokens=args.max_tokens, seed=0))
        pad_id = AutoTokenizer.from_pretrained(cluster.policy_path).pad_token_id
        exp = collect_experience(cluster, actor, critics, samples, pad_id)
        targets = lagrangian_targets(
            exp, [1.0], kl_coef=config.ppo.kl_coef, clip_range_score=config.ppo.clip_range_score,
            kl_in_cost=config.ppo.kl_in_cost, gamma=config.ppo.gamma, gae_lambda=config.ppo.gae_lambda,
        )
        passes = {
            "experience": lambda concurrent: collect_experience(
                cluster, actor, critics, samples, pad_id, concurrent=concurrent
            ),
            "training": lambda concurrent: ppo_lag.ppo_epochs(
                config, actor, critics, exp, targets, cluster.constraint_names, seed=0, concurrent=concurrent
            ),
        }
        tokens = int(exp.batch["response_mask"].sum())
        print(f"rollout {args.rollout} responses, {tokens} response tokens; actor, reference, {len(critics)} critics")
        for name, run_pass in passes.items():
            times: dict[bool, list[float]] = {False: [], True: []}
            for repeat in range(args.repeats + 1):
                for concurrent in (False, True):
                    began = time.perf_counter()
                    run_pass(concurrent)
                    if repeat:  # the first round warms both paths up
                        times[concurrent].append(time.perf_counter() - began)
            one, together = statistics.median(times[False]), statistics.median(times[True])
            print(f"{name} pass")
            print(f"  one after another  median {one:.3f} s  {np.round(times[False], 3).tolist()}")
            print(f"  issued together    median {together:.3f} s  {np.round(times[True], 3).tolist()}")
            print(f"  speed-up           {one / together:.2f}x")
    finally:
        builder.shutdown()


if __name__ == "__main__":
    main()
