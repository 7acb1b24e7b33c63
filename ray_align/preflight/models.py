"""The checkpoints a job loads: every role the algorithm needs has one, each is a checkpoint folder (config,
tokenizer, weights) or a Hub id, and the models that read the policy's tokens share its tokenizer.

Checkpoints of the tiny family (``models.tiny``) are built by the run itself; they are checked only when an
earlier run already built them, for the tokenizer comparison with user checkpoints.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from ray_align.config import JobConfig
from ray_align.models.resolve import tiny_cache_dir
from ray_align.preflight.findings import Findings
from ray_align.preflight.tokenizers import TOKENIZER_FILES, tokenizer_mismatch, tokenizer_setting_problems

_WEIGHT_MARKS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class Checkpoint:
    key: str  # the setting that names it, e.g. models.costs.0.path
    path: str  # a folder or a Hub id
    tiny: bool = False  # built by the run (models.tiny)
    reads_policy_tokens: bool = True


def needed_checkpoints(config: JobConfig, roles: tuple[str, ...], found: Findings) -> list[Checkpoint]:
    """The checkpoints the run will load, the policy first; a role left without one is a problem."""
    m, algorithm = config.models, config.algorithm
    tiny_root = tiny_cache_dir(config.seed)

    def pick(key: str, value: str | None, tiny_name: str, reads: bool = True) -> Checkpoint | None:
        if value:
            return Checkpoint(key, value, reads_policy_tokens=reads)
        if m.tiny:
            return Checkpoint(f"models.tiny ({tiny_name})", str(tiny_root / tiny_name), True, reads)
        return None

    policy = pick("models.policy", m.policy, "policy", reads=False)
    wanted = [policy]
    scores = "scorer" in roles
    # as ray_align.models.resolve: the tiny reward model stands in unless a reward function replaces it
    # reward and cost models get text re-encoded with their own tokenizer when it differs (models/bridge.py)
    reward = pick("models.reward", m.reward, "reward", False) if m.reward or not m.reward_function else None
    cost_paths = [
        Checkpoint(f"models.costs.{j}.path", c.path, reads_policy_tokens=False)
        for j, c in enumerate(m.costs)
        if c.path
    ]
    if not m.costs and m.tiny:
        cost_paths = [Checkpoint("models.tiny (cost)", str(tiny_root / "cost"), True, False)]
    if "reference" in roles or m.reference:
        wanted.append(pick("models.reference", m.reference, "policy") or policy)
    if scores or algorithm == "reward_model":
        if reward is None and not (scores and m.reward_function):
            found.problem(
                f"models.reward: algorithm {algorithm} needs a reward model; set models.reward to a checkpoint"
                + (", or models.reward_function to module:function" if scores else "")
                + ", or models.tiny: true"
            )
        wanted.append(reward)
    if scores:
        wanted += cost_paths
    if algorithm == "cost_model":
        if not cost_paths:
            found.problem("models.costs: algorithm cost_model trains from a cost model; add one with a path")
        wanted += cost_paths[:1]
    if "critic" in roles:
        # a critic starts from a score model but reads the policy's token ids: no bridge there
        critic = pick("models.critic", m.critic, "critic") or _as_critic("models.critic", reward)
        cost_critic = pick("models.cost_critic", m.cost_critic, "critic") or _as_critic(
            "models.cost_critic", next(iter(cost_paths), None)
        )
        for key, value in (("models.critic", critic), ("models.cost_critic", cost_critic)):
            if value is None:
                found.problem(f"{key}: algorithm {algorithm} trains value models; set {key} to a checkpoint")
        wanted += [critic, cost_critic]
    return list({c.path + c.key: c for c in wanted if c is not None}.values())


def _as_critic(key: str, scorer: Checkpoint | None) -> Checkpoint | None:
    if scorer is None:
        return None
    return Checkpoint(f"{key} (= {scorer.key})", scorer.path, scorer.tiny, reads_policy_tokens=True)


def _hub_folder(repo_id: str) -> Path | None:
    """The local snapshot of a Hub model when its config is in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def _folder_problems(key: str, folder: Path) -> list[str]:
    names = {p.name for p in folder.iterdir()}
    problems = []
    if "config.json" not in names:
        problems.append(
            f"{key}: {folder} has no config.json, so it is not a Hugging Face checkpoint folder; save the model "
            "with save_pretrained, or point to the folder that holds config.json"
        )
    else:
        try:
            json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            problems.append(f"{key}: {folder}/config.json cannot be read as JSON ({e}); save the model again")
    if not names & set(TOKENIZER_FILES):
        problems.append(
            f"{key}: {folder} has no tokenizer (tokenizer.json or tokenizer_config.json); save the tokenizer "
            "beside the model (tokenizer.save_pretrained)"
        )
    if not any(mark in name for name in names for mark in _WEIGHT_MARKS):
        problems.append(f"{key}: {folder} has no weights (*.safetensors or *.bin); save the model again")
    return problems


def locate(ck: Checkpoint, found: Findings) -> Path | None:
    """The verified local folder of a checkpoint, or None (with a problem, or unverifiable, or not built yet)."""
    from ray_align.data.pku import _hub_reachable, _looks_like_hub_id

    if ck.tiny:
        folder = Path(ck.path)
        return folder if (folder.parent / "tiny_spec.json").is_file() and folder.is_dir() else None
    path = Path(ck.path).expanduser()
    if path.is_dir():
        problems = _folder_problems(ck.key, path)
        found.problems.extend(problems)
        return None if problems else path
    if path.exists():
        found.problem(f"{ck.key}: {ck.path} is a file; give the checkpoint folder (the one with config.json)")
    elif _looks_like_hub_id(ck.path):
        cached = _hub_folder(ck.path)
        if cached is not None:
            problems = _folder_problems(ck.key, cached)
            found.problems.extend(problems)
            return None if problems else cached
        if not _hub_reachable():
            found.unverified(
                f"{ck.key}: '{ck.path}' is no local folder and, read as a Hugging Face Hub id, is not in the "
                "local cache while the Hub is not reachable (offline or HF_HUB_OFFLINE is set); download it "
                "first, or give a local checkpoint folder"
            )
    else:
        found.problem(
            f"{ck.key}: no such folder: {ck.path}; give a checkpoint folder (config.json, tokenizer, weights) "
            "or a Hub id owner/name"
        )
    return None


def check_function(key: str, spec: str, found: Findings) -> None:
    """A "module:function" scorer: the module imports and the name is a function."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        found.problem(
            f"{key}: '{spec}' is not module:function (for example ray_align.tasks.answer_scorer:score)"
        )
        return
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import failure of the user's module is theirs to fix
        found.problem(f"{key}: cannot import module '{module_name}' ({type(e).__name__}: {e})")
        return
    if not callable(getattr(module, name, None)):
        found.problem(f"{key}: module '{module_name}' has no function '{name}'")


def check_models(config: JobConfig, roles: tuple[str, ...], found: Findings) -> None:
    checkpoints = needed_checkpoints(config, roles, found)
    folders = {ck: locate(ck, found) for ck in checkpoints}
    if "scorer" in roles:
        functions = [("models.reward_function", config.models.reward_function)]
        functions += [(f"models.costs.{j}.function", c.function) for j, c in enumerate(config.models.costs)]
        for key, spec in functions:
            if spec:
                check_function(key, spec, found)
    policy, policy_dir = checkpoints[0], folders[checkpoints[0]]
    if policy_dir is None:
        return
    found.problems.extend(
        tokenizer_setting_problems(
            policy_dir,
            template=config.data.template,
            response_eos=config.data.response_eos,
            trains="trainer" in roles,
            pad_token=config.models.pad_token,
        )
    )
    for ck in checkpoints[1:]:
        folder = folders[ck]
        if folder is None or not ck.reads_policy_tokens or folder == policy_dir:
            continue
        reason = tokenizer_mismatch(policy_dir, folder)
        if reason:
            found.problem(
                f"{ck.key}: its tokenizer differs from the policy's ({policy.key}: {reason}); the reference and "
                "the critics read the policy's token ids and must share its vocabulary (only reward and cost "
                "models are bridged: docs/models.md)"
            )
