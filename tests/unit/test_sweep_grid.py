"""`--grid` parsing and the points a grid spans (ray_align/sweep/grid.py), and the sweep's plan from a job file
(ray_align/sweep/plan.py): modes, point configs, and every bad input refused before Ray starts."""

from __future__ import annotations

import pytest
from base_job import BASE_JOB

from ray_align.errors import UserError
from ray_align.sweep.grid import expand, parse_axis, parse_grid, short_keys, split_values
from ray_align.sweep.plan import build_plan, lanes_that_fit, sweep_root

MARGIN = "dual.constraints.0.margin"


def test_split_values_keeps_commas_inside_brackets_and_quotes():
    assert split_values("0.05, 0.1,0.2") == ["0.05", "0.1", "0.2"]
    assert split_values("[0.25,0.5],[0.75]") == ["[0.25,0.5]", "[0.75]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert split_values("{x: 1, y: 2},3") == ["{x: 1, y: 2}", "3"]


def test_axis_values_are_read_as_yaml():
    axis = parse_axis(f"{MARGIN}=0.05,1e-1,2")
    assert axis.key == MARGIN
    assert axis.values == (
        0.05,
        "1e-1",
        2,
    )  # YAML 1.1: "1e-1" (no dot) is a string; pydantic converts it later
    assert axis.texts == ("0.05", "1e-1", "2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dual.lr", "expected KEY=V1,V2"),
        ("=0.1,0.2", "expected KEY=V1,V2"),
        ("dual.lr=", "expected KEY=V1,V2"),
        ("dual.lr=0.1,,0.2", "an empty value"),
        ("dual.lr=0.1,0.2,", "an empty value"),
        ("dual.lr=0.1,0.10", "the value 0.10 is listed twice"),
        ("dual.lr=[0.1", "not valid YAML"),
    ],
)
def test_malformed_axes_are_refused(text, message):
    with pytest.raises(UserError, match=message):
        parse_axis(text)


def test_a_grid_needs_an_axis_and_each_key_once():
    with pytest.raises(UserError, match="at least one --grid"):
        parse_grid([])
    with pytest.raises(UserError, match="given twice"):
        parse_grid(["can.beta=0.1,0.2", "can.beta=0.3"])


def test_short_keys_are_the_shortest_distinct_suffixes():
    keys = ["dual.constraints.0.margin", "dual.constraints.1.margin", "can.beta"]
    assert short_keys(keys) == {
        "dual.constraints.0.margin": "0.margin",
        "dual.constraints.1.margin": "1.margin",
        "can.beta": "beta",
    }
    assert short_keys(["a.beta", "b.beta"]) == {"a.beta": "a.beta", "b.beta": "b.beta"}


def test_expand_is_the_product_first_axis_slowest():
    points = expand(parse_grid(["can.beta=0.1,0.2", f"{MARGIN}=0.05,0.1,0.2"]))
    assert [p.name for p in points] == [
        "beta=0.1,margin=0.05",
        "beta=0.1,margin=0.1",
        "beta=0.1,margin=0.2",
        "beta=0.2,margin=0.05",
        "beta=0.2,margin=0.1",
        "beta=0.2,margin=0.2",
    ]
    assert points[4].values == {"can.beta": 0.2, MARGIN: 0.1}
    assert points[4].overrides == ("can.beta=0.2", f"{MARGIN}=0.1")


def test_folder_names_replace_unsafe_characters():
    (point,) = expand(parse_grid(["sacpo.merge_q=[0.5]"]))
    assert point.name == "merge_q=_0.5_"


# ---- the plan ------------------------------------------------------------------------------------------------


def test_margin_grid_on_mocan_shares_the_reference(tmp_path):
    out = tmp_path / "sweep"
    plan = build_plan(BASE_JOB, [f"output_dir={out}"], [f"{MARGIN}=0.05,0.1"])
    assert plan.mode == "shared" and plan.root == out
    assert [p.name for p in plan.points] == ["margin=0.05", "margin=0.1"]
    assert [p.config.dual.constraints[0].margin for p in plan.points] == [0.05, 0.1]
    assert [p.folder for p in plan.points] == [out / "points" / "margin=0.05", out / "points" / "margin=0.1"]
    assert plan.points[0].config.name == "test-margin=0.05"
    assert plan.base.output_dir == str(out / "shared")


def test_a_key_that_changes_the_samples_makes_independent_runs(tmp_path):
    plan = build_plan(BASE_JOB, [f"output_dir={tmp_path}"], ["can.num_prompts=4,8"])
    assert plan.mode == "independent"
    assert "can.num_prompts changes π_ref's scored samples" in plan.reason


def test_iterative_methods_are_independent_runs(tmp_path):
    overrides = [f"output_dir={tmp_path}", "algorithm=caid", "dual.rule=projected"]
    plan = build_plan(BASE_JOB, overrides, ["dual.lr=0.1,0.5"])
    assert plan.mode == "independent" and len(plan.points) == 2


def test_the_sweep_folder_defaults_beside_the_jobs_output_dir():
    plan = build_plan(BASE_JOB, [], [f"{MARGIN}=0.05"])
    assert plan.root.as_posix() == "runs/test-sweep"  # never the job's own run folder, runs/test
    assert sweep_root(plan.points[0].config, ["output_dir=x"]).as_posix() == plan.points[0].config.output_dir


def test_sacpo_q_axis_is_every_points_merge_list(tmp_path):
    overrides = [f"output_dir={tmp_path}", "algorithm=sacpo"]
    plan = build_plan(BASE_JOB, overrides, ["sacpo.merge_q=0.25,0.5,0.75"])
    assert plan.mode == "shared"
    assert [p.name for p in plan.points] == ["merges"]  # one step 2; the merges are the frontier's points
    assert plan.points[0].config.sacpo.merge_q == [0.25, 0.5, 0.75]
    plan = build_plan(BASE_JOB, overrides, ["sacpo.beta_over_lambda=0.01,0.05", "sacpo.merge_q=0.5"])
    assert [p.name for p in plan.points] == ["beta_over_lambda=0.01", "beta_over_lambda=0.05"]
    assert all(p.config.sacpo.merge_q == [0.5] for p in plan.points)


def test_sacpo_with_safety_first_cannot_share_a_beta_over_lambda_grid(tmp_path):
    overrides = [f"output_dir={tmp_path}", "algorithm=sacpo", "sacpo.first=safety"]
    assert build_plan(BASE_JOB, overrides, ["sacpo.beta_over_lambda=0.01,0.05"]).mode == "independent"
    assert build_plan(BASE_JOB, overrides, ["sacpo.beta=0.05,0.1"]).mode == "shared"


@pytest.mark.parametrize(
    ("overrides", "grid", "message"),
    [
        ([], ["dual.constraints.0.margn=0.1,0.2"], "dual.constraints.0.margn: unknown key"),
        ([], ["nonsense.key=1,2"], "nonsense: unknown key"),
        ([], [f"{MARGIN}=0.1,abc"], f"--grid {MARGIN}=abc: {MARGIN}: Input should be a valid number"),
        ([], ["dual.constraints.4.margin=0.1"], "'4' is not an index of a list of 1 items"),
        (["algorithm=dpo"], ["dpo.beta=0.1,0.2"], "algorithm 'dpo' is not supported"),
        ([], ["output_dir=a,b"], "cannot vary output_dir"),
        ([], ["ray.num_cpus=2,4"], "cannot vary ray"),
        ([f"{MARGIN}=0.3"], [f"{MARGIN}=0.1,0.2"], "given both as an override and as --grid"),
        ([], ["sacpo.merge_q=0.5"], "algorithm 'mocan' never reads sacpo.merge_q"),
        (["algorithm=sacpo"], ["sacpo.merge_q=0.5,1.5"], r"every q must lie in \(0, 1\)"),
    ],
)
def test_bad_grids_are_user_errors(tmp_path, overrides, grid, message):
    with pytest.raises(UserError, match=message):
        build_plan(BASE_JOB, [f"output_dir={tmp_path}", *overrides], grid)


def test_pecan_points_need_one_margin(tmp_path):
    threshold = "dual.constraints=[{name: safety, threshold: -0.1}]"
    overrides = [f"output_dir={tmp_path}", "algorithm=pecan", threshold]
    with pytest.raises(UserError, match="point label=hard: PeCAN's implicit scores"):
        build_plan(BASE_JOB, overrides, ["can.label=hard,soft"])


def test_lanes_that_fit_count_whole_placements():
    assert lanes_that_fit({"CPU": 4.9}, {"CPU": 1.0}) == 4
    assert lanes_that_fit({"CPU": 6.0, "GPU": 3.0}, {"CPU": 2.0, "GPU": 2.0}) == 1
    assert lanes_that_fit({"CPU": 6.0}, {"CPU": 2.0, "GPU": 1.0}) == 0  # no GPU left
    assert lanes_that_fit({"CPU": 3.0}, {"CPU": 1.0 / 3}) == 9  # no rounding loss on thirds
