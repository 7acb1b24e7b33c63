"""Bad inputs are refused before anything starts: exit 2, one message naming the problem, no traceback.

Each row of the table builds one bad input in a fresh folder and runs `ray-align check` and/or `ray-align run`
in-process through `ray_align.cli.main`. For `run`, Ray, vLLM and DeepSpeed are made unimportable (an import
would fail the row with a traceback), and the output folder must be left as it was: nothing is written before
the preflight passes. Flags of the other subcommands are in test_bad_inputs_cli.py.
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


def checkpoint(folder: Path, vocab: dict | None = None, *, config=True, tokenizer=True, weights=True,
               tokenizer_config: dict | None = None) -> Path:
    """A checkpoint folder as the preflight reads it: config.json, tokenizer files, a weights file."""
    folder.mkdir(parents=True)
    if config:
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if tokenizer:
        vocab = vocab or {"<pad>": 0, "<s>": 1, "</s>": 2, "a": 3}
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}}))
        settings = {"pad_token": "<pad>", "eos_token": "</s>"} if tokenizer_config is None else tokenizer_config
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
    text = BASE.format(out=tmp / "run").replace("models: {tiny: true}", f"models:\n  policy: {policy}\n{lines}")
    return Job(tmp, text.replace("algorithm: mocan", f"algorithm: {algorithm}"), overrides)


def file(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def data(tmp: Path, source: Path | str, *overrides: str) -> Job:
    return base(tmp, "", f"data.source={source}", *overrides)


# (name, commands, build(tmp) -> Job or raw argv tail, key words of the message)
CASES: list[tuple[str, tuple[str, ...], Callable[[Path], Job], tuple[str, ...]]] = [
    # --- the job file
    ("misspelt key", ("check", "run"), lambda t: base(t, "dual2: {}\n"), ("dual2", "unknown key")),
    ("wrong type", ("check", "run"), lambda t: base(t, "seed: many\n"), ("seed", "integer")),
    ("out of range", ("check", "run"), lambda t: base(t, "dpo: {beta: 0}\n"), ("dpo.beta", "greater than 0")),
    ("NaN in file", ("check", "run"), lambda t: base(t, "can: {beta: .nan}\n"), ("can.beta", "finite")),
    ("inf in file", ("check", "run"), lambda t: base(t, "ppo: {kl_coef: .inf}\n"), ("ppo.kl_coef", "finite")),
    ("empty file", ("check", "run"), lambda t: Job(t, ""), ("empty",)),
    ("comments only", ("check", "run"), lambda t: Job(t, "# nothing yet\n"), ("empty",)),
    ("duplicate key", ("check", "run"), lambda t: base(t, "algorithm: caid\n"), ("algorithm", "twice", "line 8")),
    ("duplicate nested key", ("check", "run"), lambda t: base(t, "can:\n  beta: 0.1\n  beta: 0.2\n"),
     ("beta", "twice")),
    ("not UTF-8", ("check", "run"), lambda t: Job(t, "\udcff"), ("UTF-8",)),
    ("not YAML", ("check", "run"), lambda t: Job(t, "algorithm: [mocan\n"), ("not valid YAML",)),
    ("top level is a list", ("check", "run"), lambda t: Job(t, "- mocan\n"), ("mapping",)),
    # --- overrides
    ("override NaN", ("check", "run"), lambda t: base(t, "", "dual.lr=nan"), ("dual.lr", "finite")),
    ("override -inf", ("check", "run"), lambda t: base(t, "", "dual.constraints.0.margin=-.inf"),
     ("margin", "finite")),
    ("override 1e999", ("check", "run"), lambda t: base(t, "", "training.lr=1e999"), ("training.lr", "finite")),
    ("override unknown key", ("check", "run"), lambda t: base(t, "", "dual.lrr=1"), ("dual.lrr", "unknown key")),
    ("override malformed", ("check", "run"), lambda t: base(t, "", "dual..lr=3"), ("KEY.PATH=VALUE",)),
    ("override bad index", ("check", "run"), lambda t: base(t, "", "dual.constraints.5.margin=1"),
     ("not an index",)),
    ("override duplicate key", ("check", "run"),
     lambda t: base(t, "", "dual.constraints.0={name: safety, margin: 1, margin: 2}"), ("margin", "twice")),
    # --- the algorithm's roles
    ("unknown algorithm", ("check", "run"), lambda t: base(t, "", "algorithm=sft"), ("algorithm", "sft")),
    ("mocan without reward model", ("check", "run"),
     lambda t: models(t, "mocan", f"  costs: [{{name: safety, path: {checkpoint(t / 'cost')}}}]"),
     ("models.reward", "mocan")),
    ("ppo_lag without critic", ("check", "run"),
     lambda t: models(t, "ppo_lag", "  reward_function: ray_align.tasks.quickstart:helpfulness\n"
                      "  costs: [{name: safety, function: 'ray_align.tasks.quickstart:harm'}]",
                      "dual.constraints=[{name: safety, threshold: 0.0}]", "ppo.rollout_batch_size=8"),
     ("models.critic", "value models")),
    ("cost_model without a cost model", ("check", "run"), lambda t: models(t, "cost_model", "", "dual.constraints=[]"),
     ("models.costs", "cost_model")),
    # --- model folders
    ("model path missing", ("check", "run"), lambda t: base(t, "", "models.policy=/no/such/model"),
     ("models.policy", "no such folder", "/no/such/model")),
    ("model without config.json", ("check", "run"),
     lambda t: base(t, "", f"models.policy={checkpoint(t / 'm', config=False)}"), ("models.policy", "config.json")),
    ("model without tokenizer", ("check", "run"),
     lambda t: base(t, "", f"models.policy={checkpoint(t / 'm', tokenizer=False)}"), ("models.policy", "tokenizer")),
    ("model without weights", ("check", "run"),
     lambda t: base(t, "", f"models.policy={checkpoint(t / 'm', weights=False)}"), ("models.policy", "weights")),
    ("model path is a file", ("check", "run"), lambda t: base(t, "", f"models.policy={write_rows(t / 'f', [])}"),
     ("models.policy", "is a file")),
    ("scorer with another tokenizer", ("check", "run"),
     lambda t: models(t, "mocan", f"  reward: {checkpoint(t / 'rm', {'<pad>': 0, 'b': 1})}\n"
                      f"  costs: [{{name: safety, path: {checkpoint(t / 'cost')}}}]"),
     ("models.reward", "tokenizer differs", "bridging")),
    ("Hub model offline", ("run",), lambda t: base(t, "", "models.policy=someone/some-model"),
     ("models.policy", "someone/some-model", "Hub")),
    ("scorer function not importable", ("check", "run"),
     lambda t: base(t, "", "models.reward_function=no_such_module:score"), ("reward_function", "cannot import")),
    ("scorer function malformed", ("check", "run"), lambda t: base(t, "", "models.reward_function=score"),
     ("reward_function", "module:function")),
    ("scorer function missing", ("check", "run"),
     lambda t: base(t, "", "models.reward_function=ray_align.labels:nope"), ("reward_function", "no function")),
    ("chat template missing", ("check", "run"),
     lambda t: base(t, "", f"models.policy={checkpoint(t / 'm')}", "data.template=chat"),
     ("data.template", "chat template")),
    ("pad token missing", ("check", "run"),
     lambda t: base(t, "", f"models.policy={checkpoint(t / 'm', tokenizer_config={'eos_token': '</s>'})}"),
     ("pad_token",)),
    # --- datasets
    ("dataset missing", ("check", "run"), lambda t: data(t, t / "nope.jsonl"), ("data.source", "no such file")),
    ("dataset broken line", ("check", "run"),
     lambda t: data(t, write_rows(t / "d.jsonl", [pku_row(0)], ["{broken\n"])), ("row 1", "not valid JSON")),
    ("dataset missing field", ("check", "run"),
     lambda t: data(t, write_rows(t / "d.jsonl", [{k: v for k, v in pku_row(0).items() if k != "response_1"}])),
     ("row 0", "response_1", "data.on_bad_row")),
    ("dataset wrong type", ("check", "run"),
     lambda t: data(t, write_rows(t / "d.jsonl", [pku_row(0, is_response_0_safe="yes")])),
     ("is_response_0_safe",)),
    ("dataset unsupported type", ("check", "run"), lambda t: data(t, write_rows(t / "d.csv", [pku_row(0)])),
     ("unsupported file type",)),
    ("dataset folder empty", ("check", "run"), lambda t: data(t, (t / "empty").mkdir() or t / "empty"),
     ("no .jsonl",)),
    ("dataset not UTF-8", ("check", "run"),
     lambda t: data(t, file(t / "d.jsonl", b'{"prompt": "\xff"}\n')), ("UTF-8",)),
    ("eval split empty", ("check", "run"),
     lambda t: data(t, write_rows(t / "d.jsonl", [pku_row(0)]), "data.eval_fraction=0.5"),
     ("data.eval_fraction", "empty")),
    ("Hub dataset offline", ("run",), lambda t: data(t, "someone/some-data"), ("data.source", "Hub")),
    ("unknown built-in dataset", ("check", "run"), lambda t: data(t, "builtin:nope"), ("built-in",)),
    # --- batch sizes and placement
    ("batch over ranks", ("check", "run"), lambda t: base(t, "", "placement.trainer_ranks=3"),
     ("training.batch_size", "multiple of 3")),
    ("micro larger than batch", ("check", "run"), lambda t: base(t, "", "training.micro_batch_size=16"),
     ("micro_batch_size", "at most 8")),
    ("micro does not divide", ("check", "run"), lambda t: base(t, "", "training.micro_batch_size=3"),
     ("micro_batch_size", "divisor")),
    ("PPO minibatch over rollout", ("check", "run"),
     lambda t: base(t, "", "algorithm=ppo_lag", "dual.constraints=[{name: safety, threshold: 0.0}]",
                    "dual.rule=safe_rlhf", "ppo.rollout_batch_size=4"), ("rollout_batch_size",)),
    ("placement file missing", ("check", "run"), lambda t: base(t, "", "placement.file=clusters/nope.yaml"),
     ("placement.file", "not found")),
    ("placement lacks a role", ("check", "run"),
     lambda t: base(t, "", "algorithm=ppo_lag", "dual.constraints=[{name: safety, threshold: 0.0}]",
                    "dual.rule=safe_rlhf", "ppo.rollout_batch_size=8",
                    f"placement.file={CLUSTERS / 'local_cpu_2ranks.yaml'}"), ("reference", "critic")),
    ("placement file invalid", ("check", "run"),
     lambda t: base(t, "", f"placement.file={file(t / 'p.yaml', 'roles: {judge: {}}')}"),
     ("invalid resources file",)),
    ("placement duplicate key", ("check", "run"),
     lambda t: base(t, "", "placement.file=" + str(file(t / "p.yaml", "strategy: PACK\nstrategy: SPREAD\n"))),
     ("strategy", "twice")),
    ("GPUs on a CPU machine", ("check", "run"), lambda t: base(t, "", f"placement.file={CLUSTERS / 'gpu_8x.yaml'}"),
     ("GPUs", "local_cpu.yaml")),
    ("num_cpus below the bundles", ("check", "run"), lambda t: base(t, "", "ray.num_cpus=1"), ("ray.num_cpus",)),
    ("STRICT_SPREAD on one node", ("check", "run"), lambda t: base(t, "", "placement.strategy=STRICT_SPREAD"),
     ("STRICT_SPREAD",)),
    # --- output folders
    ("output_dir is a file", ("check", "run"),
     lambda t: base(t, "", f"output_dir={write_rows(t / 'f', [])}"), ("output_dir", "is a file")),
    ("output_dir under a file", ("check", "run"),
     lambda t: base(t, "", f"output_dir={write_rows(t / 'f', [])}/run"), ("output_dir", "cannot be created")),
    ("output_dir not a run folder", ("check", "run"),
     lambda t: (t / "run").mkdir() or (t / "run" / "notes.txt").write_text("mine") and base(t),
     ("output_dir", "not empty", "no config.yaml")),
    ("output_dir of another config", ("run",),
     lambda t: (t / "run").mkdir() or (t / "run" / "config.yaml").write_text(BASE.format(out=t / "run"))
     and base(t, "", "dual.lr=0.05"), ("another configuration", "dual.lr", "--overwrite")),
    ("output_dir config unreadable", ("run",),
     lambda t: (t / "run").mkdir() or (t / "run" / "config.yaml").write_text("algorithm: nope\n") and base(t),
     ("config.yaml", "does not load", "--overwrite")),
]


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def no_heavy_imports(monkeypatch):
    """Importing Ray, vLLM or DeepSpeed fails from here on (None in sys.modules makes `import` raise)."""
    for name in HEAVY:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


ROWS = [(name, command, build, words) for name, commands, build, words in CASES for command in commands]


def test_the_table_has_at_least_forty_distinct_inputs():
    assert len({name for name, *_ in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize(("name", "command", "build", "words"), ROWS, ids=[f"{r[1]}-{r[0]}" for r in ROWS])
def test_bad_input_exits_2_with_a_message_and_nothing_started(
    name, command, build, words, tmp_path, capsys, no_heavy_imports, monkeypatch
):
    monkeypatch.chdir(REPO)  # relative paths in the table are the repository's
    job = build(tmp_path)
    path = tmp_path / "job.yaml"
    if job.text == "\udcff":
        path.write_bytes(b"algorithm: mocan\nname: \xff\n")
    else:
        path.write_text(job.text)
    before = _snapshot(job.out)
    rc = main([command, str(path), *job.overrides])
    err = capsys.readouterr().err
    print(err)
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in: {err}"
    assert _snapshot(job.out) == before  # nothing written (for check and run alike)


def test_check_warns_about_an_unverifiable_hub_source_and_exits_0(tmp_path, capsys, no_heavy_imports):
    job = base(tmp_path, "", "models.policy=someone/some-model", "data.source=someone/some-data")
    path = tmp_path / "job.yaml"
    path.write_text(job.text)
    assert main(["check", str(path), *job.overrides]) == 0
    err = capsys.readouterr().err
    assert "warning: could not verify: models.policy" in err and "warning: could not verify: data.source" in err
