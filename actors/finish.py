"""What a run does after its algorithm: evaluate reference and final policy, write report.md, print the summary."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from actors.evaluate import REFERENCE, eval_targets, evaluate
from ray_align.config import JobConfig
from ray_align.eval.collect import PolicyToEvaluate
from ray_align.eval.prompts import held_out_prompts
from ray_align.models.resolve import ResolvedModels
from ray_align.report.run_report import write_run_report
from ray_align.report.tables import console_table
from ray_align.run_dir import RunDir

logger = logging.getLogger("ray_align")

# Algorithms whose result is a policy to evaluate (reward_model / cost_model train scorers; sample_score trains
# nothing).
POLICY_ALGORITHMS = ("dpo", "kto", "mocan", "pecan", "caid", "ppo_lag", "sacpo")


def policies_of(models: ResolvedModels, result: Mapping[str, Any]) -> list[PolicyToEvaluate]:
    """π_ref, the final policy, and P-SACPO's merged policies when there are any."""
    policies = [
        PolicyToEvaluate(REFERENCE, models.reference),
        PolicyToEvaluate("final", result["checkpoint"]),
    ]
    merged = (result.get("checkpoints") or {}).get("merged") or {}
    policies += [PolicyToEvaluate(f"p_sacpo_q{q}", path) for q, path in merged.items()]
    return policies


def wants_evaluation(config: JobConfig, result: Mapping[str, Any]) -> bool:
    return config.eval.enabled and config.algorithm in POLICY_ALGORITHMS and bool(result.get("checkpoint"))


def finish_run(
    config: JobConfig, models: ResolvedModels, result: dict, out: RunDir, phases: dict[str, float]
) -> dict | None:
    """Evaluate (unless eval.enabled is false), write report.md, print the console summary; returns the
    evaluation summary (None when there was none)."""
    summary = None
    if wants_evaluation(config, result):
        start = time.perf_counter()
        prompts = held_out_prompts(config).head(config.eval.num_prompts)
        logger.info(
            "evaluating %s on %d prompts (%s)",
            REFERENCE + " and final policy",
            len(prompts.texts),
            prompts.source,
        )
        summary = evaluate(
            config,
            models,
            policies_of(models, result),
            prompts,
            out.path("eval"),
            targets=eval_targets(config, result),
        )
        phases["evaluate"] = time.perf_counter() - start
    report = write_run_report(out.root, config=config, result=result, summary=summary, phases=phases)
    print(console_summary(config, result, summary, out, report, phases))
    return summary


def console_summary(config, result, summary, out: RunDir, report, phases: Mapping[str, float]) -> str:
    lines = [f"ray-align {config.algorithm}: done in {sum(phases.values()):.1f} s; outputs in {out.root}"]
    if "lambda" in result:
        lam = ", ".join(f"{name} {value:.3f}" for name, value in result["lambda"].items())
        lines.append(f"λ: {lam}")
    if summary is not None:
        lines.append(console_table(summary))
    elif config.algorithm in POLICY_ALGORITHMS:
        lines.append("no evaluation (eval.enabled is false)")
    if result.get("checkpoint"):
        lines.append(f"checkpoint: {result['checkpoint']}")
    lines.append(f"report: {report}")
    return "\n".join(lines)
