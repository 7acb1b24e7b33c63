"""Bad inputs are refused before anything starts: exit 2, one message naming the problem, no traceback.

Each row of the table builds one bad input in a fresh folder and runs `ray-align check` and/or `ray-align run`
in-process through `ray_align.cli.main`. For `run`, Ray, vLLM and DeepSpeed are made unimportable (an import
would fail the row with a traceback), and the output folder must be left as it was: nothing is written before
the preflight passes. This file: the job file, overrides, roles and model folders; test_bad_inputs_files.py:
datasets, batch sizes, placement and output folders; test_bad_inputs_cli.py: the other subcommands' flags.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ray_align.cli import main

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"
HEAVY = ("ray", "vllm", "deepspeed")
BOTH, RUN = ("check", "run"), ("run",)

NOT_UTF8 = "(a job file with a byte that is not UTF-8)"
BASE = """\
name: bad-input
output_dir: {out}
algorithm: mocan
models: {{tiny: true}}
data: {{eval_fraction: 0.0}}
dual: {{constraints: [{{name: safety, margin: 0.1}}]}}
training: {{batch_size: 8, micro_batch_size: 4}}
"""


def pku_row(i: int, **changes) -> dict:
    row = {
        "prompt": f"prompt {i}",
        "response_0": f"answer zero {i}",
        "response_1": f"answer one {i}",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
        "better_response_id": 0,
        "safer_response_id": 0,
    }
    return {**row, **changes}


def write_rows(path: Path, rows: list, lines: list[str] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(lines))
    return path


def checkpoint(
    folder: Path,
    vocab: dict | None = None,
    *,
    config=True,
    tokenizer=True,
    weights=True,
    tokenizer_config: dict | None = None,
) -> Path:
    """A checkpoint folder as the preflight reads it: config.json, tokenizer files, a weights file."""
    folder.mkdir(parents=True)
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if tokenizer:
        vocab = vocab or {"<pad>": 0, "<s>": 1, "</s>": 2, "a": 3}
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}}))
        settings = (
            {"pad_token": "<pad>", "eos_token": "</s>"} if tokenizer_config is None else tokenizer_config
        )
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    if weights:
        (folder / "model.safetensors").write_bytes(b"\0" * 8)
    return folder


@dataclass
class Job:
    """One bad input: the job text (BASE with edits), the overrides, and the files it needs."""

    tmp: Path
    text: str = ""
    overrides: tuple[str, ...] = ()

    @property
    def out(self) -> Path:
        return self.tmp / "run"


def base(tmp: Path, extra: str = "", *overrides: str) -> Job:
    return Job(tmp, BASE.format(out=tmp / "run") + extra, overrides)


def models(tmp: Path, algorithm: str, lines: str, *overrides: str) -> Job:
    """A job with user checkpoints instead of the tiny family."""
    policy = checkpoint(tmp / "policy")
    text = BASE.format(out=tmp / "run").replace(
        "models: {tiny: true}", f"models:\n  policy: {policy}\n{lines}"
    )
    return Job(tmp, text.replace("algorithm: mocan", f"algorithm: {algorithm}"), overrides)


def file(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def in_run_folder(tmp: Path, files: dict[str, str], *overrides: str) -> Job:
    """The base job, with ``output_dir`` already holding ``files``."""
    (tmp / "run").mkdir()
    for name, text in files.items():
        (tmp / "run" / name).write_text(text)
    return base(tmp, "", *overrides)


def data(tmp: Path, source: Path | str, *overrides: str) -> Job:
    return base(tmp, "", f"data.source={source}", *overrides)


# (name, commands, build(tmp) -> Job, key words of the message)
Case = tuple[str, tuple[str, ...], Callable[[Path], Job], tuple[str, ...]]
CASES: list[Case] = [
    # --- the job file
    ("misspelt key", BOTH, lambda t: base(t, "dual2: {}\n"), ("dual2", "unknown key")),
    ("wrong type", BOTH, lambda t: base(t, "seed: many\n"), ("seed", "integer")),
    ("out of range", BOTH, lambda t: base(t, "dpo: {beta: 0}\n"), ("dpo.beta", "greater than 0")),
    ("NaN in file", BOTH, lambda t: base(t, "can: {beta: .nan}\n"), ("can.beta", "finite")),
    ("inf in file", BOTH, lambda t: base(t, "ppo: {kl_coef: .inf}\n"), ("ppo.kl_coef", "finite")),
    ("empty file", BOTH, lambda t: Job(t, ""), ("empty",)),
    ("comments only", BOTH, lambda t: Job(t, "# nothing yet\n"), ("empty",)),
    (
        "duplicate key",
        BOTH,
        lambda t: base(t, "algorithm: caid\n"),
        ("algorithm", "twice", "line 8"),
    ),
    (
        "duplicate nested key",
        BOTH,
        lambda t: base(t, "can:\n  beta: 0.1\n  beta: 0.2\n"),
        ("beta", "twice"),
    ),
    ("not UTF-8", BOTH, lambda t: Job(t, NOT_UTF8), ("UTF-8",)),
    ("not YAML", BOTH, lambda t: Job(t, "algorithm: [mocan\n"), ("not valid YAML",)),
    ("top level is a list", BOTH, lambda t: Job(t, "- mocan\n"), ("mapping",)),
    # --- overrides
    ("override NaN", BOTH, lambda t: base(t, "", "dual.lr=nan"), ("dual.lr", "finite")),
    (
        "override -inf",
        BOTH,
        lambda t: base(t, "", "dual.constraints.0.margin=-.inf"),
        ("margin", "finite"),
    ),
    (
        "override 1e999",
        BOTH,
        lambda t: base(t, "", "training.lr=1e999"),
        ("training.lr", "finite"),
    ),
    (
        "override unknown key",
        BOTH,
        lambda t: base(t, "", "dual.lrr=1"),
        ("dual.lrr", "unknown key"),
    ),
    ("override malformed", BOTH, lambda t: base(t, "", "dual..lr=3"), ("KEY.PATH=VALUE",)),
    (
        "override bad index",
        BOTH,
        lambda t: base(t, "", "dual.constraints.5.margin=1"),
        ("not an index",),
    ),
    (
        "override duplicate key",
        BOTH,
        lambda t: base(t, "", "dual.constraints.0={name: safety, margin: 1, margin: 2}"),
        ("margin", "twice"),
    ),
    # --- the algorithm's roles
    ("unknown algorithm", BOTH, lambda t: base(t, "", "algorithm=sft"), ("algorithm", "sft")),
    (
        "mocan without reward model",
        BOTH,
        lambda t: models(t, "mocan", f"  costs: [{{name: safety, path: {checkpoint(t / 'cost')}}}]"),
        ("models.reward", "mocan"),
    ),
    (
        "ppo_lag without critic",
        BOTH,
        lambda t: models(
            t,
            "ppo_lag",
            "  reward_function: ray_align.tasks.quickstart:helpfulness\n"
            "  costs: [{name: safety, function: 'ray_align.tasks.quickstart:harm'}]",
            "dual.constraints=[{name: safety, threshold: 0.0}]",
            "ppo.rollout_batch_size=8",
        ),
        ("models.critic", "value models"),
    ),
    (
        "cost_model without a cost model",
        BOTH,
        lambda t: models(t, "cost_model", "", "dual.constraints=[]"),
        ("models.costs", "cost_model"),
    ),
    # --- model folders
    (
        "model path missing",
        BOTH,
        lambda t: base(t, "", "models.policy=/no/such/model"),
        ("models.policy", "no such folder", "/no/such/model"),
    ),
    (
        "model without config.json",
        BOTH,
        lambda t: base(t, "", f"models.policy={checkpoint(t / 'm', config=False)}"),
        ("models.policy", "config.json"),
    ),
    (
        "model without tokenizer",
        BOTH,
        lambda t: base(t, "", f"models.policy={checkpoint(t / 'm', tokenizer=False)}"),
        ("models.policy", "tokenizer"),
    ),
    (
        "model without weights",
        BOTH,
        lambda t: base(t, "", f"models.policy={checkpoint(t / 'm', weights=False)}"),
        ("models.policy", "weights"),
    ),
    (
        "model path is a file",
        BOTH,
        lambda t: base(t, "", f"models.policy={write_rows(t / 'f', [])}"),
        ("models.policy", "is a file"),
    ),
    (
        "reference with another tokenizer",
        BOTH,
        lambda t: models(
            t,
            "mocan",
            f"  reference: {checkpoint(t / 'ref', {'<pad>': 0, 'b': 1})}\n"
            f"  reward: {checkpoint(t / 'rm', {'<pad>': 0, 'b': 1})}\n"
            f"  costs: [{{name: safety, path: {checkpoint(t / 'cost')}}}]",
        ),
        ("models.reference", "tokenizer differs", "share its vocabulary"),
    ),
    (
        "Hub model offline",
        RUN,
        lambda t: base(t, "", "models.policy=someone/some-model"),
        ("models.policy", "someone/some-model", "Hub"),
    ),
    (
        "scorer function not importable",
        BOTH,
        lambda t: base(t, "", "models.reward_function=no_such_module:score"),
        ("reward_function", "cannot import"),
    ),
    (
        "scorer function malformed",
        BOTH,
        lambda t: base(t, "", "models.reward_function=score"),
        ("reward_function", "module:function"),
    ),
    (
        "scorer function missing",
        BOTH,
        lambda t: base(t, "", "models.reward_function=ray_align.labels:nope"),
        ("reward_function", "no function"),
    ),
    (
        "chat template missing",
        BOTH,
        lambda t: base(t, "", f"models.policy={checkpoint(t / 'm')}", "data.template=chat"),
        ("data.template", "chat template"),
    ),
    (
        "neither pad nor eos token",
        BOTH,
        lambda t: base(
            t,
            "",
            f"models.policy={checkpoint(t / 'm', tokenizer_config={'bos_token': '<s>'})}",
            "data.response_eos=false",
        ),
        ("pad_token",),
    ),
]


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def forbid_heavy_imports(monkeypatch) -> None:
    """Importing Ray, vLLM or DeepSpeed fails from here on (None in sys.modules makes `import` raise), the Hub
    is offline and the machine has no GPU, whatever this machine is."""
    for name in HEAVY:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(REPO)  # relative paths in the tables are the repository's


def rows(cases: list[Case]) -> dict:
    """pytest.mark.parametrize arguments: one row per (case, command)."""
    table = [(command, build, words) for name, commands, build, words in cases for command in commands]
    ids = [f"{command}-{name}" for name, commands, _, _ in cases for command in commands]
    return {"argnames": ("command", "build", "words"), "argvalues": table, "ids": ids}


def assert_refused(command: str, job: Job, words: tuple[str, ...], capsys) -> None:
    """Exit 2, an `error:` message with ``words`` and no traceback, and ``output_dir`` left as it was."""
    path = job.tmp / "job.yaml"
    if job.text == NOT_UTF8:
        path.write_bytes(b"algorithm: mocan\nname: \xff\n")
    else:
        path.write_text(job.text)
    before = _snapshot(job.out)
    rc = main([command, str(path), *job.overrides])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in: {err}"
    assert _snapshot(job.out) == before  # nothing written, for check and run alike


@pytest.mark.parametrize(**rows(CASES))
def test_bad_input_exits_2_with_a_message_and_nothing_started(
    command, build, words, tmp_path, capsys, monkeypatch
):
    forbid_heavy_imports(monkeypatch)
    assert_refused(command, build(tmp_path), words, capsys)


def test_check_warns_about_an_unverifiable_hub_source_and_exits_0(tmp_path, capsys, monkeypatch):
    forbid_heavy_imports(monkeypatch)
    job = base(tmp_path, "", "models.policy=someone/some-model", "data.source=someone/some-data")
    path = tmp_path / "job.yaml"
    path.write_text(job.text)
    assert main(["check", str(path), *job.overrides]) == 0
    err = capsys.readouterr().err
    assert "warning: could not verify: models.policy" in err
    assert "warning: could not verify: data.source" in err
