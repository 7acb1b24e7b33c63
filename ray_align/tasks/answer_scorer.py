"""Scores of the known-optimum task from text, and the answer tokens in a tokenizer.

A response maps to an answer by its text: surrounding whitespace is stripped and the rest must equal one
answer token's text exactly ("<a2>", not "<a2><a2>", not "a2"); anything else, the empty string included, is
out of set and scores (r_out, g_out). The generator's FunctionScorer decodes with special tokens dropped, so
"<a2>" followed by EOS reads "<a2>". A prompt maps to the task prompt it contains (after stripping), so chat
or PKU templates around the prompt are fine; task prompts never contain one another (the task checks this).

Scorers are plain picklable callables ``(prompt: str, response: str) -> float | tuple[float, ...]``: a float
for one head (FunctionScorer returns [n]) and an m-tuple for all constraints at once ([n, m]). Bind any task
with :class:`AnswerScorer`; the module-level ``default_*`` functions are the default task's tables, so a
dotted path such as ``"ray_align.tasks.answer_scorer:default_reward"`` is all an actor needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray_align.tasks.known_optimum import KnownOptimumTask, default_task


def prompt_index(task: KnownOptimumTask, prompt: str) -> int:
    """Index of the task prompt equal to (or contained in) ``prompt``; KeyError when there is not exactly one."""
    text = prompt.strip()
    if text in task.prompts:
        return task.prompts.index(text)
    hits = [i for i, p in enumerate(task.prompts) if p in text]
    if len(hits) != 1:
        raise KeyError(f"prompt {prompt!r} matches {len(hits)} task prompts; expected exactly one")
    return hits[0]


def answer_index(task: KnownOptimumTask, response: str) -> int | None:
    """Index of the answer whose text equals the stripped response; None when out of set."""
    text = response.strip()
    return task.answers.index(text) if text in task.answers else None


def task_reward(task: KnownOptimumTask, prompt: str, response: str) -> float:
    """r(x, y): the task's table for an answer, r_out otherwise."""
    a = answer_index(task, response)
    return task.reward_out if a is None else float(task.reward[prompt_index(task, prompt), a])


def task_utilities(task: KnownOptimumTask, prompt: str, response: str) -> tuple[float, ...]:
    """(g_1, ..., g_m)(x, y): the task's table for an answer, g_out for every constraint otherwise."""
    a = answer_index(task, response)
    if a is None:
        return (task.utility_out,) * task.m
    return tuple(float(v) for v in task.utilities[prompt_index(task, prompt), a])


@dataclass(frozen=True)
class AnswerScorer:
    """A task's tables as a picklable scorer.

    head "reward": r as a float. head "utility" / "cost" (c = −g): all m constraints as a tuple, or only
    constraint ``constraint`` as a float.
    """

    task: KnownOptimumTask
    head: str = "reward"
    constraint: int | None = None

    def __post_init__(self) -> None:
        if self.head not in ("reward", "utility", "cost"):
            raise ValueError(f"head must be 'reward', 'utility' or 'cost', got {self.head!r}")
        if self.constraint is not None and not 0 <= self.constraint < self.task.m:
            raise ValueError(f"constraint {self.constraint} outside 0..{self.task.m - 1}")

    def __call__(self, prompt: str, response: str) -> float | tuple[float, ...]:
        if self.head == "reward":
            return task_reward(self.task, prompt, response)
        sign = -1.0 if self.head == "cost" else 1.0
        values = tuple(sign * v for v in task_utilities(self.task, prompt, response))
        return values if self.constraint is None else values[self.constraint]


# The default task's tables (m = 2 holds m = 1's reward and safety utility, plus humour).
_DEFAULT = default_task(2)


def default_reward(prompt: str, response: str) -> float:
    return task_reward(_DEFAULT, prompt, response)


def default_safety(prompt: str, response: str) -> float:
    """g_1, the only utility of default_task(1)."""
    return task_utilities(_DEFAULT, prompt, response)[0]


def default_safety_cost(prompt: str, response: str) -> float:
    """c_1 = −g_1, for Safe RLHF's cost model."""
    return -default_safety(prompt, response)


def default_utilities(prompt: str, response: str) -> tuple[float, ...]:
    """(g_1, g_2) of default_task(2)."""
    return task_utilities(_DEFAULT, prompt, response)


def default_costs(prompt: str, response: str) -> tuple[float, ...]:
    """(c_1, c_2) = −(g_1, g_2) of default_task(2)."""
    return tuple(-v for v in task_utilities(_DEFAULT, prompt, response))


# ---- the answers as tokens ------------------------------------------------------------------------------


def task_tokenizer_spec(task: KnownOptimumTask, base=None):
    """A TinySpec (``base`` or the default one) whose tokenizer has every answer as one whole-word token."""
    from dataclasses import replace

    from ray_align.models.tiny import TinySpec  # lazy: scorers must not pull in transformers

    return replace(base or TinySpec(), extra_tokens=tuple(task.answers))


def answer_token_ids(tokenizer, task: KnownOptimumTask) -> list[int]:
    """Token id of each answer [A], checked: each answer encodes to one token, with or without the space the
    PKU template puts before a response, and no single token other than the answers decodes to an answer's
    text (so text-level and token-level out-of-set rules agree)."""
    ids = []
    for answer in task.answers:
        encoded = tokenizer.encode(answer, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"answer {answer!r} is {len(encoded)} tokens; build the tokenizer with task_tokenizer_spec"
            )
        spaced = tokenizer.encode(" " + answer, add_special_tokens=False)
        if spaced != encoded:  # the PKU template puts a space before a dataset response
            raise ValueError(
                f"answer {answer!r} after a space is {spaced}, not {encoded}; the answer token must absorb "
                "the space before it (build the tokenizer with task_tokenizer_spec)"
            )
        ids.append(int(encoded[0]))
    decoded = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
    for token_id, text in enumerate(decoded):
        a = answer_index(task, text)
        if a is not None and ids[a] != token_id:
            raise ValueError(f"token {token_id} also decodes to answer {task.answers[a]!r}")
    return ids


def default_humour_cost(prompt: str, response: str) -> float:
    """c_2 = −g_2 of default_task(2), for a second constraint scored on its own."""
    return -task_utilities(_DEFAULT, prompt, response)[1]
