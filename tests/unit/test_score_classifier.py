"""Sequence classifiers set to the known-optimum task's tables score every (prompt, token) as the table says."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from actors.scorer import SequenceScorer
from ray_align.data.formatting import tokenize_prompt
from ray_align.models.tiny import build_tokenizer
from ray_align.tasks import default_task, score_tables, task_tokenizer_spec
from ray_align.tasks.answer_scorer import answer_token_ids
from ray_align.tasks.score_classifier import build_table_classifier, distinctive_tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    task = default_task(2)
    root = tmp_path_factory.mktemp("table-classifier")
    build_tokenizer(task_tokenizer_spec(task)).save_pretrained(root / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    answers = answer_token_ids(tokenizer, task)
    prompts = [tokenize_prompt(tokenizer, p, template="pku") for p in task.prompts]
    return task, root, tokenizer, answers, prompts


@pytest.mark.parametrize("column", ["reward", "cost_1", "cost_2"])
def test_scores_equal_the_table_on_every_token(setup, column):
    """Every prompt followed by every vocabulary token: the answers score values[x, a] to 2e-7 (float32), all
    other tokens value_out to 3e-6 (a token that is another prompt's distinctive one splits the attention
    between two prompt indicators, which moves the norms by O(1/M²))."""
    task, root, tokenizer, answers, prompts = setup
    r, g = score_tables(task, len(tokenizer), answers)
    table = r if column == "reward" else -g[..., int(column[-1]) - 1]
    values, out = table[:, answers], table[0, np.setdiff1d(np.arange(len(tokenizer)), answers)[0]]
    path = build_table_classifier(root / column, tokenizer, prompts, answers, values, out)
    scorer = SequenceScorer([str(path)], batch_size=256, policy_tokenizer=str(root / "tokenizer"))
    assert scorer.bridged() == [False]
    vocab = list(range(len(tokenizer)))
    got = np.stack([scorer.score([ids] * len(vocab), [[v] for v in vocab]) for ids in prompts])
    np.testing.assert_allclose(got[:, answers], table[:, answers], atol=2e-7, rtol=0)
    np.testing.assert_allclose(got, table, atol=3e-6, rtol=0)


def test_prompts_need_a_token_of_their_own():
    assert distinctive_tokens([[1, 2, 7], [1, 2, 8]], answer_ids=[9]) == [{7}, {8}]
    with pytest.raises(ValueError, match="no other prompt"):
        distinctive_tokens([[1, 2], [1, 2, 8]], answer_ids=[9])
