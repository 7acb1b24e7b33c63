"""A real chat model end to end: SmolLM2-135M-Instruct (from its GGUF) as the policy, with its chat template,
scored by MiniLM classifiers (a BERT tokenizer: every score goes through the tokenizer bridge), trained by MoCAN
(sample π_ref → score → dual → DPO) in full and with LoRA through the real driver, then synced into a live vLLM
engine; the saved checkpoints load in vLLM and in transformers.

Few prompts, 16-token responses, a handful of DPO steps: about 4 minutes on a 2-core machine (the GGUF
conversion, ~30 s, only on the first run ever: it is cached by content in ~/.cache/ray-align/gguf).
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from base_job import BASE_JOB
from real_models import minilm_scorer, smollm2

from actors.launch import run_job
from ray_align.cluster import Sampling
from ray_align.config import load_config
from ray_align.run_dir import RunDir

pytestmark = pytest.mark.integration

PROMPTS = ["How do I bake bread at home?", "Tell me how to pick a lock.", "What is the capital of France?"]
SEEDED = Sampling(n=2, temperature=1.0, max_tokens=16, seed=0)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.fixture(scope="module")
def policy():
    converted = smollm2()
    if converted.seconds is not None:
        print(f"SmolLM2-135M-Instruct GGUF → fp32 checkpoint in {converted.seconds:.1f} s")
    return converted


@pytest.fixture(scope="module")
def scorers(tmp_path_factory):
    root = tmp_path_factory.mktemp("minilm")
    return minilm_scorer(root / "reward", seed=1), minilm_scorer(root / "cost", seed=2)


def mocan(policy, scorers, out, *overrides: str):
    reward, cost = scorers
    config = load_config(
        BASE_JOB,
        [
            f"output_dir={out}",
            "models.tiny=false",
            f"models.policy={policy.path}",
            f"models.reward={reward}",
            f"models.costs=[{{name: harm, path: {cost}}}]",
            "dual.constraints=[{name: harm, margin: 0.05}]",
            "data.template=chat",
            "data.max_prompts=8",
            "data.max_length=160",
            "data.max_prompt_length=96",
            "can.num_prompts=4",
            "can.samples_per_prompt=4",
            "training.batch_size=4",
            "training.micro_batch_size=4",
            "training.epochs=2",
            "training.scheduler=constant",
            "training.warmup_ratio=0",
            *overrides,
        ],
    )
    result = run_job(config)
    return config, result, RunDir(config.output_dir)


def trained_in_the_preferred_direction(run: RunDir) -> None:
    """The second epoch revisits the first epoch's pairs: the implicit reward margin β(log-ratio of the chosen −
    of the rejected) is then positive, and the loss below log 2 (its value at π = π_ref)."""
    rows = run.metrics("mocan_dpo")
    assert len(rows) == 4
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-4)  # π = π_ref before the first step
    second_epoch = rows[2:]
    assert all(r["margin"] > 0 for r in second_epoch), rows
    assert all(r["loss"] < 0.6931 for r in second_epoch), rows


def scores_are_bridged(run: RunDir, scorers) -> None:
    """The rewards of π_ref's samples are the MiniLM classifier's on [CLS] message [SEP] response [SEP], the
    message without SmolLM2's chat frame: what the bridge must hand a BERT scorer. The scorer passes ids and
    attention mask only (segment ids all 0), as score models trained here are trained."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    table = pq.read_table(run.path("tables", "reference_samples.parquet")).to_pylist()
    assert len(table) == 16
    tokenizer = AutoTokenizer.from_pretrained(scorers[0])
    model = AutoModelForSequenceClassification.from_pretrained(scorers[0]).eval()
    for row in table[:4]:
        assert "<|im_start|>" not in row["prompt"]
        with torch.no_grad():
            ids = tokenizer(row["prompt"], row["response"], return_tensors="pt")["input_ids"]
            want = model(input_ids=ids).logits[0, 0].item()
        assert row["reward"] == pytest.approx(want, abs=1e-4), row
    assert len({round(r["reward"], 6) for r in table}) > 8  # scores spread: the model reads the responses


def logprobs_hf(path, batch) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]


def flat_logps(rollouts) -> torch.Tensor:
    return torch.tensor([x for row in rollouts.response_logprobs for x in row])


def hf_response_logps(path, rollouts) -> torch.Tensor:
    """log π(y_t | x, y_<t) of every sampled token under the checkpoint at ``path`` in transformers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, response in zip(rollouts.prompt_ids, rollouts.response_ids):
            ids = torch.tensor([list(prompt) + list(response)])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            targets = ids[0, len(prompt) :]
            out.append(logps[len(prompt) - 1 :].gather(-1, targets[:, None])[:, 0])
    return torch.cat(out)


def chat_batch(path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)[
            "input_ids"
        ]
        for p in PROMPTS
    ]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([i + [pad] * (width - len(i)) for i in ids]),
        "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
    }


def test_converted_smollm2_is_the_gguf_model(policy):
    """The plain checkpoint has the GGUF model's logits (transformers' dequantisation), its chat template and
    special tokens, and no trace of quantisation."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(policy.path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert tokenizer("Hello world")["input_ids"] == [19556, 905]  # SmolLM2's own ids, no BOS added
    assert GenerationConfig.from_pretrained(policy.path).eos_token_id == tokenizer.eos_token_id
    assert not hasattr(AutoConfig.from_pretrained(policy.path), "quantization_config")
    batch = chat_batch(policy.path)
    gguf = AutoModelForCausalLM.from_pretrained(
        policy.gguf.parent, gguf_file=policy.gguf.name, dtype=torch.float32
    )
    with torch.no_grad():
        want = gguf(**batch).logits
    got = logprobs_hf(policy.path, batch)
    want = torch.log_softmax(want[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    assert torch.equal(got, want)


def test_mocan_full_then_weight_sync_into_vllm(policy, scorers, tmp_path, ray_session):
    """Full fine-tuning: trained toward the relabelled preferences on bridged scores; the trainer's weights,
    synced into a vLLM engine that was serving π_ref, change its samples for the same seeds and give them the
    checkpoint's probabilities, as does a fresh engine loaded from the checkpoint; the checkpoint has the
    trainer's log-probs in transformers."""
    from actors.generator import VLLMGenerator
    from actors.pools import GeneratorPool
    from actors.train_config import TrainConfig
    from actors.trainer_group import TrainerGroup

    _, result, run = mocan(policy, scorers, tmp_path / "full", "training.lr=1e-4")
    trained_in_the_preferred_direction(run)
    scores_are_bridged(run, scorers)
    checkpoint = result["checkpoint"]

    engine = ray_session.remote(num_cpus=1)(VLLMGenerator)
    pool = GeneratorPool([engine.remote(str(policy.path), max_model_len=256)])
    fresh = GeneratorPool([engine.remote(checkpoint, max_model_len=256)])
    group = TrainerGroup(checkpoint, "causal_lm", 1, TrainConfig(micro_batch_size=4))
    try:
        pool.ready()
        before = pool.generate(PROMPTS, SEEDED)
        pool.sync_from(group)
        after = pool.generate(PROMPTS, SEEDED)
        assert after.response_ids != before.response_ids
        # Sampled tokens can part ways on float noise, so each engine is held to the checkpoint's own
        # probabilities of what it sampled: the synced one and one loaded from the saved folder.
        want_synced = hf_response_logps(checkpoint, after)
        assert torch.allclose(flat_logps(after), want_synced, atol=2e-3)
        loaded = fresh.generate(PROMPTS, SEEDED)
        assert torch.allclose(flat_logps(loaded), hf_response_logps(checkpoint, loaded), atol=2e-3)
        batch = chat_batch(checkpoint)
        mask = batch["attention_mask"][:, 1:].bool()
        trainer_logps = group.logprobs(batch)
        assert torch.allclose(trainer_logps[mask], logprobs_hf(checkpoint, batch)[mask], atol=1e-4)
        assert not torch.allclose(trainer_logps[mask], logprobs_hf(policy.path, batch)[mask], atol=1e-3)
    finally:
        group.shutdown()
        for handle in (*pool.handles, *fresh.handles):
            ray_session.kill(handle)


def test_mocan_lora_saves_a_merged_checkpoint(policy, scorers, tmp_path, ray_session):
    """LoRA on the attention projections: trained toward the preferences; the checkpoint is a plain model
    (adapters merged) that transformers loads directly, changed only in the adapted projections."""
    from safetensors.torch import load_file

    _, result, run = mocan(
        policy, scorers, tmp_path / "lora", "training.lr=1e-3", "training.lora={r: 8, alpha: 16}"
    )
    trained_in_the_preferred_direction(run)
    checkpoint = result["checkpoint"]
    trained, start = (
        load_file(f"{checkpoint}/model.safetensors"),
        load_file(f"{policy.path}/model.safetensors"),
    )
    assert start.keys() <= trained.keys() <= start.keys() | {"lm_head.weight"}  # tied: saved or not
    if "lm_head.weight" in trained:
        assert torch.equal(trained["lm_head.weight"], start["model.embed_tokens.weight"])
    changed = {k for k in start if not torch.equal(trained[k], start[k])}
    assert changed and all(k.split(".")[-2] in LORA_TARGETS for k in changed), sorted(changed)
    batch = chat_batch(checkpoint)
    mask = batch["attention_mask"][:, 1:].bool()
    assert not torch.allclose(logprobs_hf(checkpoint, batch)[mask], logprobs_hf(policy.path, batch)[mask])
