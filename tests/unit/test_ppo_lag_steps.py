"""The per-step pieces of PPO-Lagrangian: targets (streams → GAE → Lagrangian advantage) for m = 1 and m = 2
against hand values, token placement of reference log-probs, the prompt schedule, checkpoints, config checks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from actors.coordinator import DualCoordinator, DualRuleSpec
from ray_align.algorithms.ppo_lag import (
    check_config,
    checkpoint_fingerprint,
    dual_estimate,
    dual_updates,
    ppo_epochs,
    resume_point,
)
from ray_align.algorithms.preference import batches
from ray_align.algorithms.rollout import (
    Experience,
    call_all,
    lagrangian_targets,
    latest_checkpoint,
    minibatches,
    prompt_indices,
    ragged_to_tokens,
    sequence_kl,
    with_lambda,
)
from ray_align.algorithms.rollout_source import rollout_sampling
from ray_align.config import JobConfig
from ray_align.config.load import apply_override, parse_override
from ray_align.data.formatting import collate, join_example
from ray_align.dual import rules
from ray_align.run_dir import RunDir

K, GAE_LAMBDA = 0.1, 0.5  # λ_GAE = 0.5 keeps the hand arithmetic short; γ = 1 as in Safe RLHF


def _experience(m: int) -> Experience:
    """Two rollouts, three next-token positions each.

    Row 0: prompt target at t = 0 (masked), response at t = 1, 2. d = log π − log π_ref = (·, 0.5, −1.0).
           R = 2, C_1 = 1, C_2 = −1; V_r = (·, 1.0, 0.5), V_c1 = (·, 0.2, 0.4), V_c2 = 0.
    Row 1: a one-token response at t = 0, right padding after it. d_0 = 0.2; R = 60 and C_1 = −70 are clipped
           to ±50; C_2 = 0; V_r = 3, V_c1 = −1, V_c2 = 0 at t = 0.
    Masked positions hold garbage (9s) that must not leak into any result.
    """
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    logprobs = torch.tensor([[9.0, -1.0, -2.0], [-0.8, 9.0, 9.0]])
    ref = torch.tensor([[-9.0, -1.5, -1.0], [-1.0, -9.0, 9.0]])
    costs = torch.tensor([[1.0, -1.0], [-70.0, 0.0]])[:, :m]
    cost_values = torch.stack(
        [torch.tensor([[9.0, 0.2, 0.4], [-1.0, 9.0, 9.0]]), torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 9.0]])],
        dim=-1,
    )[..., :m]
    batch = {
        "input_ids": torch.zeros(2, 4, dtype=torch.long),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
    }
    return Experience(
        batch=batch | {"response_mask": mask},
        logprobs=logprobs,
        ref_logprobs=ref,
        reward=torch.tensor([2.0, 60.0]),
        costs=costs,
        reward_values=torch.tensor([[9.0, 1.0, 0.5], [3.0, 9.0, 9.0]]),
        cost_values=cost_values,
    )


def _targets(exp: Experience, lam, kl_in_cost: bool = True, whiten: bool = False):
    return lagrangian_targets(
        exp,
        lam,
        kl_coef=K,
        clip_range_score=50.0,
        kl_in_cost=kl_in_cost,
        gamma=1.0,
        gae_lambda=GAE_LAMBDA,
        whiten=whiten,
    )


def test_targets_one_constraint_by_hand():
    """Row 0: reward stream (−k·d_t, +R at the end) = (·, −0.05, 0.1 + 2 = 2.1); cost stream = (·, 0.05, −0.1 + 1 = 0.9).
    GAE (γ = 1, λ_GAE = ½), last token terminal:
        reward: δ_2 = 2.1 − 0.5 = 1.6 = A_2;  δ_1 = −0.05 + 0.5 − 1.0 = −0.55, A_1 = −0.55 + ½·1.6 = 0.25
                returns A + V = (1.25, 2.1)
        cost:   δ_2 = 0.9 − 0.4 = 0.5 = A_2;  δ_1 = 0.05 + 0.4 − 0.2 = 0.25, A_1 = 0.25 + ½·0.5 = 0.5
                returns (0.7, 0.9)
    Row 1 (one token, scores clipped to ±50): reward 50 − 0.02 = 49.98, A = 49.98 − 3 = 46.98;
        cost −50 + 0.02 = −49.98, A = −49.98 + 1 = −48.98.
    λ = 1: A = (A_r − A_c)/2 → row 0 (0, −0.125, 0.55), row 1 (47.98, 0, 0).
    """
    t = _targets(_experience(1), [1.0])
    torch.testing.assert_close(t.advantages, torch.tensor([[0.0, -0.125, 0.55], [47.98, 0.0, 0.0]]))
    torch.testing.assert_close(t.reward_returns, torch.tensor([[0.0, 1.25, 2.1], [49.98, 0.0, 0.0]]))
    torch.testing.assert_close(t.cost_returns[..., 0], torch.tensor([[0.0, 0.7, 0.9], [-49.98, 0.0, 0.0]]))
    torch.testing.assert_close(t.cost_advantages[..., 0], torch.tensor([[0.0, 0.5, 0.5], [-48.98, 0.0, 0.0]]))


def test_targets_two_constraints_by_hand():
    """Second cost stream: row 0 (·, 0.05, −0.1 − 1 = −1.1) with V = 0: A_2 = −1.1, A_1 = 0.05 + ½(−1.1) = −0.5;
    row 1: 0.02 (KL only), A = 0.02. λ = (1, 2): A = (A_r − A_c1 − 2·A_c2)/(1 + 3):
        row 0: (0.25 − 0.5 + 1.0)/4 = 0.1875, (1.6 − 0.5 + 2.2)/4 = 0.825
        row 1: (46.98 + 48.98 − 0.04)/4 = 23.98
    """
    t = _targets(_experience(2), [1.0, 2.0])
    torch.testing.assert_close(t.advantages, torch.tensor([[0.0, 0.1875, 0.825], [23.98, 0.0, 0.0]]))
    torch.testing.assert_close(t.cost_returns[..., 1], torch.tensor([[0.0, -0.5, -1.1], [0.02, 0.0, 0.0]]))
    # the first constraint's stream does not depend on the second
    torch.testing.assert_close(t.cost_returns[..., 0], _targets(_experience(1), [1.0]).cost_returns[..., 0])


def test_targets_with_kl_in_the_reward_stream_only():
    """kl_in_cost=False: cost stream row 0 = (·, 0, 1.0): δ_2 = 1 − 0.4 = 0.6, δ_1 = 0.4 − 0.2 = 0.2,
    A_1 = 0.2 + ½·0.6 = 0.5; row 1 = −50 − (−1) = −49. λ = 1: (−0.125, 0.5) and (46.98 + 49)/2 = 47.99."""
    t = _targets(_experience(1), [1.0], kl_in_cost=False)
    torch.testing.assert_close(t.advantages, torch.tensor([[0.0, -0.125, 0.5], [47.99, 0.0, 0.0]]))


def test_lambda_zero_gives_the_reward_advantage_and_whitening_standardises():
    """λ = 0: A = A_r exactly. whiten: the 3 response tokens of A (−0.125, 0.55, 47.98) get mean 0 and unbiased
    variance 1; padding stays 0; the order of the values is kept."""
    exp = _experience(1)
    t = _targets(exp, [0.0])
    torch.testing.assert_close(t.advantages, t.reward_advantages)
    w = _targets(exp, [1.0], whiten=True).advantages
    on = exp.batch["response_mask"].bool()
    assert w[on].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w[on].var(unbiased=True).item() == pytest.approx(1.0, abs=1e-5)
    assert (w[~on] == 0).all()
    assert w[0, 1] < w[0, 2] < w[1, 0]


def test_sequence_kl_sums_over_the_response():
    """Row 0: 0.5 − 1.0 = −0.5; row 1: 0.2; the mean over rows is −0.15 (garbage at masked positions ignored)."""
    assert sequence_kl(_experience(1)) == pytest.approx(-0.15, abs=1e-6)


def test_minibatches_pick_rows_for_actor_and_each_critic():
    exp = _experience(2)
    t = _targets(exp, [1.0, 2.0])
    actor, critics = minibatches(exp, t, np.array([1]))
    assert set(actor) == {"input_ids", "attention_mask", "response_mask", "old_logprobs", "advantages"}
    torch.testing.assert_close(actor["advantages"], t.advantages[1:2])
    assert len(critics) == 3
    torch.testing.assert_close(critics[0]["returns"], t.reward_returns[1:2])
    torch.testing.assert_close(critics[2]["old_values"], exp.cost_values[1:2, :, 1])
    torch.testing.assert_close(critics[2]["returns"], t.cost_returns[1:2, :, 1])


def test_ragged_reference_logprobs_land_on_the_response_mask():
    """Prompt [5, 6, 7] + response [10, 11]: targets 10, 11 sit at positions 2, 3. Prompt [8] + response
    [12, 13, 14]: positions 0, 1, 2. Width T − 1 = 4."""
    prompts, responses = [[5, 6, 7], [8]], [[10, 11], [12, 13, 14]]
    batch = collate([join_example(p, r) for p, r in zip(prompts, responses)], pad_token_id=0)
    out = ragged_to_tokens([[-1.0, -2.0], [-3.0, -4.0, -5.0]], [3, 1], batch["response_mask"].shape[1])
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, -1.0, -2.0], [-3.0, -4.0, -5.0, 0.0]]))
    torch.testing.assert_close((out != 0).float(), batch["response_mask"])


def test_prompt_schedule_covers_each_epoch_and_depends_only_on_the_step():
    """5 prompts, batches of 3: steps 1–5 read 15 stream items = 3 whole epochs, each a permutation of 0..4."""
    stream = np.concatenate([prompt_indices(5, 3, k, seed=7) for k in range(1, 6)])
    for e in range(3):
        assert sorted(stream[5 * e : 5 * e + 5].tolist()) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(prompt_indices(5, 3, 4, seed=7), stream[9:12])
    assert len({tuple(stream[5 * e : 5 * e + 5]) for e in range(3)}) > 1  # epochs are reshuffled


def test_latest_checkpoint_needs_the_dual_state(tmp_path):
    """step_000003 has no dual.json (interrupted while saving): the newest complete one is step_000002."""
    out = RunDir(tmp_path)
    assert latest_checkpoint(out) is None
    for name, complete in [
        ("step_000001", True),
        ("step_000002", True),
        ("step_000003", False),
        ("other", True),
    ]:
        folder = out.checkpoint(name)
        folder.mkdir(parents=True)
        if complete:
            (folder / "dual.json").write_text("{}")
    assert latest_checkpoint(out) == (2, out.checkpoint("step_000002"))


def _config(*overrides: str) -> JobConfig:
    """A ppo_lag job with the tiny family's one cost model, 'safety' (independent of the built-in job)."""
    tree = {"algorithm": "ppo_lag", "models": {"tiny": True}}
    for text in ["dual.constraints=[{name: safety, threshold: 0.5}]", *overrides]:
        apply_override(tree, *parse_override(text))
    return JobConfig.model_validate(tree)


def test_check_config_returns_thresholds_and_refuses_what_cannot_run():
    np.testing.assert_array_equal(check_config(_config(), ["safety"]), [0.5])
    with pytest.raises(ValueError, match="absolute threshold"):
        check_config(_config("dual.constraints=[{name: safety, margin: 0.1}]"), ["safety"])
    with pytest.raises(ValueError, match=r"dual\.rule"):
        check_config(_config("dual.rule=projected"), ["safety"])
    with pytest.raises(ValueError, match="multiple of"):
        check_config(_config("ppo.rollout_batch_size=12", "training.batch_size=8"), ["safety"])
    with pytest.raises(ValueError, match="missing"):
        check_config(_config(), ["safety", "humor"])


def test_dual_estimate_feeds_the_safe_rlhf_window_per_episode():
    """safe_rlhf takes [n, m] episode costs (threshold 0, lr 0.1, λ_0 = 1, window 4). First update: window (1, 3),
    Ĵ = 2, log λ = 0 + 0.1·2·e^0 = 0.2. Second: the window keeps the last 4 episodes (3, 5, 7, 9), Ĵ = 6,
    log λ = 0.2 + 0.1·6·e^0.2. PID takes the mean cost [m]."""
    costs1, costs2 = np.array([[1.0], [3.0]]), np.array([[5.0], [7.0], [9.0]])
    assert dual_estimate("safe_rlhf", costs1).shape == (2, 1)
    assert dual_estimate("pid", costs2).tolist() == [7.0]
    rule = rules.safe_rlhf_log_lambda(0.1, 1.0, 100.0, 0.0, window=4)
    lam, state = rule.update(rule.init(1), dual_estimate("safe_rlhf", costs1))
    assert np.log(lam[0]) == pytest.approx(0.2)
    lam, _ = rule.update(state, dual_estimate("safe_rlhf", costs2))
    assert np.log(lam[0]) == pytest.approx(0.2 + 0.1 * 6.0 * np.exp(0.2))


def test_rollout_sampling_is_on_policy_with_a_seed_per_step():
    config = _config("generation.temperature=0.7", "generation.top_p=0.9", "generation.seed=3")
    s = rollout_sampling(config, 5)
    assert (s.n, s.temperature, s.top_p, s.seed) == (1, 1.0, 1.0, 8)


def test_call_all_issues_calls_together_and_keeps_their_order():
    # Each call waits for the other at a barrier: only calls that are in flight together get through it.
    barrier = threading.Barrier(3, timeout=10)

    def meet(value):
        barrier.wait()
        return value

    assert call_all([lambda: meet("actor"), lambda: meet("reference"), lambda: meet("critic")]) == [
        "actor",
        "reference",
        "critic",
    ]
    order = []
    assert call_all([lambda: order.append(1) or 1, lambda: order.append(2) or 2], concurrent=False) == [1, 2]
    assert order == [1, 2]


def test_call_all_raises_the_error_of_a_failed_call():
    def fail():
        raise RuntimeError("actor died")

    with pytest.raises(RuntimeError, match="actor died"):
        call_all([lambda: 1, fail])


def _step_checkpoint(out: RunDir, step: int, fingerprint: str | None) -> None:
    folder = out.checkpoint(f"step_{step:06d}")
    folder.mkdir(parents=True)
    if fingerprint is not None:
        (folder / "config_fingerprint").write_text(fingerprint)
    (folder / "dual.json").write_text("{}")


def test_resume_needs_a_checkpoint_of_the_same_settings_and_starts_over_otherwise(tmp_path):
    """As CAID: the newest complete step checkpoint is resumed only when the config's fingerprint matches;
    otherwise (other settings, or no fingerprint recorded) every step checkpoint is deleted and the run starts
    over. ppo.steps is left out of the fingerprint, so a finished run can be extended."""
    config, out = _config(), RunDir(tmp_path)
    _step_checkpoint(out, 1, checkpoint_fingerprint(config))
    _step_checkpoint(out, 2, checkpoint_fingerprint(config))
    assert resume_point(_config("ppo.steps=500"), out) == (2, out.checkpoint("step_000002"))
    assert resume_point(_config("training.lr=3e-5"), out) is None
    assert not out.path("checkpoints", "step_000001").exists() and not out.checkpoint("step_000002").exists()
    _step_checkpoint(out, 3, None)  # written before fingerprints were recorded
    assert resume_point(config, out) is None and not out.checkpoint("step_000003").exists()
    _step_checkpoint(out, 4, checkpoint_fingerprint(config))
    assert resume_point(_config("checkpoint.resume=false"), out) is None


def test_several_lambda_updates_per_rollout_step_again_on_the_filled_window():
    """safe_rlhf, lr 0.1, λ_0 = 1, d = 0, window 8; the rollout's episode costs (1, 3) fill the window (Ĵ = 2) at
    the first of U = 3 updates, the other two step on the same Ĵ (no new episodes), log λ ← log λ + 0.1·2·λ:
        log λ_1 = 0.2,  log λ_2 = 0.2 + 0.2·1.221403 = 0.444281,  log λ_3 = 0.444281 + 0.2·1.559366 = 0.756154.
    The pure rule fed (costs, [], []) gives the same sequence; the coordinator records 3 updates."""
    spec = DualRuleSpec(names=("safety",), rule="safe_rlhf", lam_init=1.0, lam_max=100.0, lr=0.1, window=8)
    coordinator, costs = DualCoordinator(spec), np.array([[1.0], [3.0]])
    lams = dual_updates(coordinator, "safe_rlhf", costs, 3)
    np.testing.assert_allclose(np.log([lam[0] for lam in lams]), [0.2, 0.444281, 0.756154], atol=1e-6)
    rule = rules.safe_rlhf_log_lambda(0.1, 1.0, 100.0, 0.0, window=8)
    state, expected = rule.init(1), []
    for batch in (costs, costs[:0], costs[:0]):
        lam, state = rule.update(state, batch)
        expected.append(lam)
    np.testing.assert_array_equal(lams, expected)
    history = coordinator.history()[1:]
    assert [h["step"] for h in history] == [1, 2, 3] and [h["estimate"] for h in history] == [
        [2.0],
        None,
        None,
    ]
    # one update keeps today's behaviour: a single step on this rollout's costs
    assert np.log(dual_updates(DualCoordinator(spec), "safe_rlhf", costs, 1)[0][0]) == pytest.approx(0.2)


def test_pid_repeats_its_step_on_the_rollout_mean_cost():
    """pid (K_P = K_D = 0, K_I = lr = 0.1, λ_0 = 1, d = 0), J_C = mean(1, 3) = 2 at each of 3 updates:
    λ = 1.2, 1.4, 1.6."""
    spec = DualRuleSpec(names=("safety",), rule="pid", lam_init=1.0, lam_max=5.0, lr=0.1, pid={"kp": 0.0})
    lams = dual_updates(DualCoordinator(spec), "pid", np.array([[1.0], [3.0]]), 3)
    np.testing.assert_allclose([lam[0] for lam in lams], [1.2, 1.4, 1.6])


class _Recorder:
    """A trainer that keeps the batches of its steps."""

    def __init__(self):
        self.batches = []

    def train_step(self, batch, spec):
        self.batches.append(batch)
        return {"loss": 0.0, "grad_norm": 0.0, "lr": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "ratio": 1.0}


def test_each_lambda_serves_its_share_of_the_minibatch_steps_in_order():
    """2 rollouts, minibatches of 1, 2 PPO epochs: 4 actor steps. With U = 2 updates λ = (1, 3) the first two
    steps train on A at λ = 1, the last two on A at λ = 3 (row by row, whatever the shuffle); the critics' returns
    are the same for both."""
    exp = _experience(1)
    per_update = [_targets(exp, [1.0]), with_lambda(_targets(exp, [1.0]), [3.0], exp.batch["response_mask"])]
    torch.testing.assert_close(per_update[1].advantages, _targets(exp, [3.0]).advantages)
    config = _config("ppo.rollout_batch_size=2", "training.batch_size=1", "ppo.ppo_epochs=2")
    actor, critics = _Recorder(), [_Recorder(), _Recorder()]
    ppo_epochs(config, actor, critics, exp, per_update, ["safety"], seed=0, concurrent=False)
    order = batches(2, 1, 2, seed=0)
    assert len(actor.batches) == 4
    for step, (idx, batch) in enumerate(zip(order, actor.batches)):
        torch.testing.assert_close(batch["advantages"], per_update[step // 2].advantages[idx])
        torch.testing.assert_close(critics[0].batches[step]["returns"], per_update[0].reward_returns[idx])


def test_lambda_updates_must_divide_the_optimizer_steps_of_a_rollout():
    """ppo_epochs 2 × rollout 8 / batch 4 = 4 steps: U = 4 (one per step, the reference trainer) and 2 pass, 3 not."""
    base = ("ppo.rollout_batch_size=8", "training.batch_size=4", "ppo.ppo_epochs=2")
    for updates in (1, 2, 4):
        check_config(_config(*base, f"ppo.lambda_updates_per_rollout={updates}"), ["safety"])
    with pytest.raises(ValueError, match="lambda_updates_per_rollout"):
        check_config(_config(*base, "ppo.lambda_updates_per_rollout=3"), ["safety"])
