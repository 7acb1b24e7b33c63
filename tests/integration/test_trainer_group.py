"""TrainerGroup: batch sharding (pure), two ZeRO-3 ranks in step, and the critic and scorer model kinds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from trainer_batches import make_batch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from actors.checkpoint import load_state_dict
from actors.distributed import shard_batch
from actors.train_config import TrainConfig
from ray_align.losses.specs import RewardModelSpec, SFTSpec, ValueSpec

# ---- shard_batch (pure) -------------------------------------------------------------------------------------


def _rows_batch(rows: int) -> dict[str, torch.Tensor]:
    """input_ids row i is [i, i]: a shard's rows can be read off its first column."""
    return {"input_ids": torch.arange(rows)[:, None].repeat(1, 2), "weight": torch.arange(rows) * 10.0}


def test_shard_unpaired_contiguous_blocks():
    """6 rows into 3 shards: rows {0,1}, {2,3}, {4,5}; per-row tensors follow; a 0-dim tensor is shared."""
    batch = _rows_batch(6) | {"beta": torch.tensor(0.1)}
    shards = shard_batch(batch, 3, paired=False)
    assert [s["input_ids"][:, 0].tolist() for s in shards] == [[0, 1], [2, 3], [4, 5]]
    assert [s["weight"].tolist() for s in shards] == [[0.0, 10.0], [20.0, 30.0], [40.0, 50.0]]
    assert all(s["beta"] is batch["beta"] for s in shards)


def test_shard_paired_keeps_each_pair_in_one_shard():
    """8 rows = [c0..c3, r0..r3] into 2 shards: [c0, c1, r0, r1] and [c2, c3, r2, r3] (rows 0,1,4,5 / 2,3,6,7).

    A per-pair tensor [P=4] (soft labels) is cut into pairs {0,1} and {2,3}, matching its shard's pairs.
    """
    batch = _rows_batch(8) | {"labels": torch.tensor([0.5, 1.0, 0.25, 0.0])}
    shards = shard_batch(batch, 2, paired=True)
    assert [s["input_ids"][:, 0].tolist() for s in shards] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert [s["labels"].tolist() for s in shards] == [[0.5, 1.0], [0.25, 0.0]]


def test_shard_one_pair_per_shard():
    """4 rows [c0, c1, r0, r1] into 2 shards (micro-batches of one pair): [c0, r0] and [c1, r1]."""
    shards = shard_batch(_rows_batch(4), 2, paired=True)
    assert [s["input_ids"][:, 0].tolist() for s in shards] == [[0, 2], [1, 3]]


def test_shard_copies_only_its_rows():
    """A shard owns storage of its own size (a view would pickle the whole batch's storage to every rank)."""
    batch = {"input_ids": torch.zeros(8, 16, dtype=torch.long)}
    for paired in (False, True):
        for shard in shard_batch(batch, 4, paired=paired):
            ids = shard["input_ids"]
            assert ids.untyped_storage().nbytes() == ids.numel() * ids.element_size() == 2 * 16 * 8


def test_shard_refuses_uneven_or_misshaped_batches():
    with pytest.raises(ValueError, match="5 rows do not divide evenly into 2"):
        shard_batch(_rows_batch(5), 2, paired=False)
    with pytest.raises(ValueError, match="3 pairs do not divide evenly into 2"):
        shard_batch(_rows_batch(6), 2, paired=True)
    with pytest.raises(ValueError, match="even number of rows"):
        shard_batch(_rows_batch(5), 1, paired=True)
    with pytest.raises(ValueError, match=r"batch\['bad'\] has 3 rows"):
        shard_batch(_rows_batch(4) | {"bad": torch.zeros(3)}, 2, paired=False)


# ---- two ZeRO-3 ranks ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero3_group(ray_session, tiny_models):
    from actors.trainer_group import TrainerGroup

    # persistence threshold 0: every parameter is partitioned (the tiny model's are all below the 1e5 default)
    train = TrainConfig(
        lr=1e-3, zero_stage=3, zero3_persistence_threshold=0, micro_batch_size=2, logprob_chunk_size=4
    )
    group = TrainerGroup(str(tiny_models.policy), "causal_lm", 2, train)
    yield group
    group.shutdown()


@pytest.mark.integration
def test_zero3_ranks_step_on_different_data_and_agree(zero3_group, tiny_models):
    """Rank 0 trains on rows 0-1, rank 1 on rows 2-3 (different random tokens), 5 response tokens each.

    Data parallelism averages the two shard gradients, so both ranks apply the same update: the full weights
    gathered on each rank are bit-identical, and differ from the checkpoint (Adam's first step moves every
    parameter with a nonzero gradient by ≈ lr). With equal token counts per shard, the mean of the two
    shard SFT losses (the reported loss) is the SFT loss of the whole batch at the initial weights.
    """
    import ray

    group = zero3_group
    batch = make_batch([8, 8, 8, 8], T=8, prompt_len=3, seed=0)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    torch.testing.assert_close(group.logprobs(batch), logprobs, atol=1e-5, rtol=0)

    stats = group.train_step(batch, SFTSpec())
    want_loss, _ = SFTSpec()(logprobs, batch)
    assert stats["loss"] == pytest.approx(want_loss.item(), rel=1e-5)

    rank0, rank1 = ray.get([r.full_state_dict.remote(on_every_rank=True) for r in group.ranks])
    initial = load_state_dict(tiny_models.policy)
    assert set(rank0) == set(rank1) == set(initial)
    for name in initial:
        assert torch.equal(rank0[name], rank1[name]), name
        assert (rank0[name] - initial[name]).abs().max() > 5e-4, name
    assert all(torch.equal(v, rank0[k]) for k, v in group.state_dict().items())


# ---- critic and scorer kinds --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def critic_and_scorer(ray_session, tiny_models):
    """A critic (ZeRO-2) and a reward-model trainer (ZeRO-1), one rank each, started side by side."""
    from actors.trainer_group import TrainerGroup

    critic = TrainerGroup(
        str(tiny_models.critic),
        "token_value",
        1,
        TrainConfig(lr=1e-2, zero_stage=2, micro_batch_size=2),
        wait=False,
    )
    scorer = TrainerGroup(
        str(tiny_models.reward),
        "sequence_score",
        1,
        TrainConfig(lr=1e-2, zero_stage=1, micro_batch_size=4),
        wait=False,
    )
    critic.wait_ready()
    scorer.wait_ready()
    yield critic, scorer
    critic.shutdown()
    scorer.shutdown()


@pytest.mark.integration
def test_critic_group_values_and_step(critic_and_scorer, tiny_models):
    """token_value kind (ZeRO-2): values are the token classifier's logits at positions 0..T-2.

    ValueSpec with old_values = V and returns G = V + 1: V_clip = V, so the loss is ½·seqmean((V−G)²) = ½
    exactly. One step with lr 1e-2 moves the values up towards G on the response tokens.
    """
    critic, _ = critic_and_scorer
    batch = make_batch([8, 6], T=8, prompt_len=3, seed=1)
    values = critic.values(batch)
    model = AutoModelForTokenClassification.from_pretrained(tiny_models.critic, dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["response_mask"]
    torch.testing.assert_close(values * mask, logits[:, :-1, 0] * mask, atol=1e-5, rtol=0)

    stats = critic.train_step(batch | {"old_values": values, "returns": values + 1.0}, ValueSpec(clip=0.2))
    assert stats["loss"] == pytest.approx(0.5, rel=1e-5)
    moved = (critic.values(batch) - values) * mask
    assert moved.sum() / mask.sum() > 0


@pytest.mark.integration
def test_scorer_group_scores_and_paired_step(critic_and_scorer, tiny_models):
    """sequence_score kind (ZeRO-1): the head at the last non-pad token, as HF's own pooling picks it.

    Rows [better_0, better_1, worse_0, worse_1] of different lengths (RewardModelSpec.paired); Bradley–Terry
    loss at the initial weights is mean_p −log σ(s_better_p − s_worse_p) from the scores read before the
    step; the step (lr 1e-2) widens the mean margin.
    """
    _, scorer = critic_and_scorer
    batch = make_batch([8, 5, 7, 6], T=8, prompt_len=3, seed=2)
    scores = scorer.scores(batch)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models.reward, dtype=torch.float32)
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(scores, want, atol=1e-5, rtol=0)

    stats = scorer.train_step(batch, RewardModelSpec())
    margin = scores[:2] - scores[2:]
    assert stats["loss"] == pytest.approx(-F.logsigmoid(margin).mean().item(), rel=1e-5)
    after = scorer.scores(batch)
    assert (after[:2] - after[2:]).mean() > margin.mean()
