"""Tiny models built offline in seconds: a byte-level BPE tokenizer, a Llama policy, score and value models.

They are real Hugging Face models (saved with ``save_pretrained``) that vLLM, DeepSpeed and ``AutoModel*`` load
like any other checkpoint. Tests, the quickstart and the benchmarks use them because no model hub is reachable.

Sizes are chosen for vLLM's CPU attention, which supports head sizes 32, 64, 80, 96, 112, 128, ...:
hidden 64 with 2 heads gives head_dim 32.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# A chat template for the tokenizer's own format; the PKU template is applied by ray_align.data.formatting.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

# Training text for the BPE merges. Any English text works; the PKU template words are included so that the
# prompt format costs few tokens.
_CORPUS = [
    "BEGINNING OF CONVERSATION: USER: How do I bake bread at home? ASSISTANT: Mix flour, water, yeast and salt.",
    "BEGINNING OF CONVERSATION: USER: What is the capital of France? ASSISTANT: The capital of France is Paris.",
    "I cannot help with that request because it could hurt someone. Please stay safe and ask for help.",
    "Here is a safe and helpful answer: drink water, sleep well, and talk to a doctor when you feel unwell.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun near the window.",
    "To set up a webcam, connect it with a USB cable, open the video app and test the picture and sound.",
    "Stealing, hacking, weapons, drugs and violence are harmful; the assistant should refuse and explain why.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and letters a b c d e f g h i j k l m n o p q r s t u v w x y z.",
]


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny Llama family. Every field is a Hugging Face LlamaConfig field or a tokenizer knob."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    max_position_embeddings: int = 512
    seed: int = 0
    # Whole-word tokens added to the vocabulary (e.g. a task's answers). Each absorbs the whitespace before it,
    # so " <a0>" (a response after the PKU template's space) is the same single token the model generates.
    extra_tokens: tuple[str, ...] = ()


def build_tokenizer(spec: TinySpec = TinySpec(), corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on a fixed corpus (deterministic) and wrap it for transformers."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or _CORPUS, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="right"
    )
    if spec.extra_tokens:
        fast.add_tokens([AddedToken(t, lstrip=True, normalized=False) for t in spec.extra_tokens])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _llama_config(spec: TinySpec, tokenizer: PreTrainedTokenizerFast, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
        **extra,
    )


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_policy(spec: TinySpec, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    """A causal LM (the policy / reference), randomly initialised from ``spec.seed``."""
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(_llama_config(spec, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return _save(model, tokenizer, path)


def build_score_model(
    spec: TinySpec, tokenizer: PreTrainedTokenizerFast, path: Path, seed_offset: int
) -> Path:
    """A sequence classifier with one output: a reward or cost model (score at the last non-pad token)."""
    torch.manual_seed(spec.seed + seed_offset)
    config = _llama_config(spec, tokenizer, num_labels=1)
    return _save(AutoModelForSequenceClassification.from_config(config), tokenizer, path)


def build_value_model(
    spec: TinySpec, tokenizer: PreTrainedTokenizerFast, path: Path, seed_offset: int
) -> Path:
    """A token classifier with one output per token: a critic (value model)."""
    torch.manual_seed(spec.seed + seed_offset)
    config = _llama_config(spec, tokenizer, num_labels=1)
    return _save(AutoModelForTokenClassification.from_config(config), tokenizer, path)


@dataclass(frozen=True)
class TinyModels:
    """Paths of one tiny model family on disk."""

    root: Path
    policy: Path
    reward: Path
    cost: Path
    critic: Path


def build_tiny_models(root: str | Path, spec: TinySpec = TinySpec()) -> TinyModels:
    """Build (or reuse) the whole family under ``root``. Deterministic for ``spec``; reused when already built."""
    root = Path(root)
    paths = TinyModels(root, root / "policy", root / "reward", root / "cost", root / "critic")
    stamp = root / "tiny_spec.json"
    wanted = json.dumps(asdict(spec), sort_keys=True)
    if stamp.exists() and stamp.read_text() == wanted:
        return paths
    tokenizer = build_tokenizer(spec)
    build_policy(spec, tokenizer, paths.policy)
    build_score_model(spec, tokenizer, paths.reward, seed_offset=1)
    build_score_model(spec, tokenizer, paths.cost, seed_offset=2)
    build_value_model(spec, tokenizer, paths.critic, seed_offset=3)
    stamp.write_text(wanted)  # written last: a half-built family is rebuilt next time
    return paths
