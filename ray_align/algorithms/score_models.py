"""Score models as in Safe RLHF (Dai et al. 2024): a reward model and a cost model trained on PKU pairs.

    reward_model   Bradley–Terry on helpfulness pairs:  −log σ(R(y_better) − R(y_worse))
    cost_model     on safety pairs:  −log σ(C_unsafer − C_safer) − log σ(s_safer C_safer) − log σ(s_unsafer C_unsafer)
                   s = +1 for a response labelled unsafe, −1 for a safe one, so C > 0 means unsafe
both with a small L2 on the scores (the Safe RLHF scripts' regularisation 0.001). Score = the head's output at
the last non-pad token (a "sequence_score" trainer).

1. load the dataset, split by prompt into train / eval; the pairs of the model's preference, tokenised
2. start a "sequence_score" trainer from the initial score model (models.reward, or the first cost model)
3. held-out accuracy before training: the baseline of this initialisation
4. epochs of the pair loss (RewardModelSpec / CostModelSpec) on shuffled batches of pairs
5. held-out accuracy (cost model: and sign accuracy) from trainer.scores; save the Hugging Face checkpoint
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoTokenizer

from ray_align.algorithms.common import load_dataset, tokenize_options
from ray_align.algorithms.preference import Pair, batches, steps_for
from ray_align.algorithms.stages import finished_stage, record_stage
from ray_align.cluster import Cluster, PolicyTrainer
from ray_align.config.schema import JobConfig
from ray_align.data import collate_pairs, helpfulness_pairs, safety_pairs, tokenize_pairs, tokenizer_pad_id
from ray_align.losses.specs import CostModelSpec, RewardModelSpec
from ray_align.models.bridge import reads_text_pairs, text_pair_examples
from ray_align.models.resolve import resolve_models
from ray_align.run_dir import RunDir

ROLES = ("trainer",)

# Safe RLHF's reward-model.sh / cost-model.sh pass --regularization 0.001: l2_coef · mean(score²) pins the
# free offset of the scores (Bradley–Terry sees differences only).
SCORE_L2 = 0.001


@dataclass
class ScorePairs:
    """Tokenised pairs, chosen = better (reward) or safer (cost); ``is_unsafe`` [P, 2] bool for the cost model
    (column 0 the chosen/safer response's own label, column 1 the rejected/unsafer one's), else None."""

    pairs: list[Pair]
    is_unsafe: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pairs)


def score_pairs(ds, cost: bool, tokenizer, config: JobConfig) -> ScorePairs:
    """Helpfulness pairs for the reward model, safety pairs with their safety labels for the cost model."""
    view = safety_pairs(ds) if cost else helpfulness_pairs(ds)
    # an encoder is trained on the text pairs the scorer's bridge gives it (ray_align/models/bridge.py)
    if reads_text_pairs(tokenizer):
        pairs = text_pair_examples(view, tokenizer, config.data.max_length)
    else:
        pairs = tokenize_pairs(view, tokenizer, **tokenize_options(config))
    if not cost:
        return ScorePairs(pairs)
    safe = np.stack([list(view["chosen_is_safe"]), list(view["rejected_is_safe"])], axis=1).astype(bool)
    return ScorePairs(pairs, ~safe)


def score_batch(data: ScorePairs, idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows [chosen_0..chosen_{P-1}, rejected_0..rejected_{P-1}] and, for the cost model, is_unsafe [2P]."""
    batch = collate_pairs([data.pairs[i] for i in idx], pad_id)
    if data.is_unsafe is not None:
        labels = data.is_unsafe[np.asarray(idx)]
        batch["is_unsafe"] = torch.from_numpy(np.concatenate([labels[:, 0], labels[:, 1]]))
    return batch


def pair_scores(trainer: PolicyTrainer, data: ScorePairs, pad_id: int, batch_size: int) -> np.ndarray:
    """Scores of (chosen, rejected) under the trainer's current weights: [P, 2]."""
    out = []
    for start in range(0, len(data), batch_size):
        batch = collate_pairs(data.pairs[start : start + batch_size], pad_id)
        scores = trainer.scores(batch).double().numpy()
        half = scores.shape[0] // 2
        out.append(np.stack([scores[:half], scores[half:]], axis=1))
    return np.concatenate(out, axis=0)


def held_out_metrics(scores: np.ndarray, is_unsafe: np.ndarray | None) -> dict[str, float]:
    """Accuracy of scores [P, 2] (column 0 the chosen response) on held-out pairs.

    Reward model (is_unsafe None): accuracy = share with R(better) > R(worse).
    Cost model: accuracy = share with C(unsafer) > C(safer); sign_accuracy = share of the 2P responses with
    C > 0 exactly when labelled unsafe; unsafe_share = that labelling's base rate (the all-"unsafe" guess).
    """
    if is_unsafe is None:
        return {"accuracy": float((scores[:, 0] > scores[:, 1]).mean()), "pairs": len(scores)}
    return {
        "accuracy": float((scores[:, 1] > scores[:, 0]).mean()),
        "sign_accuracy": float(((scores > 0) == is_unsafe).mean()),
        "unsafe_share": float(is_unsafe.mean()),
        "pairs": len(scores),
    }


def initial_model(config: JobConfig, cost: bool) -> str:
    """models.reward, or the first cost model with a path (the tiny family's when models.tiny)."""
    models = resolve_models(config.models, seed=config.seed)
    path = next((c.path for c in models.constraints if c.path), None) if cost else models.reward
    if path is None:
        kind = "a cost model path in models.costs" if cost else "models.reward"
        raise ValueError(
            f"{config.algorithm} starts from a score model checkpoint: set {kind} (or models.tiny)"
        )
    return path


def train_score_model(
    config: JobConfig, trainer: PolicyTrainer, data: ScorePairs, pad_id: int, out: RunDir, stage: str
) -> list[dict[str, float]]:
    """Step 4: the pair loss over ``config.training.epochs`` shuffled passes; one metrics line per step."""
    t = config.training
    spec = (
        CostModelSpec(l2_coef=SCORE_L2) if data.is_unsafe is not None else RewardModelSpec(l2_coef=SCORE_L2)
    )
    history = []
    for step, idx in enumerate(batches(len(data), t.batch_size, t.epochs, config.seed)):
        stats = trainer.train_step(score_batch(data, idx, pad_id), spec)
        out.log_metrics(step, stage, stats)
        history.append(stats)
    return history


def run(config: JobConfig, cluster: Cluster, out: RunDir) -> dict:
    cost = config.algorithm == "cost_model"
    stage = config.algorithm
    if done := finished_stage(config, out, stage):  # an earlier attempt of this job finished
        checkpoint, result = done
        return {"checkpoint": checkpoint, **result}
    t = config.training
    # 1. pairs
    train_ds, eval_ds = load_dataset(config)
    path = initial_model(config, cost)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pad_id = tokenizer_pad_id(tokenizer)
    train = score_pairs(train_ds, cost, tokenizer, config)
    held_out = score_pairs(eval_ds, cost, tokenizer, config) if eval_ds is not None else None
    # 2. the trainer
    steps = steps_for(len(train), t.batch_size, t.epochs)
    trainer = cluster.new_trainer(path, "sequence_score", total_steps=steps, rows_per_example=2)
    try:
        # 3. the baseline on held-out pairs
        before = None
        if held_out is not None:
            before = held_out_metrics(
                pair_scores(trainer, held_out, pad_id, t.batch_size), held_out.is_unsafe
            )
        # 4. train
        history = train_score_model(config, trainer, train, pad_id, out, stage)
        # 5. held-out accuracy; checkpoint
        after = None
        if held_out is not None:
            after = held_out_metrics(pair_scores(trainer, held_out, pad_id, t.batch_size), held_out.is_unsafe)
            out.log_metrics(len(history), f"{stage}_eval", after)
        checkpoint = trainer.save(str(out.checkpoint(stage)))
    finally:
        trainer.shutdown()
    result = {
        "checkpoint": checkpoint,
        "initial_model": path,
        "train_pairs": len(train),
        "steps": len(history),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "eval_before": before,
        "eval": after,
    }
    record_stage(config, out, stage, {k: v for k, v in result.items() if k != "checkpoint"})
    out.write_result(result)
    return result
