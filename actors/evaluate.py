"""The evaluation phase: start generators, scorers and the reference model, sample every policy, write the outputs.

Used at the end of every training run (reference vs final policy on the held-out split) and by `ray-align eval`.
Outputs in ``out``: samples.parquet (every sampled response with its scores), eval.json, eval.md and
score_distributions.png (docs/eval.md explains every number).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from actors.build import build_cluster, resources_for
from ray_align.algorithms.common import prompt_token_ids
from ray_align.cluster import Sampling
from ray_align.config import JobConfig
from ray_align.eval.collect import PolicyToEvaluate, collect
from ray_align.eval.prompts import PromptSet
from ray_align.eval.summary import ConstraintTarget, summarize
from ray_align.models.resolve import ResolvedModels
from ray_align.placement import ResourcesFile, RoleResources, plan_placement
from ray_align.progress import bar
from ray_align.report.plots import plot_score_distributions
from ray_align.report.tables import eval_markdown
from ray_align.run_dir import atomic_write_json, atomic_write_text, atomic_write_with

logger = logging.getLogger(__name__)
EVAL_ROLES = ("generator", "scorer", "reference")
REFERENCE = "reference"


def eval_sampling(config: JobConfig) -> Sampling:
    e, g = config.eval, config.generation
    return Sampling(
        n=e.samples_per_prompt,
        temperature=e.temperature,
        top_p=e.top_p,
        max_tokens=e.max_tokens or g.max_tokens,
        seed=e.seed,
        stop=tuple(g.stop),
    )


def eval_resources(config: JobConfig) -> ResourcesFile:
    """The job's placement for the evaluation roles; a role its resources file lacks gets one CPU."""
    found = resources_for(config, EVAL_ROLES)
    roles = dict(found.roles)
    for role in EVAL_ROLES:
        roles.setdefault(role, RoleResources(count=1, cpus=1.0))
    return ResourcesFile(strategy=found.strategy, roles=roles, colocate=found.colocate)


def eval_targets(config: JobConfig, result: Mapping[str, Any]) -> list[ConstraintTarget]:
    """The bounds a constrained method trained for, with the dual's prediction where it made one (MoCAN).

    PeCAN's margin lives on the implicit safety score's scale, not the cost model's, so its prediction is not
    compared; SACPO, DPO and KTO train for no bound."""
    if config.algorithm not in ("mocan", "caid", "ppo_lag") or config.caid.form == "preference":
        return []  # PeCAID's margin, like PeCAN's, is on the implicit safety score's scale
    predicted = result.get("predicted_margin") or {}
    targets = []
    for c in config.dual.constraints:
        if c.margin is not None:
            targets.append(ConstraintTarget(c.name, margin=c.margin, predicted=predicted.get(c.name)))
        else:
            utility = (result.get("predicted") or {}).get(c.name)
            cost = None if utility is None else -float(utility)
            targets.append(ConstraintTarget(c.name, threshold=c.threshold, predicted=cost))
    return targets


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))


def sample_policies(
    config: JobConfig, models: ResolvedModels, policies: Sequence[PolicyToEvaluate], prompts: PromptSet
) -> pd.DataFrame:
    """Start the evaluation roles, sample and score every policy on ``prompts``, shut the roles down."""
    cluster, builder = build_cluster(config, models, EVAL_ROLES, resources=eval_resources(config))
    try:
        ids = prompt_token_ids(prompts.texts, config, cluster.policy_path)
        with bar(len(ids) * len(policies), "evaluating", unit="prompt") as progress:
            return collect(cluster, policies, prompts, ids, eval_sampling(config), progress.update)
    finally:
        builder.shutdown()


def evaluate(
    config: JobConfig,
    models: ResolvedModels,
    policies: Sequence[PolicyToEvaluate],
    prompts: PromptSet,
    out: Path,
    *,
    targets: Sequence[ConstraintTarget] = (),
    reference: str | None = REFERENCE,
) -> dict[str, Any]:
    """Sample, score and summarise; writes the outputs into ``out`` and returns the summary (eval.json)."""
    frame = sample_policies(config, models, policies, prompts)
    return write_evaluation(
        config, models, frame, policies, prompts, out, targets=targets, reference=reference
    )


def write_evaluation(
    config: JobConfig,
    models: ResolvedModels,
    frame: pd.DataFrame,
    policies: Sequence[PolicyToEvaluate],
    prompts: PromptSet,
    out: Path,
    *,
    targets: Sequence[ConstraintTarget] = (),
    reference: str | None = REFERENCE,
) -> dict[str, Any]:
    """Summarise an evaluation frame; writes samples.parquet, eval.json, eval.md and the score plot into ``out``
    and returns the summary (a sweep samples π_ref once and calls this per point)."""
    _write_parquet(frame, out / "samples.parquet")
    e = config.eval
    summary = summarize(
        frame,
        constraints=list(models.constraint_names),
        reference=reference,
        targets=targets,
        unsafe_threshold=e.unsafe_threshold,
        n_boot=e.n_boot,
        level=e.level,
        seed=e.seed,
    )
    summary["prompt_source"] = prompts.source
    summary["policy_paths"] = {p.name: p.path for p in policies}
    atomic_write_json(out / "eval.json", summary)
    atomic_write_text(out / "eval.md", eval_markdown(summary))
    plot_score_distributions(frame, out / "score_distributions.png")
    logger.info(
        "evaluation of %d policies on %d prompts written to %s", len(policies), len(prompts.texts), out
    )
    return summary


def placement_cpus(config: JobConfig) -> float:
    return sum(b.get("CPU", 0.0) for b in plan_placement(eval_resources(config)).bundles)


def run_eval(
    config: JobConfig, policies, out: Path, *, prompts_file: str | None, with_reference: bool
) -> dict:
    """`ray-align eval`: resolve prompts and models, evaluate, print the table. ``policies``: PolicyArg list."""
    from actors.launch import connect, setup_console
    from ray_align.eval.command import policies_to_evaluate
    from ray_align.eval.prompts import held_out_prompts, prompts_from_file
    from ray_align.models.resolve import resolve_models
    from ray_align.report.tables import console_table

    setup_console(config)
    prompts = prompts_from_file(prompts_file) if prompts_file else held_out_prompts(config)
    prompts = prompts.head(config.eval.num_prompts)
    models = resolve_models(config.models, seed=config.seed)
    to_evaluate = policies_to_evaluate(policies, models.reference if with_reference else None)
    targets = []
    runs = [p for p in policies if p.run_dir is not None]
    if with_reference and runs:  # the first run's bounds and prediction, judged for every policy
        import json

        targets = eval_targets(config, json.loads((runs[0].run_dir / "result.json").read_text()))
    connect(config, placement_cpus(config))
    summary = evaluate(
        config,
        models,
        to_evaluate,
        prompts,
        out,
        targets=targets,
        reference=REFERENCE if with_reference else None,
    )
    print(console_table(summary))
    print(f"outputs: {out}/eval.md, eval.json, samples.parquet")
    return summary
