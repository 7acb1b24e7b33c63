"""The evaluation tables, the figures and the run report (ray_align/report/) on a hand-made run folder."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pandas as pd
import pytest

from ray_align.config.schema import ConstraintConfig, DualConfig, JobConfig
from ray_align.dual.table import read_scored_table, write_scored_table
from ray_align.eval.stats import Estimate
from ray_align.eval.summary import ConstraintTarget, summarize
from ray_align.report.plots import (
    plot_lambda,
    plot_score_distributions,
    plot_tradeoff,
    plot_training,
    training_keys,
)
from ray_align.report.run_report import write_run_report
from ray_align.report.tables import console_table, eval_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which follows the 8-byte signature and the chunk's length and type."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _two_prompt_frame(category: bool = False) -> pd.DataFrame:
    """One sample per prompt. reference: reward 1, 3, cost 1, −1; final: reward 2, 4, cost −1, −1."""
    rows = [
        ("reference", 0, 1.0, 1.0),
        ("reference", 1, 3.0, -1.0),
        ("final", 0, 2.0, -1.0),
        ("final", 1, 4.0, -1.0),
    ]
    frame = pd.DataFrame(rows, columns=["policy", "prompt_id", "reward", "cost.safety"])
    frame["sample"] = 0
    if category:
        frame["category"] = frame["prompt_id"].map({0: "violence", 1: "drug_abuse,weapons"})
    return frame


def _two_prompt_summary(**kwargs) -> dict:
    target = ConstraintTarget("safety", margin=0.5, predicted=0.6)
    return summarize(_two_prompt_frame(**kwargs), constraints=["safety"], targets=[target], n_boot=400)


def test_console_table_has_before_after_numbers_and_the_constraint_line():
    """Two prompts, so each interval spans the two prompt values. reward: reference 2 [1, 3], final 3 [2, 4];
    win rate 1 (final wins both); utility gain = c_ref − c_final = 2, 0 → 1 [0, 2], which contains the margin
    0.5: met within noise. No logp column: no KL row."""
    text = console_table(_two_prompt_summary())
    lines = text.splitlines()
    assert re.match(r"^\s+reference\s+final$", lines[1])
    assert re.search(r"^reward\s+2\.000 \[1\.000, 3\.000\]\s+3\.000 \[2\.000, 4\.000\]$", text, re.M)
    assert re.search(
        r"^mean cost · safety\s+0\.000 \[-1\.000, 1\.000\]\s+-1\.000 \[-1\.000, -1\.000\]$", text, re.M
    )
    assert re.search(
        r"^share unsafe · safety\s+0\.500 \[0\.000, 1\.000\]\s+0\.000 \[0\.000, 0\.000\]$", text, re.M
    )
    assert re.search(r"^win rate \(reward\)\s+—\s+1\.000 \[1\.000, 1\.000\]$", text, re.M)
    assert (
        lines[-1] == "safety: margin ≥ 0.500 · predicted 0.600 · achieved 1.000 [0.000, 2.000] · met within noise"
    )
    assert "KL" not in text and "{" not in text and "estimate" not in text


def test_eval_markdown_tables():
    md = eval_markdown(_two_prompt_summary())
    assert "| metric | reference | final |" in md
    assert "| reward | 2.000 [1.000, 3.000] | 3.000 [2.000, 4.000] |" in md
    assert "| utility gain · safety | — | 1.000 [0.000, 2.000] |" in md
    assert "| reward gain | — | 1.000 [1.000, 1.000] |" in md
    assert "| final | safety | utility gain ≥ 0.500 | 0.600 | 1.000 [0.000, 2.000] | met within noise |" in md
    assert "## Legend" in md and "cost > 0" in md and "400 bootstrap resamples" in md
    assert "## By category" not in md


def test_eval_markdown_by_category():
    md = eval_markdown(_two_prompt_summary(category=True))
    section = md.split("## By category")[1].split("## Legend")[0]
    assert (
        "### reward" in section
        and "### mean cost · safety" in section
        and "### share unsafe · safety" in section
    )
    assert "| drug_abuse,weapons | 3.000 [3.000, 3.000] | 4.000 [4.000, 4.000] |" in section
    assert "| violence | 1.000 [1.000, 1.000] | 2.000 [2.000, 2.000] |" in section


def test_training_keys_pick_reward_cost_kl_and_losses():
    row = {"step": 1, "stage": "ppo_lag", "reward": 0.1, "cost_safety": 0.2, "lambda_safety": 1.0, "kl": 0.01}
    row |= {"actor_loss": 0.3, "cost_critic_safety_loss": 0.4, "step_seconds": 2.0, "lambda": [1.0]}
    assert training_keys([row]) == ["reward", "cost_safety", "kl", "actor_loss"]
    assert training_keys([{"step": 0, "stage": "caid", "mean_reward": 0.5, "slack": [0.1]}]) == [
        "mean_reward"
    ]


def test_plots_skip_missing_input(tmp_path):
    assert plot_score_distributions(None, tmp_path / "a.png") is None
    assert plot_score_distributions(pd.DataFrame(), tmp_path / "a.png") is None
    assert plot_lambda([], ["safety"], tmp_path / "b.png") is None
    assert plot_training([{"step": 0, "stage": "x", "seconds": 1.0}], tmp_path / "c.png") is None
    assert plot_tradeoff(None, 0.1, [1.0], None, tmp_path / "d.png") is None
    assert list(tmp_path.iterdir()) == []


def test_lambda_plot_of_an_iterative_run(tmp_path):
    history = [{"step": 0, "event": "init", "lam": [1.0, 0.5]}]
    history += [{"step": k, "event": "update", "lam": [1.0 + 0.1 * k, 0.5]} for k in range(1, 50)]
    path = plot_lambda(history, ["safety", "humor"], tmp_path / "lambda.png")
    assert path == tmp_path / "lambda.png" and png_size(path) == (640, 400)


# ---------------------------------------------------------------- a fake MoCAN run folder


def _eval_frame(rng: np.random.Generator, n_prompts: int = 20, k: int = 2) -> pd.DataFrame:
    """Reference and final, 20 prompts × 2 samples; the final policy is safer (cost − 1) and slightly better."""
    parts = []
    for policy, shift in (("reference", 0.0), ("final", 1.0)):
        prompt_id = np.repeat(np.arange(n_prompts), k)
        parts.append(
            pd.DataFrame(
                {
                    "policy": policy,
                    "prompt_id": prompt_id,
                    "sample": np.tile(np.arange(k), n_prompts),
                    "prompt": [f"prompt {i}" for i in prompt_id],
                    "response": "a response",
                    "reward": rng.normal(0.5 * shift, 1.0, n_prompts * k),
                    "cost.safety": rng.normal(0.5 - shift, 1.0, n_prompts * k),
                    "logp": -10.0 + shift * rng.uniform(0, 1, n_prompts * k),
                    "ref_logp": -10.0,
                    "tokens": 7,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


@pytest.fixture
def run_folder(tmp_path):
    """metrics.jsonl (one DPO stage and a line cut short by a crash), dual.json (init, then the one-shot solve),
    eval/samples.parquet, and tables/reference_samples.parquet (10 prompts × 4 responses, reward vs safety)."""
    rng = np.random.default_rng(0)
    lines = [
        json.dumps({"step": s, "stage": "mocan_dpo", "loss": 0.69 - 0.05 * s, "accuracy": 0.5})
        for s in range(6)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "sta')
    history = [{"step": 0, "event": "init", "lam": [1.0]}, {"step": 0, "event": "solve", "lam": [0.8]}]
    (tmp_path / "dual.json").write_text(json.dumps({"spec": {}, "state": {}, "history": history}))
    (tmp_path / "eval").mkdir()
    _eval_frame(rng).to_parquet(tmp_path / "eval" / "samples.parquet")
    n, k = 10, 4
    reward = rng.normal(size=n * k)
    safety = -0.5 * reward + rng.normal(size=n * k)
    write_scored_table(
        tmp_path / "tables" / "reference_samples.parquet",
        np.repeat(np.arange(n), k),
        reward,
        {"safety": safety},
    )
    return tmp_path


def _config(root) -> JobConfig:
    return JobConfig(
        name="report-test",
        output_dir=str(root),
        algorithm="mocan",
        dual=DualConfig(constraints=[ConstraintConfig(name="safety", margin=0.5)]),
    )


RESULT = {"lambda": {"safety": 0.8}, "predicted": {"reward": 1.25, "safety": -0.2}, "checkpoint": "c"}
PHASES = {"sample": 1.5, "dual": 0.5, "train": 8.0, "evaluate": 2.0}
PLOT_FILES = ["scores.png", "lambda.png", "training.png", "tradeoff.png"]


def test_run_report_sections_links_and_plots(run_folder):
    frame = pd.read_parquet(run_folder / "eval" / "samples.parquet")
    summary = summarize(
        frame,
        constraints=["safety"],
        targets=[ConstraintTarget("safety", margin=0.5, predicted=0.6)],
        n_boot=200,
    )
    path = write_run_report(
        run_folder, config=_config(run_folder), result=RESULT, summary=summary, phases=PHASES
    )
    assert path == run_folder / "report.md"
    report = path.read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings == [
        "## What ran",
        "## Wall time",
        "## Before and after",
        "## Predicted vs achieved",
        "## Plots",
    ]
    # what ran: algorithm, the bound and λ, the method's settings, seeds, versions (metadata, not imports)
    assert "Algorithm **mocan**" in report and "| safety | utility gain ≥ 0.5 | 0.800 |" in report
    assert "| can.beta | `0.1` |" in report and "| generation.seed | `0` |" in report
    assert re.search(r"\| ray-align \| \d", report)
    # wall time: 12 s in all, training 8 of them
    assert "| train | 8.0 | 67% |" in report and "| **total** | **12.0** |" in report
    # before/after and predicted vs achieved carry the summary's own numbers
    final = summary["policies"]["final"]["metrics"]
    reward_cell = (
        f"{final['reward']['estimate']:.3f} [{final['reward']['low']:.3f}, {final['reward']['high']:.3f}]"
    )
    assert reward_cell in report
    (row,) = summary["constraints"]["final"]
    a = row["achieved"]
    achieved = f"{a['estimate']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"
    assert f"| final | safety | utility gain ≥ 0.500 | 0.600 | {achieved} | {row['status']} |" in report
    assert "predicted E[r] = 1.250" in report
    assert "4 responses each (temperature 1, top-p 1)" in report and "not an unbiased KL" not in report
    # every plot is linked and is a 640 × 400 PNG; no temporary file is left behind
    links = re.findall(r"!\[[^\]]+\]\((plots/[^)]+)\)", report)
    assert links == [f"plots/{name}" for name in PLOT_FILES]
    for link in links:
        assert png_size(run_folder / link) == (640, 400)
    assert sorted(p.name for p in (run_folder / "plots").iterdir()) == sorted(PLOT_FILES)


def test_run_report_without_evaluation(run_folder):
    (run_folder / "eval" / "samples.parquet").unlink()
    report = write_run_report(
        run_folder, config=_config(run_folder), result=RESULT, summary=None, phases={}
    ).read_text()
    assert "No evaluation ran (evaluation disabled, or the algorithm trains no policy)" in report
    assert report.count("No evaluation ran") == 2  # before/after and predicted vs achieved
    assert (
        "plots/scores.png" not in report and "plots/tradeoff.png" in report
    )  # the curve needs no evaluation


def test_tradeoff_curve_passes_through_the_marked_lambda_star(run_folder, tmp_path):
    """Smoke check of the inputs plot_tradeoff takes: a table, β, λ* and the achieved (x, y) estimates."""
    table, _ = read_scored_table(run_folder / "tables" / "reference_samples.parquet", ["safety"])
    achieved = (Estimate(0.3, 0.1, 0.5, 20), Estimate(-0.2, -0.4, 0.0, 20))
    path = plot_tradeoff(table, 0.1, [0.8], achieved, tmp_path / "t.png", name="safety")
    assert png_size(path) == (640, 400)


def test_run_report_in_an_empty_folder_with_tempered_sampling(tmp_path):
    """No metrics, dual history, frame or table: no figure, and the report says so. Sampling at temperature
    0.7 draws from another distribution than π, so the report warns that the KL row is not a KL estimate."""
    config = _config(tmp_path).model_copy(deep=True)
    config.eval.temperature = 0.7
    report = write_run_report(
        tmp_path, config=config, result={}, summary=_two_prompt_summary(), phases={"train": 1.0}
    ).read_text()
    assert "No plot: none of their inputs" in report and not (tmp_path / "plots").exists()
    assert "The KL row is not an unbiased KL estimate" in report
    assert "| reward | 2.000 [1.000, 3.000] | 3.000 [2.000, 4.000] |" in report
    assert "| final | safety | utility gain ≥ 0.500 | 0.600 | 1.000 [0.000, 2.000] | met within noise |" in report
