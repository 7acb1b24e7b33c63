"""`ray-align sweep` end to end with the real actors: a four-point MoCAN sweep of the quickstart task's margin
(one π_ref table, four duals, four DPO trainings side by side, one evaluation engine), checked against one
normal `ray-align run` of one of its points; and a SACPO q-sweep on the tests' base job (two trainings, the
merges reuse them).

The sweep is run once per module (about 100 s on the 2-core machine); every check reads its folder.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from base_job import BASE_JOB
from test_report import png_size

from actors.launch import run_job
from ray_align.cli import main
from ray_align.config import load_config
from ray_align.dual.can import solve_dual
from ray_align.dual.table import read_scored_table

pytestmark = pytest.mark.integration

MARGINS = (0.02, 0.04, 0.06, 0.08)  # the quickstart's reachable margins (0.09 is infeasible on its table)
GRID = "dual.constraints.0.margin=" + ",".join(map(str, MARGINS))


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    """(sweep folder, wall seconds) of the four-point quickstart sweep."""
    root = tmp_path_factory.mktemp("sweep") / "quickstart-sweep"
    start = time.perf_counter()
    assert main(["sweep", "--grid", GRID, f"output_dir={root}"]) == 0
    return root, time.perf_counter() - start


def test_index_and_frontier(sweep):
    root, _ = sweep
    doc = json.loads((root / "sweep.json").read_text())
    assert doc["mode"] == "shared" and doc["algorithm"] == "mocan"
    assert [p["name"] for p in doc["points"]] == [f"margin={m}" for m in MARGINS]
    assert all(p["status"] == "done" for p in doc["points"])
    assert doc["timing"]["parallel"] == 4
    frame = pd.read_parquet(root / "points.parquet")
    assert frame["policy"].tolist() == ["final"] * 4
    lam = frame["lambda.harm"].to_numpy()
    assert np.all(np.diff(lam) > 0)  # a larger margin needs a larger λ*
    np.testing.assert_allclose(frame["predicted.margin.harm"], MARGINS, atol=1e-6)  # active constraints
    for metric in ("utility_gain.harm", "reward_gain", "win_rate", "kl"):
        assert (frame[f"{metric}.low"] <= frame[metric]).all() and (
            frame[metric] <= frame[f"{metric}.high"]
        ).all()
    assert frame["pareto"].any()
    assert doc["pareto"] == [p for p, on in zip(frame["point"], frame["pareto"]) if on]
    for name in ("frontier.png", "lambda.png", "win_rates.png"):
        assert png_size(root / name) == (640, 400)
    md = (root / "sweep.md").read_text()
    assert "![trade-off frontier" in md and "| margin=0.04 | done |" in md


def test_one_reference_table_and_one_dual_per_point(sweep):
    root, _ = sweep
    shared = root / "shared" / "tables" / "reference_samples.parquet"
    table, _ = read_scored_table(shared, ["harm"])
    reference_frames = []
    for m in MARGINS:
        point = root / "points" / f"margin={m}"
        assert (point / "tables" / "reference_samples.parquet").read_bytes() == shared.read_bytes()
        result = json.loads((point / "result.json").read_text())
        beta = load_config(point / "config.yaml").can.beta
        assert result["lambda"]["harm"] == pytest.approx(solve_dual(table, beta, margin=[m]).lam[0], rel=1e-9)
        history = json.loads((point / "dual.json").read_text())["history"]
        assert [h["event"] for h in history] == ["init", "solve"]
        stages = {json.loads(line)["stage"] for line in (point / "metrics.jsonl").read_text().splitlines()}
        assert stages == {"mocan_dpo"}
        for name in ("config.yaml", "eval/eval.json", "eval/eval.md", "report.md", "plots/tradeoff.png"):
            assert (point / name).is_file(), name
        samples = pd.read_parquet(point / "eval" / "samples.parquet")
        reference_frames.append(samples[samples["policy"] == "reference"].reset_index(drop=True))
    for frame in reference_frames[1:]:  # π_ref was sampled once and its frame shared
        pd.testing.assert_frame_equal(frame, reference_frames[0])


def test_a_point_is_what_run_computes_and_the_sweep_is_faster(sweep, tmp_path):
    """One point run alone with `run_job` (the sequential alternative): the same λ*, prediction and pair count;
    the whole four-point sweep takes less than four such runs."""
    root, sweep_s = sweep
    point = root / "points" / "margin=0.04"
    config = load_config(point / "config.yaml", [f"output_dir={tmp_path / 'alone'}"])
    start = time.perf_counter()
    alone = run_job(config)
    alone_s = time.perf_counter() - start
    swept = json.loads((point / "result.json").read_text())
    assert alone["lambda"] == swept["lambda"]
    assert alone["predicted_margin"] == swept["predicted_margin"] and alone["pairs"] == swept["pairs"]
    print(f"sweep of 4 points {sweep_s:.1f} s; one run {alone_s:.1f} s (4 runs ≈ {4 * alone_s:.1f} s)")
    assert sweep_s < 4 * alone_s


def test_sacpo_q_sweep_reuses_its_two_policies(ray_session, tmp_path):
    """A q grid is one SACPO point: step 1 in shared/, step 2 in the point, then one merge per q, each evaluated."""
    root = tmp_path / "sacpo-sweep"
    overrides = ["algorithm=sacpo", "eval.enabled=true", "eval.num_prompts=4", "eval.samples_per_prompt=2"]
    args = ["sweep", BASE_JOB, *overrides, f"output_dir={root}", "--grid", "sacpo.merge_q=0.25,0.75"]
    assert main(args) == 0
    point = root / "points" / "merges"
    assert yaml.safe_load((point / "config.yaml").read_text())["sacpo"]["merge_q"] == [0.25, 0.75]
    trained = [p.name for p in (root / "shared" / "stages").glob("*.done")]
    trained += [p.name for p in (point / "stages").glob("sacpo_*.done")]
    assert sorted(trained) == ["sacpo_1_helpfulness.done", "sacpo_2_safety.done"]  # two trainings in all
    result = json.loads((point / "result.json").read_text())
    assert result["checkpoints"]["step1"] == str(root / "shared" / "checkpoints" / "sacpo_1_helpfulness")
    assert sorted(result["checkpoints"]["merged"]) == ["0.25", "0.75"]
    frame = pd.read_parquet(root / "points.parquet")
    assert frame["policy"].tolist() == ["final", "p_sacpo_q0.25", "p_sacpo_q0.75"]
    assert frame["reward_gain"].notna().all()
    # a rerun resumes: both stages are reused, nothing trains again (without the evaluation, which is not part
    # of a run's identity, so no engine starts)
    before = (point / "checkpoints" / "sacpo_2_safety" / "model.safetensors").stat().st_mtime_ns
    assert main([*args, "eval.enabled=false"]) == 0
    assert (point / "checkpoints" / "sacpo_2_safety" / "model.safetensors").stat().st_mtime_ns == before
