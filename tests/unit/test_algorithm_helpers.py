"""Pure helpers of the KTO, score-model, SACPO and PeCAN runs, and the dataset cap of load_dataset.

Every expected value is worked out by hand in the test's docstring; nothing here starts Ray.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from base_job import BASE_JOB

from actors.distributed import shard_batch
from ray_align.algorithms.common import load_dataset
from ray_align.algorithms.kto import Singletons, kto_batch, kto_weights, mismatched_partners, reference_point
from ray_align.algorithms.pecan import pecan_margin, sample_pair_rows
from ray_align.algorithms.sacpo import save_merged, step_beta, step_loss, step_order
from ray_align.algorithms.score_models import ScorePairs, held_out_metrics, score_batch
from ray_align.config import load_config
from ray_align.data.formatting import join_example
from ray_align.dual.can import ScoredTable, solve_dual
from ray_align.losses.specs import KTOSpec


def config(*overrides: str):
    return load_config(BASE_JOB, list(overrides))


# ---------------------------------------------------------------------------------------------- load_dataset


def test_max_prompts_keeps_the_first_prompts_in_file_order():
    """The built-in dataset has 16 rows with 16 distinct prompts: a cap of 5 keeps exactly rows 0..4."""
    full, _ = load_dataset(config("data.eval_fraction=0"))
    capped, held_out = load_dataset(config("data.eval_fraction=0", "data.max_prompts=5"))
    assert held_out is None and len(full) == 16
    assert list(capped["prompt"]) == list(full["prompt"])[:5]


# ---------------------------------------------------------------------------------------------- KTO


def test_mismatched_partners_answer_another_prompt():
    """Groups of 1, 2 and 3 rows (n = 6 = 2 × the largest group): σ is a permutation and no row is paired
    inside its own prompt group; the same seed gives the same σ."""
    prompts = ["a", "b", "b", "c", "c", "c"]
    sigma = mismatched_partners(prompts, seed=3)
    assert sorted(sigma.tolist()) == list(range(6))
    assert all(prompts[j] != prompts[i] for i, j in enumerate(sigma))
    assert np.array_equal(sigma, mismatched_partners(prompts, seed=3))


def test_mismatched_partners_refuse_when_a_group_is_too_large():
    """Three rows of one prompt among four: some row must be paired inside its group, so it is refused."""
    with pytest.raises(ValueError, match="kl_estimate"):
        mismatched_partners(["a", "a", "a", "b"], seed=0)


def _example(prompt: list[int], response: list[int]):
    return join_example(prompt, response)


class _TokenIdTrainer:
    """A stand-in policy: every target token t gets log-prob −0.1·t, so a one-token response y has log π = −0.1·y."""

    def logprobs(self, batch):
        return -0.1 * batch["input_ids"][:, 1:].float()


def _singletons(with_partners: bool) -> Singletons:
    """Four singletons (prompt [1], responses 1, 3, 5, 7; desirable, undesirable, desirable, desirable) and their
    partners, the same prompt with responses 2, 4, 6, 8."""
    examples = [_example([1], [y]) for y in (1, 3, 5, 7)]
    partners = [_example([1], [y]) for y in (2, 4, 6, 8)] if with_partners else None
    return Singletons(examples, np.array([True, False, True, True]), partners)


def test_kto_reference_point_is_the_whole_batch_estimate_in_every_micro_batch():
    """z0 over the global batch, taken before the step. Partners: log π = (−0.2, −0.4, −0.6, −0.8), log π_ref =
    (−0.5, −0.5, −0.5, −1.5), ratios (0.3, 0.1, −0.1, 0.7): z0 = max(0, 1.0/4) = 0.25. Two micro-batches of two
    rows each would estimate 0.2 and 0.3 on their own; both now see 0.25 and no partner rows.

    First micro-batch by hand (β = 1, w₊ = 1, w₋ = 2), policy log-probs (0.0, −1.0) against reference (−0.5, −0.5):
    r = (0.5, −0.5); desirable 1 − σ(0.5 − 0.25) = σ(−0.25), undesirable 2·(1 − σ(0.25 + 0.5)) = 2σ(−0.75).
    """
    data, idx = _singletons(with_partners=True), np.arange(4)
    ref, ref_partners = np.full(4, -0.5), np.array([-0.5, -0.5, -0.5, -1.5])
    z0 = reference_point(_TokenIdTrainer(), data, idx, ref, ref_partners, pad_id=0, batch_size=4)
    assert z0 == pytest.approx(0.25)
    batch = kto_batch(data, idx, ref, z0, pad_id=0)
    assert batch["input_ids"].shape[0] == 4 and "kl_row" not in batch
    spec = KTOSpec(beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    outputs = torch.tensor([[0.0], [-1.0]])  # the policy's log-probs of each micro-batch's two rows
    losses = []
    for micro in shard_batch(batch, 2, paired=False):
        loss, stats = spec(outputs, micro)
        assert stats["kl"] == pytest.approx(0.25)
        losses.append(loss.item())
    sigmoid = 1.0 / (1.0 + math.exp(0.25)), 1.0 / (1.0 + math.exp(0.75))  # σ(−0.25), σ(−0.75)
    assert losses[0] == pytest.approx((sigmoid[0] + 2 * sigmoid[1]) / 2, rel=1e-6)


def test_kto_reference_point_without_partners_uses_the_batch_and_is_clamped():
    """kto.kl_estimate batch: the singletons themselves, log π = (−0.1, −0.3, −0.5, −0.7). Against log π_ref = 0
    the mean ratio is −0.4, clamped to z0 = 0; against log π_ref = −0.6 it is 0.2."""
    data, idx = _singletons(with_partners=False), np.arange(4)
    trainer = _TokenIdTrainer()
    assert reference_point(trainer, data, idx, np.zeros(4), None, pad_id=0, batch_size=4) == 0.0
    z0 = reference_point(trainer, data, idx, np.full(4, -0.6), None, pad_id=0, batch_size=4)
    assert z0 == pytest.approx(0.2)


def test_kto_batch_orders_rows_by_index_and_carries_z0():
    data = _singletons(with_partners=True)
    batch = kto_batch(data, np.array([2, 0]), np.array([-1.0, -2.0, -3.0, -4.0]), 0.5, pad_id=0)
    assert batch["ref_logps"].tolist() == [-3.0, -1.0] and batch["desirable"].tolist() == [True, True]
    assert batch["input_ids"][:, 1].tolist() == [5, 1] and batch["kl_estimate"].item() == 0.5


def test_kto_spec_needs_the_batch_reference_point():
    batch = {
        "response_mask": torch.ones(1, 1),
        "ref_logps": torch.zeros(1),
        "desirable": torch.tensor([True]),
    }
    with pytest.raises(ValueError, match="kl_estimate"):
        KTOSpec(beta=1.0)(torch.zeros(1, 1), batch)


def test_kto_weights_default_to_the_class_ratio():
    """3 desirable, 1 undesirable: w₋ = n_desirable / n_undesirable = 3; a configured w₋ is kept."""
    labels = np.array([True, True, True, False])
    assert kto_weights(config(), labels) == (1.0, 3.0)
    assert kto_weights(config("algorithm=kto", "kto.undesirable_weight=0.7"), labels) == (1.0, 0.7)


# ---------------------------------------------------------------------------------------------- score models


def test_held_out_metrics_by_hand():
    """Scores [[2, 1], [0, 3], [−1, 1]] (column 0 the chosen response).

    Reward: chosen higher in pair 0 only → 1/3. Cost (chosen = safer): unsafer higher in pairs 1 and 2 → 2/3;
    labels unsafe [[F, T], [F, T], [F, F]] vs C > 0 [[T, T], [F, T], [F, T]]: agree on 4 of 6; unsafe share 2/6.
    """
    scores = np.array([[2.0, 1.0], [0.0, 3.0], [-1.0, 1.0]])
    assert held_out_metrics(scores, None) == {"accuracy": pytest.approx(1 / 3), "pairs": 3}
    unsafe = np.array([[False, True], [False, True], [False, False]])
    metrics = held_out_metrics(scores, unsafe)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["sign_accuracy"] == pytest.approx(4 / 6)
    assert metrics["unsafe_share"] == pytest.approx(2 / 6)


def test_score_batch_labels_follow_the_row_order():
    """Rows are [safer_0, safer_1, unsafer_0, unsafer_1]; is_unsafe must follow that order."""
    pair = {"chosen": _example([1], [2]), "rejected": _example([1], [3])}
    data = ScorePairs([pair, pair], np.array([[False, True], [True, True]]))
    batch = score_batch(data, [0, 1], pad_id=0)
    assert batch["is_unsafe"].tolist() == [False, True, True, True]
    assert "is_unsafe" not in score_batch(ScorePairs([pair]), [0], pad_id=0)


# ---------------------------------------------------------------------------------------------- SACPO


def test_sacpo_steps_keep_their_coefficients_in_either_order():
    """Helpfulness always uses β, safety β/λ; sacpo.loss is the safety step's loss."""
    default = config("algorithm=sacpo", "sacpo.beta=0.1", "sacpo.beta_over_lambda=0.025", "sacpo.loss=kto")
    swapped = config(
        "algorithm=sacpo", "sacpo.first=safety", "sacpo.beta=0.1", "sacpo.beta_over_lambda=0.025"
    )
    assert step_order(default) == ("helpfulness", "safety")
    assert step_order(swapped) == ("safety", "helpfulness")
    for c in (default, swapped):
        assert step_beta(c, "helpfulness") == 0.1 and step_beta(c, "safety") == 0.025
    assert step_loss(default, "safety") == "kto" and step_loss(default, "helpfulness") == "dpo"


def test_save_merged_writes_the_linear_merge(tiny_models, tmp_path):
    """θ_2 = θ_1 + 1 everywhere, q = 0.25: the merge is θ_1 + 0.25 in every floating tensor; the folder is
    complete (loads with its tokenizer), no temporary folder is left, and a second merge replaces the first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32)
    theta_1 = {k: v.clone() for k, v in first.state_dict().items()}
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)
    first.save_pretrained(tmp_path / "step2")
    target = tmp_path / "merged"
    for q in (0.5, 0.25):
        save_merged(str(tiny_models.policy), str(tmp_path / "step2"), q, target)
    merged = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).state_dict()
    for key, value in theta_1.items():
        torch.testing.assert_close(merged[key], value + 0.25)
    assert AutoTokenizer.from_pretrained(target).pad_token_id is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "step2"]


# ---------------------------------------------------------------------------------------------- PeCAN


def test_pecan_takes_one_margin_constraint():
    assert pecan_margin(config("dual.constraints=[{name: safety, margin: 0.2}]")) == ("safety", 0.2)
    threshold = config("dual.constraints=[{name: safety, threshold: 0.0}]")
    with pytest.raises(ValueError, match="margin"):
        pecan_margin(threshold)
    two = config(
        "models.costs=[{name: a, path: x}, {name: b, path: y}]",
        "dual.constraints=[{name: a, margin: 0.1}, {name: b, margin: 0.1}]",
    )
    with pytest.raises(ValueError, match="m = 1"):
        pecan_margin(two)


def test_sample_pair_rows_pairs_consecutive_samples_of_one_prompt():
    """Prompt index [0, 1, 0, 1, 0, 1]: prompt 0 owns rows 0, 2, 4 and prompt 1 rows 1, 3, 5; three samples
    give one pair each (the odd one out is dropped)."""
    assert sample_pair_rows(np.array([0, 1, 0, 1, 0, 1])).tolist() == [[0, 2], [1, 3]]
    assert sample_pair_rows(np.array([], dtype=int)).shape == (0, 2)


def _implicit_table(seed: int = 0):
    rng = np.random.default_rng(seed)
    h_r, h_g = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    return h_r, h_g, np.ones((6, 8), dtype=bool)


def test_pecan_scaling_equals_the_released_margin_over_beta():
    """The run solves the dual on (r, g) = (β h_r, β h_g) with β and margin b. The exponent is
    (β h_r + λ(β h_g − τ))/β = h_r + λ(h_g − τ/β) with τ/β = Ē_ref h_g + b/β: the released code's dual on
    (h_r, h_g) with temperature 1 and margin b/β. The two λ* agree."""
    h_r, h_g, mask = _implicit_table()
    beta, b = 0.1, 0.02
    ours = solve_dual(ScoredTable(beta * h_r, beta * h_g, mask), beta, margin=b)
    released = solve_dual(ScoredTable(h_r, h_g, mask), 1.0, margin=b / beta)
    assert ours.lam[0] > 0
    np.testing.assert_allclose(ours.lam, released.lam, rtol=1e-6)


def test_pecan_margin_is_blind_to_per_prompt_log_z():
    """h_g is known only up to −log Z_S(x) per prompt (likewise h_r). With a margin, τ = Ē_ref g + b moves with
    the mean offset and each prompt's offset cancels in its own softmax, so λ* is unchanged."""
    h_r, h_g, mask = _implicit_table(1)
    beta, b = 0.1, 0.02
    offsets = np.random.default_rng(7).normal(scale=5.0, size=(6, 1))
    base = solve_dual(ScoredTable(beta * h_r, beta * h_g, mask), beta, margin=b)
    shifted = solve_dual(ScoredTable(beta * (h_r - offsets), beta * (h_g + offsets), mask), beta, margin=b)
    np.testing.assert_allclose(base.lam, shifted.lam, rtol=1e-6)
