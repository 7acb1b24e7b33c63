"""Evaluation through the real actors, checked against exact expectations on the one-token task.

A short MoCAN run (m = 1) ends with its evaluation of π_ref and the trained policy; both policies' answer
distributions are read exactly from their logits, so E_π[r], E_π[c], the share unsafe and KL(π‖π_ref) are
known. Tolerance: the evaluation averages n samples on each of the X = 3 prompts, so its standard error is
se = sqrt(Σ_x Var_π(·|x)) / (X·sqrt(n)); we allow 4·se (a false alarm about once in 15,000 runs), and check that
the bootstrap interval contains the exact value too. The same run folder carries the report, its plots and the
TensorBoard events; `ray-align eval --prompts` on a CSV with categories gives the per-category rows.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from known_optimum import build_reference, job_config, policy_probs

from actors.launch import run_job
from ray_align.cli import main
from ray_align.tasks import known_optimum as ko

pytestmark = pytest.mark.integration

N_SAMPLES = 400  # per prompt and policy: se of the reward about 0.03 on this task


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    ref = build_reference(tmp_path_factory.mktemp("eval-known-optimum"), 1)
    out = tmp_path_factory.mktemp("eval-run") / "mocan"
    config = job_config(
        ref,
        out,
        "mocan",
        "can.samples_per_prompt=64",
        "training.epochs=30",
        "training.lr=5e-3",
        "training.scheduler=constant",
        "training.batch_size=96",
        "training.micro_batch_size=96",
        "eval.enabled=true",
        f"eval.samples_per_prompt={N_SAMPLES}",
    )
    result = run_job(config)
    return ref, out, result


def exact(ref, path: str) -> dict[str, tuple[float, float]]:
    """{metric: (exact value, 4·se of an n-sample-per-prompt estimate)} for the policy at ``path``."""
    pi = policy_probs(path, ref.prompt_ids)
    r, g = ko.score_tables(ref.task, pi.shape[1], ref.answer_ids)
    c = -g[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where(pi > 0, np.log(pi) - np.log(ref.pi_ref), 0.0)
    tables = {"reward": r, "cost.safety": c, "unsafe.safety": (c > 0).astype(float), "kl": log_ratio}
    out = {}
    for name, table in tables.items():
        mean_x = (pi * table).sum(axis=1)
        var_x = (pi * table**2).sum(axis=1) - mean_x**2
        se = np.sqrt(var_x.clip(0).sum()) / (len(mean_x) * np.sqrt(N_SAMPLES))
        out[name] = (float(mean_x.mean()), float(4 * se + 1e-6))
    return out


def test_estimates_match_exact_expectations(run):
    ref, out, result = run
    summary = json.loads((out / "eval" / "eval.json").read_text())
    for policy, path in (("reference", ref.policy), ("final", result["checkpoint"])):
        metrics = summary["policies"][policy]["metrics"]
        for name, (value, tol) in exact(ref, path).items():
            got = metrics[name]
            assert abs(got["estimate"] - value) <= tol, (policy, name, got, value, tol)
            assert got["low"] - 1e-6 <= value <= got["high"] + 1e-6 or tol < 0.01, (policy, name, got, value)
    # the trained policy moved: its reward and KL differ from π_ref's beyond the noise
    final = summary["policies"]["final"]["metrics"]
    assert final["kl"]["low"] > 0.01
    assert summary["constraints"]["final"][0]["name"] == "safety"


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_run_folder_holds_report_plots_and_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out, _ = run
    report = (out / "report.md").read_text()
    for section in ("## What ran", "## Wall time", "## Before and after", "## Predicted vs achieved"):
        assert section in report
    for name in ("scores", "lambda", "training", "tradeoff"):
        assert f"plots/{name}.png" in report
        assert _png_size(out / "plots" / f"{name}.png") == (640, 400)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"mocan_dpo/loss", "mocan_dpo/accuracy"} <= tags, tags
    assert len(events.Scalars("mocan_dpo/loss")) == len((out / "metrics.jsonl").read_text().splitlines())


def test_eval_command_with_categories(run, tmp_path, capsys):
    ref, out, _ = run
    csv = tmp_path / "redteam.csv"
    rows = [f'{i},"{p}",{"alpha" if i != 1 else "beta"}' for i, p in enumerate(ref.task.prompts)]
    csv.write_text("index,prompt,category\n" + "\n".join(rows) + "\n")
    target = tmp_path / "eval"
    rc = main(["eval", str(out), "--prompts", str(csv), "--samples", "16", "--out", str(target)])
    assert rc == 0
    summary = json.loads((target / "eval.json").read_text())
    assert set(summary["policies"]) == {"reference", "mocan"}
    categories = summary["policies"]["mocan"]["categories"]
    assert set(categories) == {"alpha", "beta"}
    assert categories["beta"]["reward"]["n"] == 1 and categories["alpha"]["reward"]["n"] == 2
    assert "win rate" in capsys.readouterr().out
