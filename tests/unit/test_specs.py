"""Loss specs: batch layout, agreement with the loss functions, hand values, and pickling."""

from __future__ import annotations

import math
import pickle
from dataclasses import FrozenInstanceError

import pytest
import torch

from ray_align.losses import specs
from ray_align.losses.policy import dpo_loss, kto_loss

ALL_SPECS = [
    specs.DPOSpec(beta=0.1, label_smoothing=0.1, loss_type="ipo"),
    specs.KTOSpec(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5),
    specs.PPOSpec(clip_eps=0.2, ptx_coef=16.0),
    specs.SFTSpec(),
    specs.ValueSpec(clip=5.0),
    specs.RewardModelSpec(l2_coef=0.001),
    specs.CostModelSpec(l2_coef=0.001),
]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: type(s).__name__)
def test_specs_are_frozen_picklable_and_declare_their_output(spec):
    assert spec.output in {"logprobs", "values", "scores"}
    clone = pickle.loads(pickle.dumps(spec))
    assert clone == spec and type(clone).output == spec.output
    with pytest.raises(FrozenInstanceError):
        spec.l2_coef = 1.0  # type: ignore[misc]


def test_dpo_spec_hand_value_from_token_logprobs():
    """P = 1: rows [chosen, rejected], response tokens are positions 1..2 of 3.
    chosen log π = −0.4 − 0.6 = −1, rejected = −0.5 − 1.5 = −2 (position 0 is prompt, ignored),
    ref_logps (−1.5, −1.5), β = 0.5: h = 1, loss = log(1 + e^{−0.5}) = 0.474077."""
    outputs = torch.tensor([[-9.0, -0.4, -0.6], [-9.0, -0.5, -1.5]])
    batch = {"response_mask": torch.tensor([[0, 1, 1], [0, 1, 1]]), "ref_logps": torch.tensor([-1.5, -1.5])}
    loss, stats = specs.DPOSpec(beta=0.5)(outputs, batch)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)
    assert stats["accuracy"] == 1.0


def test_dpo_spec_passes_labels_and_rejects_odd_batches():
    """Soft label p = 0.75 equals dpo_loss(..., labels=0.75) = 0.599077 (see test_losses_policy)."""
    outputs = torch.tensor([[-1.0], [-2.0]])
    batch = {
        "response_mask": torch.ones(2, 1),
        "ref_logps": torch.tensor([-1.5, -1.5]),
        "labels": torch.tensor([0.75]),
    }
    loss, _ = specs.DPOSpec(beta=0.5)(outputs, batch)
    assert loss.item() == pytest.approx(0.599077, abs=1e-6)
    with pytest.raises(ValueError):
        specs.DPOSpec(beta=0.5)(
            torch.zeros(3, 1), {"response_mask": torch.ones(3, 1), "ref_logps": torch.zeros(3)}
        )


def test_kto_spec_uses_the_batch_reference_point_it_is_given():
    """z0 = 0.75 comes with the batch (the whole batch's estimate, taken before the step): the loss equals
    kto_loss on the rows with that z0, whatever the rows' own log-ratios (1, −1) would estimate."""
    outputs = torch.tensor([[1.0], [-1.0]])
    batch = {
        "response_mask": torch.ones(2, 1),
        "ref_logps": torch.zeros(2),
        "desirable": torch.tensor([True, False]),
        "kl_estimate": torch.tensor(0.75),
    }
    loss, stats = specs.KTOSpec(beta=1.0, undesirable_weight=2.0)(outputs, batch)
    assert stats["kl"] == pytest.approx(0.75)
    expected, _ = kto_loss(
        outputs[:, 0], torch.zeros(2), batch["desirable"], 1.0, undesirable_weight=2.0, kl_estimate=0.75
    )
    assert loss.item() == pytest.approx(expected.item())


def test_ppo_spec_with_ptx_rows():
    """Row 0 is a rollout at ρ = 1 with A = (1, 3) -> PPO loss −mean(A) = −2; row 1 a PTX row with
    log-probs (−1, −3) -> NLL 2. Total = −2 + 16·2 = 30. Without ptx rows the spec is the plain loss."""
    outputs = torch.tensor([[-0.5, -0.7], [-1.0, -3.0]], requires_grad=True)
    batch = {
        "response_mask": torch.ones(2, 2),
        "old_logprobs": torch.tensor([[-0.5, -0.7], [0.0, 0.0]]),
        "advantages": torch.tensor([[1.0, 3.0], [100.0, 100.0]]),
        "is_ptx": torch.tensor([False, True]),
    }
    loss, stats = specs.PPOSpec(clip_eps=0.2, ptx_coef=16.0)(outputs, batch)
    assert loss.item() == pytest.approx(30.0)
    assert stats["ppo_loss"] == pytest.approx(-2.0) and stats["ptx_loss"] == pytest.approx(2.0)
    loss.backward()
    # d/d logπ: PPO −A/2 on row 0; PTX −16/2 per token on row 1.
    torch.testing.assert_close(outputs.grad, torch.tensor([[-0.5, -1.5], [-8.0, -8.0]]))

    batch["is_ptx"] = torch.tensor([True, True])  # PTX only: 16 · mean(0.5, 0.7, 1, 3) = 16 · 1.3 = 20.8
    loss, stats = specs.PPOSpec(clip_eps=0.2, ptx_coef=16.0)(outputs, batch)
    assert loss.item() == pytest.approx(20.8) and "ppo_loss" not in stats

    batch["is_ptx"] = torch.tensor([False, False])
    loss, stats = specs.PPOSpec(clip_eps=0.2)(outputs, batch)
    assert "ptx_loss" not in stats


def test_sft_and_value_specs():
    """SFT: NLL of the masked tokens (1 + 3)/2 = 2. Value: V = G everywhere -> 0 loss; V − G = 1 with
    V_old = V -> ½·1 = 0.5."""
    mask = torch.tensor([[1, 0, 1]])
    loss, _ = specs.SFTSpec()(torch.tensor([[-1.0, -50.0, -3.0]]), {"response_mask": mask})
    assert loss.item() == pytest.approx(2.0)
    values = torch.tensor([[1.0, 2.0, 3.0]])
    batch = {"response_mask": mask, "old_values": values, "returns": values}
    assert specs.ValueSpec(clip=5.0)(values, batch)[0].item() == 0.0
    batch["returns"] = values - 1.0
    assert specs.ValueSpec(clip=5.0)(values, batch)[0].item() == pytest.approx(0.5)


def test_score_specs_split_rows():
    """Reward: rows [better (2, 0), worse (1, 1)] -> 0.813262 (see test_losses_score).
    Cost: rows [safer (−1), unsafer (2)], is_unsafe (F, T) -> 0.488777."""
    loss, _ = specs.RewardModelSpec()(torch.tensor([2.0, 0.0, 1.0, 1.0]), {})
    assert loss.item() == pytest.approx(0.813262, abs=1e-6)
    loss, stats = specs.CostModelSpec()(torch.tensor([-1.0, 2.0]), {"is_unsafe": torch.tensor([False, True])})
    assert loss.item() == pytest.approx(0.488777, abs=1e-6)
    assert stats["sign_accuracy"] == 1.0


def test_sacpo_step_two_is_dpo_with_the_step_one_policy_as_reference():
    """SACPO step 2 = DPOSpec(β/λ) with ref_logps = the step-1 policy's sums; same as dpo_loss with them."""
    outputs = torch.tensor([[-1.0, -2.0], [-3.0, -1.0]])
    step1 = torch.tensor([-2.5, -3.5])
    batch = {"response_mask": torch.ones(2, 2), "ref_logps": step1}
    loss, _ = specs.DPOSpec(beta=0.1 / 0.25)(outputs, batch)
    expected, _ = dpo_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), step1[:1], step1[1:], 0.4)
    assert loss.item() == pytest.approx(expected.item())
