"""Bad inputs past the job file: datasets, batch sizes and placement, output folders (see test_bad_inputs.py for
the harness: exit 2, the message's key words, no traceback, Ray never imported, nothing written)."""

from __future__ import annotations

import pytest
from test_bad_inputs import (
    BASE,
    BOTH,
    CASES,
    CLUSTERS,
    RUN,
    Case,
    assert_refused,
    base,
    data,
    file,
    forbid_heavy_imports,
    in_run_folder,
    pku_row,
    rows,
    write_rows,
)
from test_bad_inputs_cli import CASES as CLI_CASES

FILE_CASES: list[Case] = [
    # --- datasets
    (
        "dataset missing",
        BOTH,
        lambda t: data(t, t / "nope.jsonl"),
        ("data.source", "no such file"),
    ),
    (
        "dataset broken line",
        BOTH,
        lambda t: data(t, write_rows(t / "d.jsonl", [pku_row(0)], ["{broken\n"])),
        ("row 1", "not valid JSON"),
    ),
    (
        "dataset missing field",
        BOTH,
        lambda t: data(
            t, write_rows(t / "d.jsonl", [{k: v for k, v in pku_row(0).items() if k != "response_1"}])
        ),
        ("row 0", "response_1", "data.on_bad_row"),
    ),
    (
        "dataset wrong type",
        BOTH,
        lambda t: data(t, write_rows(t / "d.jsonl", [pku_row(0, is_response_0_safe="yes")])),
        ("is_response_0_safe",),
    ),
    (
        "dataset unsupported type",
        BOTH,
        lambda t: data(t, write_rows(t / "d.csv", [pku_row(0)])),
        ("unsupported file type",),
    ),
    (
        "dataset folder empty",
        BOTH,
        lambda t: data(t, (t / "empty").mkdir() or t / "empty"),
        ("no .jsonl",),
    ),
    (
        "dataset not UTF-8",
        BOTH,
        lambda t: data(t, file(t / "d.jsonl", b'{"prompt": "\xff"}\n')),
        ("UTF-8",),
    ),
    (
        "eval split empty",
        BOTH,
        lambda t: data(t, write_rows(t / "d.jsonl", [pku_row(0)]), "data.eval_fraction=0.5"),
        ("data.eval_fraction", "empty"),
    ),
    ("Hub dataset offline", RUN, lambda t: data(t, "someone/some-data"), ("data.source", "Hub")),
    ("unknown built-in dataset", BOTH, lambda t: data(t, "builtin:nope"), ("built-in",)),
    # --- batch sizes and placement
    (
        "batch over ranks",
        BOTH,
        lambda t: base(t, "", "placement.trainer_ranks=3"),
        ("training.batch_size", "multiple of 3"),
    ),
    (
        "micro larger than batch",
        BOTH,
        lambda t: base(t, "", "training.micro_batch_size=16"),
        ("micro_batch_size", "at most 8"),
    ),
    (
        "micro does not divide",
        BOTH,
        lambda t: base(t, "", "training.micro_batch_size=3"),
        ("micro_batch_size", "divisor"),
    ),
    (
        "PPO minibatch over rollout",
        BOTH,
        lambda t: base(
            t,
            "",
            "algorithm=ppo_lag",
            "dual.constraints=[{name: safety, threshold: 0.0}]",
            "dual.rule=safe_rlhf",
            "ppo.rollout_batch_size=4",
        ),
        ("rollout_batch_size",),
    ),
    (
        "placement file missing",
        BOTH,
        lambda t: base(t, "", "placement.file=clusters/nope.yaml"),
        ("placement.file", "not found"),
    ),
    (
        "placement lacks a role",
        BOTH,
        lambda t: base(
            t,
            "",
            "algorithm=ppo_lag",
            "dual.constraints=[{name: safety, threshold: 0.0}]",
            "dual.rule=safe_rlhf",
            "ppo.rollout_batch_size=8",
            f"placement.file={CLUSTERS / 'local_cpu_2ranks.yaml'}",
        ),
        ("reference", "critic"),
    ),
    (
        "placement file invalid",
        BOTH,
        lambda t: base(t, "", f"placement.file={file(t / 'p.yaml', 'roles: {judge: {}}')}"),
        ("invalid resources file",),
    ),
    (
        "placement duplicate key",
        BOTH,
        lambda t: base(
            t, "", "placement.file=" + str(file(t / "p.yaml", "strategy: PACK\nstrategy: SPREAD\n"))
        ),
        ("strategy", "twice"),
    ),
    (
        "GPUs on a CPU machine",
        BOTH,
        lambda t: base(t, "", f"placement.file={CLUSTERS / 'gpu_8x.yaml'}"),
        ("GPUs", "local_cpu.yaml"),
    ),
    (
        "num_cpus below the bundles",
        BOTH,
        lambda t: base(t, "", "ray.num_cpus=1"),
        ("ray.num_cpus",),
    ),
    (
        "STRICT_SPREAD on one node",
        BOTH,
        lambda t: base(t, "", "placement.strategy=STRICT_SPREAD"),
        ("STRICT_SPREAD",),
    ),
    # --- output folders
    (
        "output_dir is a file",
        BOTH,
        lambda t: base(t, "", f"output_dir={write_rows(t / 'f', [])}"),
        ("output_dir", "is a file"),
    ),
    (
        "output_dir under a file",
        BOTH,
        lambda t: base(t, "", f"output_dir={write_rows(t / 'f', [])}/run"),
        ("output_dir", "cannot be created"),
    ),
    (
        "output_dir not a run folder",
        BOTH,
        lambda t: in_run_folder(t, {"notes.txt": "mine"}),
        ("output_dir", "not empty", "no config.yaml"),
    ),
    (
        "output_dir of another config",
        RUN,
        lambda t: in_run_folder(t, {"config.yaml": BASE.format(out=t / "run")}, "dual.lr=0.05"),
        ("another configuration", "dual.lr", "--overwrite"),
    ),
    (
        "output_dir config unreadable",
        RUN,
        lambda t: in_run_folder(t, {"config.yaml": "algorithm: nope\n"}),
        ("config.yaml", "does not load", "--overwrite"),
    ),
]


@pytest.mark.parametrize(**rows(FILE_CASES))
def test_bad_input_exits_2_with_a_message_and_nothing_started(
    command, build, words, tmp_path, capsys, monkeypatch
):
    forbid_heavy_imports(monkeypatch)
    assert_refused(command, build(tmp_path), words, capsys)


def test_the_tables_hold_at_least_forty_distinct_bad_inputs():
    names = [name for name, *_ in CASES + FILE_CASES] + [name for name, *_ in CLI_CASES]
    assert len(set(names)) == len(names) >= 40
