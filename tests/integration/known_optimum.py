"""Harness for the known-optimum suite: a reference policy on the one-token task, exact targets, job configs.

The task (ray_align/tasks) answers each prompt with ONE token from a small set, so π_ref is read exactly from
the model's logits and λ*, π* follow in closed form. The reference model is the tiny Llama fine-tuned (plain
torch, a few seconds) towards the task's target distribution; after that its π_ref is read from its logits, so the
optimum does not depend on how good that fine-tuning was.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from base_job import BASE_JOB
from transformers import AutoModelForCausalLM, AutoTokenizer

from ray_align.config import load_config
from ray_align.data.formatting import collate, join_example, tokenize_prompt
from ray_align.losses.logprobs import sequence_logps, token_logprobs
from ray_align.models.tiny import build_tiny_models
from ray_align.tasks import known_optimum as ko
from ray_align.tasks.answer_scorer import answer_token_ids, task_tokenizer_spec

SCORERS = "ray_align.tasks.answer_scorer"
COST_FUNCTIONS = ("default_safety_cost", "default_humour_cost")
NAMES = ("safety", "humour")

# Full-batch DPO on the one-token task, as the dual methods' known-optimum tests train it.
DUAL_DPO = (
    "training.lr=5e-3",
    "training.scheduler=constant",
    "training.batch_size=128",
    "training.micro_batch_size=128",
)


def caid_overrides(samples: int, iterations: int, epochs: int) -> tuple[str, ...]:
    """MoCAID on the one-token task as its known-optimum test runs it (3 prompts, projected dual steps η = 0.5),
    at a size: K samples per prompt, outer iterations, DPO epochs per iteration."""
    return (
        f"caid.samples_per_prompt={samples}",
        "caid.num_prompts=3",
        f"caid.iterations={iterations}",
        f"caid.epochs_per_iteration={epochs}",
        "dual.rule=projected",
        "dual.lr=0.5",
        "dual.lam_max=10",
        *DUAL_DPO,
    )


@dataclass
class Reference:
    """The task's reference model on disk and its exact quantities."""

    task: ko.KnownOptimumTask
    policy: str
    data: str
    answer_ids: list[int]
    prompt_ids: list[list[int]]
    pi_ref: np.ndarray  # [X, V]
    optimum: ko.ExactOptimum


def policy_probs(path: str, prompt_ids: list[list[int]]) -> np.ndarray:
    """π(·|x) [X, V] of the checkpoint at ``path``: softmax of the next-token logits after each prompt."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for ids in prompt_ids:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            rows.append(torch.softmax(logits, -1).numpy())
    return np.stack(rows)


def _fit_reference(policy_dir: Path, task, prompt_ids, answer_ids, steps: int = 600, seed: int = 0) -> None:
    """Supervised fine-tuning towards ``sft_target``: cross-entropy on the answer token, full-batch, Adam.

    600 steps leave about 1e-6 of π_ref's mass outside the answers. That matters: DPO constrains only the
    log-ratios between answers, and the uniform drop of every answer's log-probability it causes moves mass to
    tokens outside the pairs in proportion to what the reference already had there (1e-3 grows to ~0.4).
    """
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    target = torch.tensor(ko.sft_target(task))  # [X, A]
    examples = [join_example(p, [a]) for p in prompt_ids for a in answer_ids]
    batch = collate(examples, tokenizer.pad_token_id)
    weights = target.reshape(-1).float()  # each (x, a) row weighted by its target probability
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than contended ones
    try:
        for _ in range(steps):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps = sequence_logps(
                token_logprobs(logits[:, :-1], batch["input_ids"][:, 1:]), batch["response_mask"]
            )
            loss = -(weights * logps).sum() / len(prompt_ids)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(torch_threads)
    model.save_pretrained(policy_dir, safe_serialization=True)


# m → the models folder of the first reference built for m in this test session. The fit is seeded and
# deterministic, so later references copy that folder instead of fitting again (~10 s each).
_FITTED: dict[int, Path] = {}


def build_reference(root: Path, m: int) -> Reference:
    task = ko.default_task(m)
    if m in _FITTED:
        shutil.copytree(_FITTED[m], root / "models")
    family = build_tiny_models(root / "models", task_tokenizer_spec(task))  # reused when copied
    tokenizer = AutoTokenizer.from_pretrained(family.policy)
    answer_ids = answer_token_ids(tokenizer, task)
    prompt_ids = [tokenize_prompt(tokenizer, p, template="pku") for p in task.prompts]
    if m not in _FITTED:
        _fit_reference(family.policy, task, prompt_ids, answer_ids)
        _FITTED[m] = root / "models"
    pi_ref = policy_probs(str(family.policy), prompt_ids)
    data = root / "task.jsonl"
    with open(data, "w") as f:  # the prompts, in the PKU schema the loaders read (responses unused)
        for prompt in task.prompts:
            f.write(
                json.dumps(
                    {
                        "prompt": prompt,
                        "response_0": task.answers[0],
                        "response_1": task.answers[1],
                        "is_response_0_safe": True,
                        "is_response_1_safe": True,
                        "better_response_id": 0,
                        "safer_response_id": 0,
                    }
                )
                + "\n"
            )
    return Reference(
        task,
        str(family.policy),
        str(data),
        answer_ids,
        prompt_ids,
        pi_ref,
        ko.exact_dual(task, pi_ref, answer_ids),
    )


def cost_thresholds(ref: Reference) -> np.ndarray:
    """d [m] = −τ: the task's constraints E_π g_j ≥ τ_j (τ from π_ref) as Safe RLHF's E_π c_j ≤ d_j, c = −g."""
    return -ko.task_thresholds(ref.task, ref.pi_ref, ref.answer_ids)


def job_config(
    ref: Reference,
    out: Path,
    algorithm: str,
    *extra: str,
    constraint_form: str = "margin",
    critics: bool = False,
):
    """A job on the task: the reference model as policy, the task's tables as reward and cost functions.

    constraint_form "margin": dual.constraints carry the task's margins b_j (CAN/CAID); "threshold": the same
    constraints as absolute cost thresholds d = −τ (:func:`cost_thresholds`, the form PPO-Lagrangian takes).
    critics: models.critic and models.cost_critic are the tiny family's value model (PPO-Lagrangian's critics).
    """
    task = ref.task
    costs = ", ".join(
        f"{{name: {NAMES[j]}, function: '{SCORERS}:{COST_FUNCTIONS[j]}'}}" for j in range(task.m)
    )
    if constraint_form == "margin":
        constraints = ", ".join(f"{{name: {NAMES[j]}, margin: {task.margins[j]}}}" for j in range(task.m))
    elif constraint_form == "threshold":
        d = cost_thresholds(ref)
        constraints = ", ".join(f"{{name: {NAMES[j]}, threshold: {float(d[j])!r}}}" for j in range(task.m))
    else:
        raise ValueError(f"constraint_form must be 'margin' or 'threshold', got {constraint_form!r}")
    critic = Path(ref.policy).parent / "critic"  # build_tiny_models puts the value model beside the policy
    critic_paths = [f"models.critic={critic}", f"models.cost_critic={critic}"] if critics else []
    return load_config(
        BASE_JOB,
        [
            f"algorithm={algorithm}",
            f"output_dir={out}",
            "models.tiny=false",
            f"models.policy={ref.policy}",
            f"models.reward_function={SCORERS}:default_reward",
            f"models.costs=[{costs}]",
            f"data.source={ref.data}",
            "data.eval_fraction=0",
            "data.max_length=64",
            "data.max_prompt_length=48",
            "generation.max_tokens=1",
            "generation.temperature=1.0",
            "generation.top_p=1.0",
            f"dual.constraints=[{constraints}]",
            f"can.beta={task.beta}",
            "can.num_prompts=3",
            "can.pairs=samples",
            "can.label=soft",
            "training.scheduler=cosine",
            "training.warmup_ratio=0",
            "training.grad_clip=10.0",
            *critic_paths,
            *extra,
        ],
    )


def evaluate(ref: Reference, checkpoint: str) -> dict:
    """Exact quantities of a trained checkpoint against the optimum: TV to π* over the whole vocabulary, slack
    of every constraint, and the mass the policy puts outside the answers."""
    pi = policy_probs(checkpoint, ref.prompt_ids)
    _, tv = ko.tv_distance(pi, ref.optimum.pi_star)
    slack = ko.constraint_slack(ref.task, pi, ref.pi_ref, ref.answer_ids)
    outside = 1.0 - pi[:, ref.answer_ids].sum(axis=1)
    return {"tv": float(tv), "slack": np.asarray(slack), "outside": float(outside.max())}


def write_preference_pairs(path: Path, task, n_pair: int, seed: int = 0) -> int:
    """PKU rows for every (prompt, unordered answer pair), n_pair each, with stratified Bradley–Terry labels
    (module doc). Returns the row count."""
    rng = np.random.default_rng(seed)
    g = task.utilities[..., 0]
    rows = []
    for x, prompt in enumerate(task.prompts):
        for a in range(len(task.answers)):
            for b in range(a + 1, len(task.answers)):
                b_wins = {}
                for name, table in (("better", task.reward), ("safer", g)):
                    k = round(n_pair / (1.0 + np.exp(table[x, a] - table[x, b])))
                    b_wins[name] = rng.permutation(np.arange(n_pair) < k)
                swap = rng.random(n_pair) < 0.5
                for i in range(n_pair):
                    y0, y1 = (b, a) if swap[i] else (a, b)
                    rows.append(
                        {
                            "prompt": prompt,
                            "response_0": task.answers[y0],
                            "response_1": task.answers[y1],
                            "is_response_0_safe": bool(g[x, y0] > 0),
                            "is_response_1_safe": bool(g[x, y1] > 0),
                            "better_response_id": int((b if b_wins["better"][i] else a) == y1),
                            "safer_response_id": int((b if b_wins["safer"][i] else a) == y1),
                        }
                    )
    order = rng.permutation(len(rows))
    with open(path, "w") as f:
        f.writelines(json.dumps(rows[i]) + "\n" for i in order)
    return len(rows)
