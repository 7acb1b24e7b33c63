"""The model a trainer rank trains: a Hugging Face checkpoint loaded for its kind, returning one loss input.

Kinds: "causal_lm" (policy; token log-probs), "token_value" (critic; per-token values), "sequence_score"
(reward or cost model; one score per sequence). :class:`ModelOutputs` turns the model's forward into exactly
the tensor a loss spec consumes, so DeepSpeed wraps one module and one forward covers the whole computation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actors.packed_attention import packed_hidden, use_packed_attention
from actors.train_config import TrainConfig
from ray_align.losses.chunked import target_logprobs
from ray_align.losses.logprobs import chunked_token_logprobs

# The one output each model kind can produce; a spec asking for another is an error, not a silent fallback.
OUTPUT_OF_KIND = {"causal_lm": "logprobs", "token_value": "values", "sequence_score": "scores"}


class ModelOutputs(nn.Module):
    """A Hugging Face model whose forward returns exactly the tensor a loss spec consumes.

    forward(input_ids [B,T], attention_mask [B,T], target_mask [B,T-1] | None) ->
      "logprobs": [B,T-1] float32, logprobs[:, t] = log p(input_ids[:, t+1] | input_ids[:, :t+1]) where the
                  target is a real token (and target_mask is 1, when given), else 0; only those positions go
                  through the LM head, in chunks (never all [B,T,V] logits at once; see _logprobs);
      "values":   [B,T-1] float32, the token classifier's output at positions 0..T-2;
      "scores":   [B] float32, a decoder's head (``score``) at the last non-pad token (right padding: index
                  sum(mask)-1); an encoder classifier's own pooled output ([CLS] for BERT), as the scorer reads.
    DeepSpeed wraps this module, so one engine forward covers the whole computation (ZeRO-3 gathers each
    submodule's parameters in its own hooks, including the head inside the checkpointed chunks).
    """

    def __init__(
        self, model: nn.Module, output: str, chunk_size: int, unpad: bool = True, dedup_rows: bool = True
    ):
        super().__init__()
        self.model = model
        self.output = output
        self.chunk_size = chunk_size
        self.dedup_rows = dedup_rows
        # packing needs the attention to dispatch through transformers' interface (actors.packed_attention)
        self.unpad = unpad and output == "logprobs" and use_packed_attention(self.hf_model())

    def hf_model(self) -> nn.Module:
        """The transformers model (with LoRA layers injected, if any) inside an optional peft wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor | None = None) -> Tensor:
        if self.dedup_rows and not self._has_dropout():
            first, inverse = unique_rows(input_ids, attention_mask, target_mask)
            if first.numel() < input_ids.shape[0]:
                # identical rows have identical outputs: each runs once, and indexing back sums their gradients
                mask = None if target_mask is None else target_mask[first]
                return self._outputs(input_ids[first], attention_mask[first], mask)[inverse]
        return self._outputs(input_ids, attention_mask, target_mask)

    def _has_dropout(self) -> bool:
        """Whether a training forward draws dropout masks (then duplicate rows must each get their own)."""
        return any(m.training and dropout_rate(m) > 0 for m in self.model.modules())

    def _outputs(self, input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor | None) -> Tensor:
        hf = self.hf_model()
        if self.output == "scores" and not isinstance(getattr(hf, "score", None), nn.Module):
            # an encoder classifier (BERT: [CLS] pooler): its own pooling, as the scorer actor reads it
            return hf(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        if self.output == "values":
            logits = hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B,T,1]
            return logits[:, :-1, 0].float()
        if self.output == "logprobs":
            return self._logprobs(hf, input_ids, attention_mask, target_mask)
        backbone = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = backbone.last_hidden_state  # [B,T,H]
        last = attention_mask.long().sum(dim=-1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B,H]
        return hf.score(pooled)[:, 0].float()  # a decoder's head (Llama/GPT-2/Qwen name it score)

    def _logprobs(self, hf: nn.Module, input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor | None):
        """[B,T-1] log-probs at the selected next-token positions, 0 elsewhere.

        Selected: every position whose target is a real token (attention_mask[:, 1:]), narrowed to
        ``target_mask`` [B,T-1] when given (a loss that reads only the response). Only the selected
        positions' hidden states go through the LM head (ray_align.losses.chunked), and with ``unpad`` the
        right-padded rows run packed into one sequence, without their padding (actors.packed_attention).
        """
        head = hf.get_output_embeddings()
        if hasattr(head.weight, "ds_id"):  # ZeRO-3: every rank must run each module equally often
            hidden = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return chunked_token_logprobs(
                hidden.last_hidden_state[:, :-1], head, input_ids[:, 1:], self.chunk_size
            )
        select = attention_mask[:, 1:].bool()
        if target_mask is not None:
            select = select & target_mask.bool()
        # packed only on CPU: on a GPU the per-sequence attention loop would cost more than the padding
        cpu = input_ids.device.type == "cpu"
        if self.unpad and cpu and bool(select.any()) and is_right_padded(attention_mask):
            hidden = self._selected_hidden_packed(hf, input_ids, attention_mask, select)
        else:
            if not bool(select.any()):  # nothing to read: every position, so the output still has a graph
                select = torch.ones_like(select)
            out = hf.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = out.last_hidden_state[:, :-1][select]  # [N,H], row-major like select
        targets = input_ids[:, 1:][select]
        if type(head) is nn.Linear:
            logps = target_logprobs(hidden, head.weight, targets, self.chunk_size, head.bias)
        else:  # an adapted (LoRA) head: call the module
            logps = chunked_token_logprobs(hidden[None], head, targets[None], self.chunk_size)[0]
        zeros = torch.zeros(select.shape, dtype=logps.dtype, device=logps.device)
        return zeros.masked_scatter(select, logps)

    @staticmethod
    def _selected_hidden_packed(hf: nn.Module, input_ids: Tensor, attention_mask: Tensor, select: Tensor):
        """Hidden states [N,H] of the selected positions (row-major, like ``select``): the rows with anything
        selected, each cut at its length, run as one packed sequence. With right padding a row's real tokens
        see exactly what they see in the padded batch."""
        rows = select.any(dim=-1).nonzero()[:, 0]  # select ⊆ attention_mask[:, 1:]: real tokens only
        lengths = attention_mask[rows].long().sum(dim=-1)
        hidden, offsets = packed_hidden(hf.base_model, input_ids[rows], lengths)
        # position t of row r (target t+1) is hidden[offsets[r] + t]; select[rows] is row-major like select
        positions = offsets[:, None] + torch.arange(select.shape[1], device=offsets.device)[None, :]
        return hidden[positions[select[rows]]]


def unique_rows(
    input_ids: Tensor, attention_mask: Tensor, target_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(first index of each distinct row, the distinct row of every row): rows are the same when their real
    tokens, attention masks and target masks are."""
    parts = [input_ids.masked_fill(attention_mask == 0, 0).long(), attention_mask.long()]
    if target_mask is not None:
        parts.append(target_mask.long())
    _, inverse = torch.unique(torch.cat(parts, dim=1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), inverse.numel(), dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(inverse.numel(), device=inverse.device), "amin")
    return first, inverse


def is_right_padded(attention_mask: Tensor) -> bool:
    """True when every row's mask is ones then zeros (collate's layout); left padding or holes are False."""
    lengths = attention_mask.long().sum(dim=-1, keepdim=True)
    prefix = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :] < lengths
    return bool((attention_mask.bool() == prefix).all())


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


# Where dropout lives: nn.Dropout modules, and float rates that attention layers keep as attributes and apply
# in their own forward (transformers' attention functions take them as an argument).
RATE_ATTRS = ("attention_dropout", "dropout")


def dropout_rate(module: nn.Module) -> float:
    """The largest dropout probability ``module`` applies itself (nn.Dropout, or an attention layer's rate)."""
    rates = [module.p] if isinstance(module, nn.Dropout) else []
    rates += [getattr(module, a) for a in RATE_ATTRS if isinstance(getattr(module, a, None), float)]
    return max(rates, default=0.0)


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout: nn.Dropout modules and the float rates attention layers keep as attributes.

    With dropout on, a training forward differs from the no-grad forward that produced old log-probs / old
    values, so the PPO ratio and the value clip would start away from 1 / 0 for no reason.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in RATE_ATTRS:
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)
