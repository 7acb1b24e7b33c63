"""One DeepSpeed rank (ZeRO-0, gloo, fp32) against plain transformers + torch on the tiny policy.

The integration tests share two single-rank groups: ``single`` (micro-batch 4, no accumulation) and
``accum`` (micro-batch 2 × 2 accumulation steps); each test that trains first reloads the initial checkpoint,
which also restarts the optimizer and the lr schedule. The pure helpers (lr schedule, atomic directory,
LoRA export) are tested in-process.
"""

from __future__ import annotations

import math

import pytest
import torch
from trainer_batches import make_batch
from transformers import AutoModelForCausalLM

from actors.checkpoint import WEIGHTS_NAME, atomic_dir, export_state_dict, load_state_dict
from actors.train_config import LoraSettings, TrainConfig, lr_factor
from ray_align.losses.specs import DPOSpec, SFTSpec

CLIP = 0.5
TRAIN = dict(lr=1e-3, weight_decay=0.5, lr_schedule="cosine", warmup_ratio=0.5, total_steps=4, grad_clip=CLIP)
TRAIN.update(logprob_chunk_size=3, zero_stage=0, dtype="fp32")


def hf_logprobs(model, batch) -> torch.Tensor:
    """log softmax of the full [B,T,V] logits, gathered at the next tokens: [B,T-1]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logps.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]


@pytest.fixture(scope="module")
def groups(ray_session, tiny_models):
    from actors.trainer_group import TrainerGroup

    path = str(tiny_models.policy)
    single = TrainerGroup(
        path, "causal_lm", 1, TrainConfig(micro_batch_size=4, grad_accum_steps=1, **TRAIN), wait=False
    )
    accum = TrainerGroup(
        path, "causal_lm", 1, TrainConfig(micro_batch_size=2, grad_accum_steps=2, **TRAIN), wait=False
    )
    single.wait_ready()
    accum.wait_ready()
    yield single, accum
    single.shutdown()
    accum.shutdown()


# ---- pure helpers -------------------------------------------------------------------------------------------


def test_lr_factor_warmup_then_cosine():
    """total 4, warmup 2: factors (0+1)/2, (1+1)/2, then ½(1+cos(π·p)) with p = (s−2)/2: 1 at s=2, ½·min at s=4.

    With min_lr_ratio 0.1 the cosine part is 0.1 + 0.9·½(1+cos πp): s=3 -> p=½ -> 0.55; s=4 -> p=1 -> 0.1.
    """
    f = [lr_factor(s, 4, 2, "cosine", 0.1) for s in range(6)]
    assert f == pytest.approx([0.5, 1.0, 1.0, 0.55, 0.1, 0.1])
    assert [lr_factor(s, 4, 0, "constant", 0.0) for s in range(3)] == [1.0, 1.0, 1.0]


def test_train_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="zero_stage"):
        TrainConfig(zero_stage=4)


def test_atomic_dir_appears_complete_or_not_at_all(tmp_path):
    """Inside the block the files go to a hidden sibling; the final name appears only after the block."""
    final = tmp_path / "ckpt"
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and not final.exists()
        (tmp / "a.txt").write_text("1")
    assert (final / "a.txt").read_text() == "1"
    with atomic_dir(final) as tmp:  # replacing: the old content goes away entirely
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "c.txt").write_text("3")
        raise RuntimeError("writer died")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind


def test_lora_export_merges_into_base_names(tiny_models):
    """W + (α/r)·B·A under the plain model's names: a plain model loaded with them gives the LoRA model's logits.

    B is zero at init, so it is set to random values first (otherwise the merge would be the identity).
    """
    import peft

    model = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32)
    base_names = set(model.state_dict())
    lora = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules))
    adapted = peft.get_peft_model(model, config)
    torch.manual_seed(0)
    for name, param in adapted.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
    state = export_state_dict(adapted.get_base_model(), zero3=False)
    assert set(state) == base_names

    plain = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32)
    plain.load_state_dict(state)
    batch = make_batch([6, 6], T=6, prompt_len=2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(hf_logprobs(plain, batch), hf_logprobs(adapted, batch), atol=1e-5, rtol=0)


# ---- one DeepSpeed rank -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_chunked_logprobs_equal_full_logits(groups, tiny_models):
    """Chunks of 3 positions over T−1 = 8 (3+3+2) give the full-logits log-probs, and match HF's own loss.

    HF's causal-LM loss with labels = input_ids (pads -100) is the mean over the valid next-token targets of
    −log p, i.e. −Σ logprobs·mask[:,1:] / Σ mask[:,1:] under the project's convention.
    """
    single, _ = groups
    batch = make_batch([9, 7, 5, 9], T=9, prompt_len=2, seed=0)
    got = single.logprobs(batch)
    model = AutoModelForCausalLM.from_pretrained(tiny_models.policy, dtype=torch.float32)
    with torch.no_grad():
        want = hf_logprobs(model, batch)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        hf_loss = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        ).loss
    valid = batch["attention_mask"][:, 1:].float()
    assert got.shape == (4, 8)
    torch.testing.assert_close(got * valid, want * valid, atol=1e-5, rtol=0)
    torch.testing.assert_close(-(got * valid).sum() / valid.sum(), hf_loss, atol=1e-5, rtol=0)


def torch_reference(path, batches, spec, lrs, weight_decay):
    """The same steps with transformers + torch AdamW, no DeepSpeed: full logits, clip_grad_norm_, set lr.

    Parameter groups as in actors.train_config: matrices decay, vectors do not. Returns (state dict, grad norms).
    """
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lrs[0], betas=(0.9, 0.999), eps=1e-8)
    norms = []
    for batch, lr in zip(batches, lrs, strict=True):
        loss, _ = spec(hf_logprobs(model, batch), batch)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, CLIP).item())
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.detach() for k, v in model.state_dict().items()}, norms


@pytest.mark.integration
def test_zero0_steps_equal_plain_torch_adamw(groups, tiny_models):
    """Two SFT steps under DeepSpeed ZeRO-0 equal two torch AdamW steps from the same weights to ~1e-6.

    lr schedule (lr 1e-3, total 4, warmup ceil(0.5·4) = 2): step 0 uses 1e-3·1/2, step 1 uses 1e-3·2/2.
    The gradient norm (~2-3 here) exceeds the clip 0.5, so clipping is active in both. Weight decay 0.5 is
    large on purpose: lr·wd·|w| ≈ 1e-5 per step, above the tolerance, so decaying the wrong groups shows.
    """
    single, _ = groups
    single.load(str(tiny_models.policy))
    batches = [make_batch([8, 8, 6, 5], T=8, prompt_len=3, seed=s) for s in (10, 11)]
    stats = [single.train_step(b, SFTSpec()) for b in batches]
    want, norms = torch_reference(tiny_models.policy, batches, SFTSpec(), [5e-4, 1e-3], weight_decay=0.5)
    assert [s["lr"] for s in stats] == pytest.approx([5e-4, 1e-3], rel=1e-12)
    assert [s["grad_norm"] for s in stats] == pytest.approx(norms, rel=1e-5)
    assert min(norms) > CLIP
    got = single.state_dict()
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=2e-6, rtol=0, msg=name)


@pytest.mark.integration
def test_grad_accumulation_equals_one_micro_batch(groups, tiny_models):
    """DPO on 2 pairs: 2 micro-batches of 1 pair (accumulated) = 1 micro-batch of both pairs.

    DeepSpeed scales each micro-batch loss by 1/2, so the accumulated gradient is that of the mean over the
    two pairs, the DPO loss of the whole batch. This only holds when each micro-batch keeps a chosen row
    with its own rejected row, i.e. rows [c0, r0] and [c1, r1] out of [c0, c1, r0, r1]; the trainer takes
    that from DPOSpec.paired (cutting [c0, c1] / [r0, r1] instead would compare c0 with c1).
    """
    single, accum = groups
    for group in groups:
        group.load(str(tiny_models.policy))
    batch = make_batch([8, 7, 8, 6], T=8, prompt_len=3, seed=20)
    batch["ref_logps"] = torch.tensor([-30.0, -28.0, -31.0, -27.0])
    spec = DPOSpec(beta=0.5)
    assert spec.paired
    want = single.train_step(batch, spec)
    got = accum.train_step(batch, spec)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    want_state, got_state = single.state_dict(), accum.state_dict()
    for name in want_state:
        torch.testing.assert_close(got_state[name], want_state[name], atol=2e-6, rtol=0, msg=name)


@pytest.mark.integration
def test_save_hf_loads_back_identically(groups, tiny_models, tmp_path):
    """save → AutoModelForCausalLM.from_pretrained gives the trainer's weights and log-probs; the final
    directory holds weights, config and tokenizer, and nothing temporary is left beside it."""
    single, _ = groups
    single.load(str(tiny_models.policy))
    single.train_step(make_batch([8, 8, 8, 8], T=8, prompt_len=3, seed=30), SFTSpec())
    path = single.save(str(tmp_path / "step1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step1"]
    names = {p.name for p in (tmp_path / "step1").iterdir()}
    assert {WEIGHTS_NAME, "config.json", "tokenizer.json"} <= names

    state = single.state_dict()
    on_disk = load_state_dict(path)
    assert set(on_disk) == set(state) and all(torch.equal(on_disk[k], state[k]) for k in state)
    model = AutoModelForCausalLM.from_pretrained(path)
    batch = make_batch([8, 6], T=8, prompt_len=3, seed=31)
    with torch.no_grad():
        want = hf_logprobs(model, batch)
    valid = batch["attention_mask"][:, 1:].float()
    torch.testing.assert_close(single.logprobs(batch) * valid, want * valid, atol=1e-5, rtol=0)


@pytest.mark.integration
def test_wrong_rows_or_output_are_refused(groups):
    """4 rows are one step (micro 4 × accumulation 1): 3 rows is an error; a causal LM has no values."""
    single, _ = groups
    with pytest.raises(ValueError, match="micro_batch_size"):
        single.train_step(make_batch([5, 5, 5], T=5, prompt_len=2, seed=40), SFTSpec())
    with pytest.raises(ValueError, match="produces 'logprobs'"):
        single.values(make_batch([5], T=5, prompt_len=2, seed=41))
    assert math.isfinite(single.logprobs(make_batch([5], T=5, prompt_len=2, seed=42)).sum().item())
