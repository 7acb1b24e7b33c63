"""SACPO (Wachi et al. 2024): stepwise alignment for constrained policy optimisation, and P-SACPO.

The constrained optimum π* = π_ref e^{(r + λg)/β} / Z equals π_r e^{λg/β} / Y with π_r = π_ref e^{r/β} / Z_r, the
reward-only optimum. So two unconstrained preference steps reach it, the second using the first one's result
as its reference:

1. step 1 (sacpo.first; helpfulness by default): from π_ref, DPO (or KTO) on helpfulness with β → π_r
2. step 2 from the step-1 checkpoint, which is the NEW reference: DPO (or KTO) on safety with β/λ
   (sacpo.beta_over_lambda) → π_{r+λg}. With first = "safety" the steps swap; each preference keeps its
   coefficient (safety β/λ, helpfulness β), and the result is the same policy: the steps commute.
3. P-SACPO: for each q in sacpo.merge_q, θ_q = (1 − q) θ_step1 + q θ_step2 (ray_align.merge), written as a
   Hugging Face checkpoint. With helpfulness first this is the paper's (1 − q) θ_r + q θ_{r+λ̄g} ≈ π_{r+qλ̄g}.

Losses: the safety step uses sacpo.loss (the paper compares DPO and KTO there); the helpfulness step uses
sacpo.helpfulness_loss (DPO in the paper; PKU has pairwise helpfulness labels only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from ray_align.algorithms.common import load_dataset, reference_path
from ray_align.algorithms.dpo import dataset_pairs, dpo_run
from ray_align.algorithms.kto import helpfulness_singletons, kto_run, safety_singletons
from ray_align.cluster import Cluster
from ray_align.config.schema import JobConfig
from ray_align.merge import p_sacpo_merge
from ray_align.run_dir import RunDir

ROLES = ("trainer",)
PREFERENCES = ("helpfulness", "safety")


def step_order(config: JobConfig) -> tuple[str, str]:
    """The two preferences in training order."""
    first = config.sacpo.first
    return first, next(p for p in PREFERENCES if p != first)


def step_beta(config: JobConfig, preference: str) -> float:
    """The KL coefficient of a step: β for helpfulness, β/λ for safety (whichever order they run in)."""
    return config.sacpo.beta if preference == "helpfulness" else config.sacpo.beta_over_lambda


def step_loss(config: JobConfig, preference: str) -> str:
    return config.sacpo.helpfulness_loss if preference == "helpfulness" else config.sacpo.loss


def align_step(
    config: JobConfig,
    cluster: Cluster,
    out: RunDir,
    ds,
    *,
    preference: str,
    model_path: str,
    stage: str,
    reference_path: str | None = None,
) -> tuple[str, dict]:
    """One SACPO step from ``model_path``; its reference is ``reference_path`` when given (step 1 with
    ``models.reference`` set), else ``model_path`` itself (the trainer's initial weights)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    beta, loss = step_beta(config, preference), step_loss(config, preference)
    if loss == "dpo":
        pairs = dataset_pairs(ds, preference, tokenizer, config)
        checkpoint, stats = dpo_run(
            config,
            cluster,
            out,
            model_path=model_path,
            pairs=pairs,
            beta=beta,
            stage=stage,
            reference_path=reference_path,
        )
    else:
        build = safety_singletons if preference == "safety" else helpfulness_singletons
        data = build(ds, tokenizer, config)
        checkpoint, stats = kto_run(
            config,
            cluster,
            out,
            model_path=model_path,
            data=data,
            beta=beta,
            stage=stage,
            reference_path=reference_path,
        )
    return checkpoint, {"preference": preference, "loss": loss, "beta": beta, **stats}


def save_merged(step1: str, step2: str, q: float, target: Path) -> str:
    """Write (1 − q) θ_step1 + q θ_step2 as a Hugging Face checkpoint at ``target``, atomically.

    The step-1 model is loaded with transformers, its weights replaced by the merge, and saved (with the
    tokenizer) into a temporary folder beside ``target`` that is then renamed: a crash never leaves half a
    checkpoint under the final name.
    """
    model = AutoModelForCausalLM.from_pretrained(step1, dtype="auto")
    theta_2 = AutoModelForCausalLM.from_pretrained(step2, dtype="auto").state_dict()
    model.load_state_dict(p_sacpo_merge(model.state_dict(), theta_2, q))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a checkpoint folder is like any other output
    try:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(step1).save_pretrained(tmp)
        if target.exists():  # a rerun replaces the earlier merge
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


def first_step(config: JobConfig, cluster: Cluster, out: RunDir, train) -> tuple[str, dict]:
    """Step 1 from π_ref: (checkpoint, stats). The sweep shares it between points that differ in step 2 only."""
    first, _ = step_order(config)
    return align_step(
        config,
        cluster,
        out,
        train,
        preference=first,
        model_path=cluster.policy_path,
        stage=f"sacpo_1_{first}",
        reference_path=reference_path(config, cluster),
    )


def second_step_and_merges(
    config: JobConfig, cluster: Cluster, out: RunDir, train, step1: str, stats1: dict
) -> dict:
    """Steps 2-3 from the step-1 checkpoint; writes and returns the result."""
    first, second = step_order(config)
    # 2. step 2 from the step-1 model, which is now the reference
    step2, stats2 = align_step(
        config, cluster, out, train, preference=second, model_path=step1, stage=f"sacpo_2_{second}"
    )
    # 3. P-SACPO merges
    merged = {
        str(q): save_merged(step1, step2, q, out.checkpoint(f"p_sacpo_q{q:g}")) for q in config.sacpo.merge_q
    }
    result = {
        "checkpoint": step2,
        "checkpoints": {"step1": step1, "step2": step2, "merged": merged},
        "step1": stats1,
        "step2": stats2,
        "final_loss": {first: stats1["final_loss"], second: stats2["final_loss"]},
    }
    out.write_result(result)
    return result


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    train, _ = load_dataset(config)
    step1, stats1 = first_step(config, cluster, out, train)  # 1. from π_ref
    return second_step_and_merges(config, cluster, out, train, step1, stats1)  # 2-3
