"""The model a trainer rank trains: a Hugging Face checkpoint loaded for its kind, returning one loss input.

Kinds: "causal_lm" (policy; token log-probs), "token_value" (critic; per-token values), "sequence_score"
(reward or cost model; one score per sequence). :class:`ModelOutputs` turns the model's forward into exactly
the tensor a loss spec consumes, so DeepSpeed wraps one module and one forward covers the whole computation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actors.train_config import TrainConfig
from ray_align.losses.logprobs import chunked_token_logprobs

# The one output each model kind can produce; a spec asking for another is an error, not a silent fallback.
OUTPUT_OF_KIND = {"causal_lm": "logprobs", "token_value": "values", "sequence_score": "scores"}


class ModelOutputs(nn.Module):
    """A Hugging Face model whose forward returns exactly the tensor a loss spec consumes.

    forward(input_ids [B,T], attention_mask [B,T]) ->
      "logprobs": [B,T-1] float32, logprobs[:, t] = log p(input_ids[:, t+1] | input_ids[:, :t+1]), from the
                  backbone's hidden states through chunked_token_logprobs (never all [B,T,V] logits at once);
      "values":   [B,T-1] float32, the token classifier's output at positions 0..T-2;
      "scores":   [B] float32, the sequence head at the last non-pad token (right padding: index sum(mask)-1).
    DeepSpeed wraps this module, so one engine forward covers the whole computation (ZeRO-3 gathers each
    submodule's parameters in its own hooks, including the head inside the checkpointed chunks).
    """

    def __init__(self, model: nn.Module, output: str, chunk_size: int):
        super().__init__()
        self.model = model
        self.output = output
        self.chunk_size = chunk_size

    def hf_model(self) -> nn.Module:
        """The transformers model (with LoRA layers injected, if any) inside an optional peft wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hf = self.hf_model()
        if self.output == "values":
            logits = hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B,T,1]
            return logits[:, :-1, 0].float()
        backbone = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = backbone.last_hidden_state  # [B,T,H]
        if self.output == "logprobs":
            labels = input_ids[:, 1:]
            return chunked_token_logprobs(hidden[:, :-1], hf.get_output_embeddings(), labels, self.chunk_size)
        last = attention_mask.long().sum(dim=-1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B,H]
        head = hf.score if hasattr(hf, "score") else hf.classifier  # Llama/GPT-2/Qwen name it score
        return head(pooled)[:, 0].float()


def load_model(model_path: str, model_kind: str, train: TrainConfig) -> nn.Module:
    """The transformers model of this kind from a local checkpoint, with LoRA / gradient checkpointing applied."""
    import transformers

    auto = {
        "causal_lm": transformers.AutoModelForCausalLM,
        "token_value": transformers.AutoModelForTokenClassification,
        "sequence_score": transformers.AutoModelForSequenceClassification,
    }[model_kind]
    # score and value heads have one output; without num_labels a checkpoint saved without one (a causal LM,
    # a classifier from elsewhere) gets transformers' default of two, and column 1 would be trained for nothing
    heads = {} if model_kind == "causal_lm" else {"num_labels": 1}
    model = auto.from_pretrained(model_path, dtype=torch.float32, **heads)
    if train.disable_dropout:
        disable_dropout(model)
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train.lora is not None:
        import peft

        lora = train.lora
        config = peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            modules_to_save=list(lora.modules_to_save) or None,
        )
        model = peft.get_peft_model(model, config)
    return model


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout: nn.Dropout modules and the float rates attention layers keep as attributes.

    With dropout on, a training forward differs from the no-grad forward that produced old log-probs / old
    values, so the PPO ratio and the value clip would start away from 1 / 0 for no reason.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)
