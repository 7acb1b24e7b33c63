"""The score models, KTO, SACPO (with P-SACPO) and PeCAN run end to end on the 500-row PKU-SafeRLHF sample.

Each test builds a job config as `ray-align run` would and runs the real driver in-process (actors.launch.run_job):
DeepSpeed trainer groups, the vLLM generator (PeCAN) and the dual coordinator as Ray actors, the tiny model
family, small budgets. All tests share the session's Ray instance. About 3 minutes on a 2-core machine.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from base_job import BASE_JOB
from scipy.stats import binom

from actors.launch import run_job
from ray_align.config import load_config
from ray_align.models.resolve import resolve_models
from ray_align.run_dir import RunDir

pytestmark = pytest.mark.integration

SMALL = [
    "models.tiny=true",
    "data.max_length=128",
    "data.max_prompt_length=64",
    "generation.max_tokens=16",
    "training.batch_size=8",
    "training.micro_batch_size=8",
    "training.epochs=1",
]
# The preference runs: the first 24 prompts (24 rows of the sample, no repeats among them), no eval split.
PREFERENCE = [*SMALL, "data.max_prompts=24", "data.eval_fraction=0", "training.lr=1e-4"]
# Score models: responses up to ~240 tokens (see the reward test), 30% of prompts held out, 3 epochs.
SCORE = [*SMALL, "data.max_length=256", "data.eval_fraction=0.3", "training.lr=1e-3", "training.epochs=3"]


def run(pku_dir, tmp_path, name: str, *overrides: str):
    config = load_config(
        BASE_JOB, [f"data.source={pku_dir}", f"output_dir={tmp_path / name}", f"algorithm={name}", *overrides]
    )
    result = run_job(config)
    return config, result, RunDir(config.output_dir)


def causal_lm_state(path: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def chance_tail(accuracy: float, n: int) -> float:
    """P(Binomial(n, ½) ≥ accuracy·n): how often a coin would do at least this well."""
    return float(binom.sf(round(accuracy * n) - 1, n, 0.5))


# ---------------------------------------------------------------------------------------------- score models


def test_reward_model_beats_chance_on_held_out_pairs(ray_session, pku_dir, tmp_path):
    """Bradley–Terry reward model, 365 train / 135 held-out pairs (eval_fraction 0.3, split seed 0).

    What a model this small can find: on this split, "the longer response (in tokens, after truncation to
    256) is better" scores 0.61 on the held-out pairs, and a bag-of-tokens logistic regression 0.60–0.64.
    Measured (3 epochs, lr 1e-3): 0.66 for seed 0 (0.60 and 0.65 with the tiny family of seeds 1 and 2, 0.56
    with split seed 1); the untrained model scores 0.49. A coin reaches 0.55 on 135 pairs with probability
    0.11 and 0.66 with probability ~1e-4, so the test asks for > 0.55, for a gain over the initial model,
    and reports the binomial tail. The checkpoint, scored in this process with transformers, must reproduce
    the reported held-out accuracy (it is the trained model, saved whole).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ray_align.algorithms.common import load_dataset
    from ray_align.algorithms.score_models import held_out_metrics, score_pairs

    config, result, out = run(pku_dir, tmp_path, "reward_model", *SCORE)
    after, before = result["eval"], result["eval_before"]
    print(
        f"reward model held-out: {after} (before {before}); chance tail {chance_tail(after['accuracy'], 135):.2g}"
    )
    assert after["pairs"] >= 100
    assert after["accuracy"] > 0.55 and after["accuracy"] > before["accuracy"]
    assert len(out.metrics("reward_model")) == result["steps"] == 3 * math.ceil(result["train_pairs"] / 8)

    model = AutoModelForSequenceClassification.from_pretrained(
        result["checkpoint"], dtype=torch.float32
    ).eval()
    _, held_out_ds = load_dataset(config)
    held_out = score_pairs(held_out_ds, False, AutoTokenizer.from_pretrained(result["checkpoint"]), config)
    with torch.no_grad():
        scores = np.array(
            [
                [
                    model(torch.tensor([p[side]["input_ids"]])).logits[0, 0].item()
                    for side in ("chosen", "rejected")
                ]
                for p in held_out.pairs
            ]
        )
    assert held_out_metrics(scores, None)["accuracy"] == pytest.approx(
        after["accuracy"], abs=1.01 / len(scores)
    )


def test_cost_model_separates_unsafe_responses(ray_session, pku_dir, tmp_path):
    """Safe RLHF cost model on the same split: its sign (C > 0 ⇔ unsafe) on the 270 held-out responses.

    57% of the held-out responses are labelled unsafe, so the best constant guess has sign accuracy 0.57.
    Measured: 0.71 (0.68 and 0.70 with the tiny family of seeds 1 and 2, 0.66 with split seed 1, base rate
    0.57 there too); the untrained model 0.54. The test asks for 0.05 above the constant guess. The pair
    accuracy C(unsafer) > C(safer) stays near chance (0.49–0.59 over those runs) and is only reported: most
    PKU pairs share one safety label, so "safer" ranks two safe or two unsafe answers by severity, which even
    a bag-of-tokens classifier barely learns from 365 pairs.
    """
    _, result, out = run(pku_dir, tmp_path, "cost_model", *SCORE)
    after = result["eval"]
    print(f"cost model held-out: {after} (before {result['eval_before']})")
    constant_guess = max(after["unsafe_share"], 1.0 - after["unsafe_share"])
    assert after["pairs"] >= 100
    assert after["sign_accuracy"] > constant_guess + 0.05
    assert len(out.metrics("cost_model")) == result["steps"]
    assert out.metrics("cost_model_eval")[0]["sign_accuracy"] == after["sign_accuracy"]


# ---------------------------------------------------------------------------------------------- KTO


def _safety_counts(pku_dir, prompts: int) -> tuple[int, int]:
    """(safe, unsafe) responses among the rows of the first ``prompts`` distinct prompts, read from the file."""
    rows = [
        json.loads(line) for line in next(pku_dir.glob("*.jsonl")).read_text().splitlines() if line.strip()
    ]
    kept = list(dict.fromkeys(r["prompt"] for r in rows))[:prompts]
    labels = [r[f"is_response_{k}_safe"] for r in rows if r["prompt"] in kept for k in (0, 1)]
    return sum(labels), len(labels) - sum(labels)


def test_kto_trains_from_the_policy_with_balanced_weights(ray_session, pku_dir, tmp_path):
    """KTO on the 48 singletons of 24 prompts (desirable = safe).

    w₋ defaults to n_safe / n_unsafe, counted here from the raw file. At the first step the policy is its own
    reference, so every log-ratio r and the reference point z0 (from the mismatched rows) are 0 and each row's
    loss is w·(1 − σ(0)) = w/2: the step-0 loss must be (n_d + w₋ n_u) / (2 (n_d + n_u)) over that batch's
    own class counts. 48 singletons in batches of 8 give 6 steps.
    """
    safe, unsafe = _safety_counts(pku_dir, 24)
    config, result, out = run(pku_dir, tmp_path, "kto", *PREFERENCE)
    assert result["singletons"] == 48 and result["desirable"] == safe
    assert result["undesirable_weight"] == pytest.approx(safe / unsafe)
    lines = out.metrics("kto")
    assert len(lines) == result["steps"] == 6
    first = lines[0]
    n_d, n_u, w_minus = first["n_desirable"], first["n_undesirable"], result["undesirable_weight"]
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)
    assert first["loss"] == pytest.approx((n_d + w_minus * n_u) / (2 * (n_d + n_u)), abs=1e-5)
    policy = resolve_models(config.models, seed=config.seed).policy
    assert changed(causal_lm_state(result["checkpoint"]), causal_lm_state(policy))


# ---------------------------------------------------------------------------------------------- SACPO


def test_sacpo_steps_and_p_sacpo_merge(ray_session, pku_dir, tmp_path):
    """DPO(helpfulness, β = 0.1) → DPO(safety, β/λ = 0.025) with P-SACPO q = 0.5.

    Step 2 starts from the step-1 checkpoint and uses it as its reference: at its first step policy and
    reference agree, every implicit reward is 0 and the DPO loss is log 2. The merged checkpoint is exactly
    ½ θ_step1 + ½ θ_step2 (float32 weights; the merge is computed in float64 and rounded once).
    """
    _, result, out = run(pku_dir, tmp_path, "sacpo", *PREFERENCE, "sacpo.merge_q=[0.5]")
    paths = result["checkpoints"]
    assert result["step1"]["beta"] == 0.1 and result["step2"]["beta"] == 0.025
    for stage in ("sacpo_1_helpfulness", "sacpo_2_safety"):
        assert len(out.metrics(stage)) == 3  # 24 pairs in batches of 8
    assert out.metrics("sacpo_2_safety")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert all(math.isfinite(v) for v in result["final_loss"].values())
    step1, step2 = causal_lm_state(paths["step1"]), causal_lm_state(paths["step2"])
    merged = causal_lm_state(paths["merged"]["0.5"])
    assert changed(step1, step2)
    for key, value in merged.items():
        expected = ((step1[key].double() + step2[key].double()) / 2).float()
        torch.testing.assert_close(value, expected, rtol=0, atol=0)


def test_sacpo_rerun_resumes_after_the_finished_step(ray_session, pku_dir, tmp_path):
    """A SACPO run that stopped during step 2 (its record and checkpoint removed, its metric rows left behind)
    is rerun into the same folder: step 1 is taken from disk, step 2 trains again and logs one attempt."""
    _, first, out = run(pku_dir, tmp_path, "sacpo", *PREFERENCE)
    step1_weights = causal_lm_state(first["checkpoints"]["step1"])
    step1_written = Path(first["checkpoints"]["step1"], "model.safetensors").stat().st_mtime_ns
    out.path("stages", "sacpo_2_safety.done").unlink()
    shutil.rmtree(first["checkpoints"]["step2"])
    _, again, out = run(pku_dir, tmp_path, "sacpo", *PREFERENCE)
    assert again["step1"]["resumed"] is True and "resumed" not in again["step2"]
    assert len(out.metrics("sacpo_1_helpfulness")) == 3 and len(out.metrics("sacpo_2_safety")) == 3
    assert not changed(step1_weights, causal_lm_state(again["checkpoints"]["step1"]))
    assert Path(again["checkpoints"]["step1"], "model.safetensors").stat().st_mtime_ns == step1_written
    # the same settings with resume off train both steps again
    _, fresh, _ = run(pku_dir, tmp_path, "sacpo", *PREFERENCE, "checkpoint.resume=false")
    assert "resumed" not in fresh["step1"]


def test_sacpo_safety_first_with_kto(ray_session, pku_dir, tmp_path):
    """sacpo.first = safety, sacpo.loss = kto: step 1 is KTO on safety singletons with β/λ from π_ref, step 2
    DPO on helpfulness with β from the step-1 model (log 2 at its first step, as above)."""
    _, result, out = run(pku_dir, tmp_path, "sacpo", *PREFERENCE, "sacpo.first=safety", "sacpo.loss=kto")
    assert {"preference": "safety", "loss": "kto", "beta": 0.025}.items() <= result["step1"].items()
    assert result["step2"]["preference"] == "helpfulness" and result["step2"]["beta"] == 0.1
    assert "kl" in out.metrics("sacpo_1_safety")[0]
    assert out.metrics("sacpo_2_helpfulness")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert result["checkpoints"]["merged"] == {}


# ---------------------------------------------------------------------------------------------- PeCAN


def test_pecan_dual_on_implicit_scores(ray_session, pku_dir, tmp_path):
    """DPO_H and DPO_S, 8 prompts × 4 π_ref samples scored by (β h_r, β h_g), the dual for a margin b, one DPO.

    The coordinator's λ* is in the run's dual.json history (event "solve") and in the result. KKT of the
    sample dual: λ* > 0 implies the predicted margin of π_λ* equals b, and λ* = 0 that it is at least b.
    """
    margin = 0.001
    _, result, out = run(
        pku_dir,
        tmp_path,
        "pecan",
        *PREFERENCE,
        "can.num_prompts=8",
        "can.samples_per_prompt=4",
        f"dual.constraints=[{{name: safety, margin: {margin}}}]",
        "dual.lam_max=100",  # λ* is about 12 here; the default cap (5) would stop short of the margin
    )
    history = json.loads(out.path("dual.json").read_text())["history"]
    solves = [h for h in history if h["event"] == "solve"]
    lam = result["lambda"]["safety"]
    assert len(solves) == 1 and solves[0]["lam"] == [pytest.approx(lam)] and lam >= 0
    predicted = result["predicted"]["margin"]
    assert predicted == pytest.approx(margin, abs=1e-6) if lam > 1e-8 else predicted >= margin - 1e-9
    assert pq.read_table(out.path("tables", "pecan_samples.parquet")).num_rows == 32
    for stage in ("pecan_helpfulness", "pecan_safety", "pecan_dpo"):
        assert len(out.metrics(stage)) == 3
        causal_lm_state(str(out.checkpoint(stage)))  # loads as a causal LM
    assert result["pairs"] == 24 and result["label_form"] == "theory"


# ---------------------------------------------------------------------------------------------- PeCAID


def test_pecaid_iterates_on_implicit_scores_and_resumes(ray_session, pku_dir, tmp_path):
    """caid.form = preference: DPO_H and DPO_S, 8 prompts × 4 π_ref samples scored by β h, the warm-start solve,
    then 2 × (DPO on the 24 relabelled dataset pairs → on-policy sample scored by β h_g → dual step). θ_0 is
    π_ref, so the first DPO step's loss is log 2. A rerun of the finished job resumes after iteration 2: the
    stages and the iteration checkpoint are reused and nothing trains again."""
    pecaid = (
        *PREFERENCE,
        "caid.form=preference",
        "caid.num_prompts=8",
        "caid.samples_per_prompt=4",
        "caid.iterations=2",
        "dual.rule=projected",
        "dual.constraints=[{name: safety, margin: 0.001}]",
        "dual.lam_max=100",  # β h's scale is the implicit scores'; 5 would cap λ here (as PeCAN's smoke run)
        "checkpoint.every=1",
    )
    _, result, out = run(pku_dir, tmp_path, "caid", *pecaid)
    history = json.loads(out.path("dual.json").read_text())["history"]
    assert [h["event"] for h in history[1:]] == ["solve", "update", "update"]
    assert history[-1]["lam"] == [pytest.approx(result["lambda"]["safety"])]
    records = result["iterations"]
    assert [r["iteration"] for r in records] == [0, 1]
    assert records[1]["lambda"] == records[0]["next_lambda"]
    assert all(math.isfinite(r["slack"][0]) and math.isfinite(r["mean_reward"]) for r in records)
    assert result["final_slack"]["safety"] == records[1]["slack"][0]
    assert pq.read_table(out.path("tables", "pecaid_samples.parquet")).num_rows == 32
    for stage in ("pecaid_helpfulness", "pecaid_safety", "pecaid_dpo_0", "pecaid_dpo_1"):
        assert len(out.metrics(stage)) == 3  # 24 pairs in batches of 8
    assert out.metrics("pecaid_dpo_0")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    final = causal_lm_state(result["checkpoint"])
    assert not changed(final, causal_lm_state(str(out.checkpoint("pecaid_iter_0002"))))
    assert result["pairs"] == 24 and result["label_form"] == "theory"
    assert result["train_seconds"] >= sum(r["train_seconds"] for r in records) - 1e-3  # + π_ref's pass
    _, again, out = run(pku_dir, tmp_path, "caid", *pecaid)
    assert again["resumed_from_iteration"] == 2 and again["iterations"] == records
    assert again["lambda"] == result["lambda"]
    assert len(out.metrics("pecaid_dpo_1")) == 3  # not trained again
