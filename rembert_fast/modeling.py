"""RemBERT and its heads, read top-down: model -> heads -> encoder -> layer -> attention ->
feed-forward -> embeddings.

Module tree, parameter names and state-dict keys are exactly transformers' `modeling_rembert.py`
(a transformers state dict loads here with `strict=True`, and the reverse), and so are the forward
arguments, the loss rules and the output fields. transformers is not imported at run time.

Two paths compute the same encoder:

- The packed fast path (`rembert_fast.packed`), taken whenever `packed.packable` allows it. The real
  tokens are packed once into (T, hidden) rows; embeddings, one fused QKV GEMM per layer, varlen
  attention, the bias+residual LayerNorms and bias+GELU run on those rows through the op API
  (`rembert_fast.ops`), and the result is padded once at the exit. Heads that need one row per
  sequence read packed rows directly; token-level heads run on packed rows and are padded after.
- The classic padded path: transformers' math on (B, L, hidden) tensors, for attention
  probabilities, head masks, 3-D/4-D masks, cross-attention and KV-cache decoding.
  `F.scaled_dot_product_attention` where probabilities are not returned, an explicit softmax where
  they are.

Deliberate differences from transformers (documented for users):
- Outputs at padding positions (hidden states, token logits) are zeros on the packed path; only real
  positions are specified. Losses over labels that are -100 at padding are equal.
- The pooler (and so sequence classification and multiple choice) reads each sequence's first real
  token, not position 0: with left padding transformers pools a padding position. With right padding
  or no padding the two agree.
- Ids outside their tables are rejected only where they are used: ids at padding positions are
  never read on the packed path.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from rembert_fast import ops, packed
from rembert_fast.configuration import RemBertConfig
from rembert_fast.outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    PastKeyValues,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from rembert_fast.packed import (
    PackedBatch,
    embed_tokens,
    fused_qkv,
    packed_encoder_forward,
    packed_layer_forward,
)

__all__ = [
    "RemBertPreTrainedModel",
    "RemBertModel",
    "RemBertForMaskedLM",
    "RemBertForCausalLM",
    "RemBertForSequenceClassification",
    "RemBertForMultipleChoice",
    "RemBertForTokenClassification",
    "RemBertForQuestionAnswering",
    "fused_qkv",
    "packed_layer_forward",
    "packed_encoder_forward",
    "embed_tokens",
    "PackedBatch",
]


# ================================================================================== base class
class RemBertPreTrainedModel(nn.Module):
    """Base of every RemBERT model: the config, transformers' weight init, loading and saving.

    Models can be built on the meta device (`with torch.device("meta"): Model(config)`); after weights
    are assigned, `_post_load()` rebuilds the derived state (position ids, fused QKV weights).
    """

    config_class = RemBertConfig
    base_model_prefix = "rembert"

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        if not isinstance(config, RemBertConfig):
            raise ValueError(f"config must be a rembert_fast.RemBertConfig, got {type(config).__name__}")
        if config.hidden_act not in ops.ACTIVATIONS:
            raise ValueError(
                f"hidden_act={config.hidden_act!r} is not supported; choose one of {ops.ACTIVATIONS}"
            )
        self.config = config

    def post_init(self, *modules: nn.Module) -> None:
        """Initialise `modules` (default: the whole model) like transformers, then build derived state."""
        for module in modules or (self,):
            module.apply(self._init_weights)
        self._post_load()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init: normal(0, initializer_range) weights, zero biases and padding row, LN 1/0."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()

    @torch.no_grad()
    def _post_load(self) -> None:
        """Rebuild what the state dict does not hold: position ids and the fused QKV buffers.

        Called at the end of `__init__` and by `checkpoint.load_pretrained` after it assigned weights.
        """
        for module in self.modules():
            if isinstance(module, RemBertEmbeddings):
                module.reset_position_ids()
            elif isinstance(module, RemBertSelfAttention):
                fused_qkv(module, rebuild=True)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        **config_overrides: Any,
    ) -> RemBertPreTrainedModel:
        """Load a transformers (or rembert_fast) checkpoint directory; see `rembert_fast.checkpoint`."""
        from rembert_fast import checkpoint

        return checkpoint.load_pretrained(cls, path, dtype=dtype, device=device, **config_overrides)

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write config.json and the weights in transformers' layout; see `rembert_fast.checkpoint`."""
        from rembert_fast import checkpoint

        checkpoint.save_pretrained(self, path, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --------------------------------------------------------- transformers' PreTrainedModel methods
    @property
    def base_model(self) -> RemBertModel:
        """The RemBertModel of a head (`.rembert`), or the model itself."""
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        """The vocabulary projection of a language-model head; None for the others."""
        return None

    def tie_weights(self) -> None:
        """Nothing to tie: RemBERT's output embeddings are separate from its input embeddings."""

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters in the model (as transformers counts them; shared ones once)."""
        embedding_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable)
                   and not (exclude_embeddings and id(p) in embedding_weights))

    @torch.no_grad()
    def resize_token_embeddings(self, new_num_tokens: int | None = None,
                                pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Resize the vocabulary of the input embeddings (and of an LM head's decoder) to `new_num_tokens`
        rows (rounded up to `pad_to_multiple_of`), keeping the existing rows; `config.vocab_size` follows.

        New rows are the mean of the old rows with `mean_resizing` (transformers samples them around
        that mean), else transformers' normal(0, initializer_range) init. Returns the input embedding.
        """
        old = self.get_input_embeddings()
        size = old.num_embeddings if new_num_tokens is None else int(new_num_tokens)
        if pad_to_multiple_of is not None:
            size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
        if size < 1:
            raise ValueError(f"new_num_tokens must be at least 1, got {new_num_tokens}")
        if size == old.num_embeddings:
            return old

        def grown(weight: torch.Tensor) -> torch.Tensor:  # (old rows, ...) -> (size, ...)
            rows = weight.new_empty((size, *weight.shape[1:]))
            keep = min(size, weight.shape[0])
            rows[:keep] = weight[:keep]
            if size > keep:
                if mean_resizing and weight.dim() > 1:
                    rows[keep:] = weight.float().mean(0).to(weight.dtype)
                elif weight.dim() > 1:
                    rows[keep:].normal_(0.0, self.config.initializer_range)
                else:
                    rows[keep:] = weight.float().mean().to(weight.dtype) if mean_resizing else 0
            return rows

        padding_idx = old.padding_idx if old.padding_idx is not None and old.padding_idx < size else None
        embedding = nn.Embedding(size, old.embedding_dim, padding_idx=padding_idx,
                                 device=old.weight.device, dtype=old.weight.dtype)
        embedding.weight.copy_(grown(old.weight))
        embedding.weight.requires_grad_(old.weight.requires_grad)  # a frozen embedding stays frozen
        self.set_input_embeddings(embedding)
        decoder = self.get_output_embeddings()
        if decoder is not None:
            new_decoder = nn.Linear(decoder.in_features, size, bias=decoder.bias is not None,
                                    device=decoder.weight.device, dtype=decoder.weight.dtype)
            new_decoder.weight.copy_(grown(decoder.weight))
            new_decoder.weight.requires_grad_(decoder.weight.requires_grad)
            if decoder.bias is not None:
                new_decoder.bias.copy_(grown(decoder.bias))
                new_decoder.bias.requires_grad_(decoder.bias.requires_grad)
            self.set_output_embeddings(new_decoder)
        self.config.vocab_size = size
        return embedding

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
                                      ) -> None:
        """Recompute each layer in the backward pass instead of keeping its activations (in training,
        with gradients recorded), on the packed and the classic path. `gradient_checkpointing_kwargs`
        is accepted for transformers' signature; the recomputation is torch's non-reentrant one."""
        self.base_model.encoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.encoder.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.base_model.encoder.gradient_checkpointing


# ================================================================================== the model
class RemBertModel(RemBertPreTrainedModel):
    """The RemBERT encoder (or decoder, with `config.is_decoder`), with an optional pooler.

    Differences from transformers, by design: padding positions of `last_hidden_state` and
    `hidden_states` are zeros on the packed path, and `pooler_output` is computed from each sequence's
    first real token (its [CLS]) rather than position 0, which is padding under left padding.
    """

    def __init__(self, config: RemBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = RemBertEmbeddings(config)
        self.encoder = RemBertEncoder(config)
        self.pooler = RemBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, L) int
        attention_mask: torch.Tensor | None = None,  # (B, past+L), (B, L, past+L) or (B, 1|heads, L, past+L)
        token_type_ids: torch.Tensor | None = None,  # (B, L)
        position_ids: torch.Tensor | None = None,  # (B, L) or (1, L); default: index in the padded row
        head_mask: torch.Tensor | None = None,  # (heads,) or (layers, heads); 0 silences a head
        inputs_embeds: torch.Tensor | None = None,  # (B, L, input_embedding_size)
        encoder_hidden_states: torch.Tensor | None = None,  # (B, Le, hidden), decoders with cross-attention
        encoder_attention_mask: torch.Tensor | None = None,  # (B, Le) or (B, L, Le)
        past_key_values: PastKeyValues | None = None,  # legacy per-layer (k, v[, cross_k, cross_v])
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: PastKeyValues | None = None,  # transformers 5's name for past_key_values
    ) -> BaseModelOutputWithPoolingAndCrossAttentions | tuple[Any, ...]:
        enc = self._encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=_past(past_key_values, cache),
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        sequence_output = enc.padded()  # (B, L, hidden)
        hidden_states = enc.padded_hidden_states()
        if not _return_dict(self.config, return_dict):
            extras = (enc.past_key_values, hidden_states, enc.attentions, enc.cross_attentions)
            return (sequence_output, enc.pooled) + tuple(x for x in extras if x is not None)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=enc.pooled,
            hidden_states=hidden_states,
            past_key_values=enc.past_key_values,
            attentions=enc.attentions,
            cross_attentions=enc.cross_attentions,
        )

    def _encode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        head_mask: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        *,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: PastKeyValues | None = None,
        use_cache: bool | None = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> PackedBatch:
        """Validate the inputs, pick the path, run the encoder and the pooler."""
        config = self.config
        output_attentions = bool(_flag(config, "output_attentions", output_attentions))
        output_hidden_states = bool(_flag(config, "output_hidden_states", output_hidden_states))
        use_cache = bool(use_cache if use_cache is not None else config.use_cache) and config.is_decoder
        batch, seqlen = _check_inputs(config, input_ids, inputs_embeds, token_type_ids, position_ids,
                                      attention_mask, self.embeddings.word_embeddings.weight)
        past_length = _check_past(config, past_key_values, batch)
        _check_mask("attention_mask", attention_mask, batch, seqlen, seqlen + past_length,
                    config.num_attention_heads)
        if position_ids is None and seqlen + past_length > config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seqlen + past_length} (input {seqlen} + cached {past_length}) exceeds "
                f"max_position_embeddings={config.max_position_embeddings}"
            )
        packable = packed.packable(
            self,
            attention_mask,
            output_attentions=output_attentions,
            use_cache=use_cache,
            head_mask=head_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=past_key_values,
        )
        if packable:
            return self._encode_packed(
                input_ids,
                attention_mask,
                token_type_ids,
                position_ids,
                inputs_embeds,
                output_hidden_states,
            )
        return self._encode_classic(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            encoder_hidden_states,
            encoder_attention_mask,
            past_key_values,
            past_length,
            use_cache,
            output_attentions,
            output_hidden_states,
            batch,
            seqlen,
        )

    def _encode_packed(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        output_hidden_states: bool,
    ) -> PackedBatch:
        enc = packed.packed_encoder_forward(
            self.embeddings,
            self.encoder,
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            self.config,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        if self.pooler is not None:
            enc.pooled = self.pooler(enc.first_tokens())
        return enc

    def _encode_classic(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        head_mask: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        past_key_values: PastKeyValues | None,
        past_length: int,
        use_cache: bool,
        output_attentions: bool,
        output_hidden_states: bool,
        batch: int,
        seqlen: int,
    ) -> PackedBatch:
        config = self.config
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if position_ids is None:
            position_ids = self.embeddings.position_ids[:, past_length : past_length + seqlen].expand(
                batch, -1
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, seqlen, dtype=torch.long, device=device)
        embedding_output = embed_tokens(
            self.embeddings, None, input_ids, token_type_ids, position_ids.expand(batch, -1), inputs_embeds
        )  # (B, L, E)
        dtype = embedding_output.dtype
        mask = _additive_mask(
            attention_mask, batch, seqlen, seqlen + past_length, dtype, device, causal=config.is_decoder
        )
        if encoder_hidden_states is not None:
            if not config.add_cross_attention:
                raise ValueError(
                    "encoder_hidden_states was given but the model has no cross-attention layers; "
                    "build it with is_decoder=True and add_cross_attention=True"
                )
            states = encoder_hidden_states
            if not isinstance(states, torch.Tensor):
                raise TypeError(f"encoder_hidden_states must be a torch.Tensor, got {type(states).__name__}")
            if states.dim() != 3 or states.shape[0] != batch or states.shape[2] != config.hidden_size:
                raise ValueError(f"encoder_hidden_states has shape {tuple(states.shape)}; expected ({batch}, "
                                 f"encoder_seqlen, {config.hidden_size})")
            if states.dtype != dtype or states.device != device:
                raise ValueError(f"encoder_hidden_states is {states.dtype} on {states.device}; the model "
                                 f"runs {dtype} on {device}")
            _check_mask(
                "encoder_attention_mask",
                encoder_attention_mask,
                batch,
                seqlen,
                encoder_hidden_states.shape[1],
                config.num_attention_heads,
            )
        encoder_mask = (
            _additive_mask(
                encoder_attention_mask,
                batch,
                seqlen,
                encoder_hidden_states.shape[1],
                dtype,
                device,
                causal=False,
                name="encoder_attention_mask",
            )
            if encoder_hidden_states is not None and encoder_attention_mask is not None
            else None
        )
        if head_mask is not None and (not isinstance(head_mask, torch.Tensor) or head_mask.device != device):
            raise ValueError(f"head_mask must be a tensor on {device}, got "
                             f"{getattr(head_mask, 'device', type(head_mask).__name__)}")
        head_masks = _head_masks(head_mask, config.num_hidden_layers, config.num_attention_heads, dtype)
        sequence, presents, hidden_states, attentions, cross_attentions = self.encoder(
            embedding_output,
            mask,
            head_masks,
            encoder_hidden_states,
            encoder_mask,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
        )
        pooled = None
        if self.pooler is not None:
            # The first real token of each row (see the class docstring); position 0 without a 2-D mask.
            first = (
                attention_mask[:, past_length:].ne(0).int().argmax(dim=1)
                if attention_mask is not None and attention_mask.dim() == 2
                else torch.zeros(batch, dtype=torch.long, device=device)
            )
            pooled = self.pooler(sequence[torch.arange(batch, device=device), first])
        return PackedBatch.from_padded(
            sequence,
            pooled=pooled,
            hidden_states=hidden_states,
            attentions=attentions,
            cross_attentions=cross_attentions,
            past_key_values=presents,
        )


class _RemBertWithLMHead(RemBertPreTrainedModel):
    """The encoder without a pooler plus the untied vocabulary head (`cls.predictions`): the masked and
    the causal language models share this body and differ only in their forward."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.cls = RemBertOnlyMLMHead(config)
        self.post_init(self.cls)

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings


class RemBertForMaskedLM(_RemBertWithLMHead):
    """RemBERT with the masked-language-modelling head (`cls.predictions`, untied from the input)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B, L) ids, -100 = ignored
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        masked_positions: torch.Tensor | None = None,  # rembert_fast extra: (B, L) bool or (N, 2) index
    ) -> MaskedLMOutput | tuple[Any, ...]:
        """transformers' MLM forward, plus `masked_positions`.

        `masked_positions` (a rembert_fast extra) computes the vocabulary-wide decoder only at the given
        positions, which costs as much as the whole encoder per token: either a (B, L) bool mask or an
        (N, 2) tensor of (row, column) pairs. `logits` is then (N, vocab) in row-major order of the
        positions, and `labels`, if given, are read at the same positions.
        """
        enc = self.rembert._encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        if labels is not None:
            _check_labels("labels", labels, (enc.batch, enc.seqlen), self.config.vocab_size, enc.hidden)
        if masked_positions is not None:
            flat = _flat_positions(masked_positions, enc.batch, enc.seqlen)  # (N,) into B*L
            logits = self.cls(enc.rows_at(flat))  # (N, vocab)
            if labels is not None:
                labels = labels.reshape(-1).index_select(0, flat)
        else:
            logits = enc.pad(self.cls(enc.hidden))  # (B, L, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.config.vocab_size), labels.reshape(-1))
        out = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=enc.padded_hidden_states(), attentions=enc.attentions
        )
        return out if _return_dict(self.config, return_dict) else out.to_tuple()


class RemBertForCausalLM(_RemBertWithLMHead):
    """RemBERT as a left-to-right decoder (`config.is_decoder=True`), with KV cache and cross-attention.

    `past_key_values` is transformers' legacy format: one tuple per layer of self-attention (k, v),
    each (B, heads, past_length, head_dim), followed by the cross-attention (k, v) when the model has
    cross-attention. It is returned when `use_cache` (default `config.use_cache`; off when `labels`
    are given, as in transformers 4).
    """

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: PastKeyValues | None = None,
        labels: torch.Tensor | None = None,  # (B, L); position i is predicted from tokens <= i-1
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: PastKeyValues | None = None,  # transformers 5's name for past_key_values
    ) -> CausalLMOutputWithCrossAttentions | tuple[Any, ...]:
        if labels is not None:
            use_cache = False
        enc = self.rembert._encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=_past(past_key_values, cache),
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = enc.pad(self.cls(enc.hidden))  # (B, L, vocab)
        loss = None
        if labels is not None:
            _check_labels("labels", labels, (enc.batch, enc.seqlen), self.config.vocab_size, logits)
            shifted = logits[:, :-1, :].float().reshape(-1, self.config.vocab_size)
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1))
        out = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=enc.past_key_values,
            hidden_states=enc.padded_hidden_states(),
            attentions=enc.attentions,
            cross_attentions=enc.cross_attentions,
        )
        return out if _return_dict(self.config, return_dict) else out.to_tuple()


class RemBertForSequenceClassification(RemBertPreTrainedModel):
    """Pooled output -> dropout -> linear. The loss follows `config.problem_type`, decided like transformers
    when unset: one label -> regression (MSE); integer labels -> single-label (cross-entropy); otherwise
    multi-label (BCE with logits). The pooler reads each sequence's first real token (see RemBertModel)."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        _check_num_labels(type(self).__name__, config)
        self.num_labels = config.num_labels
        self.rembert = RemBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init(self.classifier)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B,) class ids, (B,) or (B, 1) targets, or (B, num_labels)
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple[Any, ...]:
        enc = self.rembert._encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(enc.pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            batch = logits.shape[0]
            if self.config.problem_type == "regression":
                if self.num_labels == 1:
                    if labels.numel() != batch:
                        _check_labels("labels", labels, (batch,), None, logits)
                    loss = F.mse_loss(logits.squeeze(), labels.squeeze())
                else:
                    _check_labels("labels", labels, tuple(logits.shape), None, logits)
                    loss = F.mse_loss(logits, labels)
            elif self.config.problem_type == "single_label_classification":
                _check_labels("labels", labels.reshape(-1) if labels.numel() == batch else labels, (batch,),
                              self.num_labels, logits)
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                _check_labels("labels", labels, tuple(logits.shape), None, logits)
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        out = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=enc.padded_hidden_states(), attentions=enc.attentions
        )
        return out if _return_dict(self.config, return_dict) else out.to_tuple()


class RemBertForMultipleChoice(RemBertPreTrainedModel):
    """(B, choices, L) inputs -> one score per choice from the pooled output; cross-entropy over choices."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        self.rembert = RemBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init(self.classifier)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, choices, L)
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, choices, L, input_embedding_size)
        labels: torch.Tensor | None = None,  # (B,) index of the right choice
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MultipleChoiceModelOutput | tuple[Any, ...]:
        source = input_ids if input_ids is not None else inputs_embeds
        if source is None:
            raise ValueError("pass exactly one of input_ids and inputs_embeds (got neither)")
        if source.dim() != (3 if input_ids is not None else 4):
            raise ValueError(
                f"multiple-choice inputs must be (batch, choices, seqlen[, embed]), got shape "
                f"{tuple(source.shape)}"
            )
        num_choices = source.shape[1]
        for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                             ("position_ids", position_ids)):
            # Per choice (B, choices, L) or already flattened (B*choices, L), as transformers views them;
            # position_ids may also be one row shared by all.
            allowed = [tuple(source.shape[:3]), (source.shape[0] * num_choices, source.shape[2])]
            allowed += [(1, source.shape[2])] if name == "position_ids" else []
            if isinstance(tensor, torch.Tensor) and tuple(tensor.shape) not in allowed:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}; multiple-choice inputs of shape "
                                 f"{tuple(source.shape)} need {' or '.join(map(str, allowed))}")

        def flat(t: torch.Tensor | None, trailing: int = 1) -> torch.Tensor | None:
            return None if t is None else t.reshape(-1, *t.shape[t.dim() - trailing :])

        enc = self.rembert._encode(
            flat(input_ids),
            flat(attention_mask),
            flat(token_type_ids),
            flat(position_ids),
            head_mask,
            flat(inputs_embeds, 2),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(self.dropout(enc.pooled)).view(-1, num_choices)  # (B, choices)
        loss = None
        if labels is not None:
            _check_labels("labels", labels, (logits.shape[0],), num_choices, logits)
            loss = F.cross_entropy(logits, labels)
        out = MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=enc.padded_hidden_states(), attentions=enc.attentions
        )
        return out if _return_dict(self.config, return_dict) else out.to_tuple()


class RemBertForTokenClassification(RemBertPreTrainedModel):
    """Per-token dropout -> linear (NER, POS); cross-entropy with -100 ignored."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        _check_num_labels(type(self).__name__, config)
        self.num_labels = config.num_labels
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init(self.classifier)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B, L), -100 = ignored
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> TokenClassifierOutput | tuple[Any, ...]:
        enc = self.rembert._encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = enc.pad(self.classifier(self.dropout(enc.hidden)))  # (B, L, num_labels)
        loss = None
        if labels is not None:
            _check_labels("labels", labels, (enc.batch, enc.seqlen), self.num_labels, logits)
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        out = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=enc.padded_hidden_states(), attentions=enc.attentions
        )
        return out if _return_dict(self.config, return_dict) else out.to_tuple()


class RemBertForQuestionAnswering(RemBertPreTrainedModel):
    """Extractive QA: per-token start/end logits; loss = mean of the two cross-entropies, positions
    outside the sequence ignored (clamped to L, as transformers does, without modifying the inputs)."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"RemBertForQuestionAnswering needs num_labels=2 (start and end logits), got "
                             f"{config.num_labels}; pass num_labels=2")
        self.num_labels = config.num_labels
        self.rembert = RemBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init(self.qa_outputs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,  # (B,)
        end_positions: torch.Tensor | None = None,  # (B,)
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> QuestionAnsweringModelOutput | tuple[Any, ...]:
        enc = self.rembert._encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = enc.pad(self.qa_outputs(enc.hidden))  # (B, L, num_labels)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))  # (B, L)
        loss = None
        if start_positions is not None and end_positions is not None:
            for name, positions in (("start_positions", start_positions), ("end_positions", end_positions)):
                if isinstance(positions, torch.Tensor) and positions.numel() == enc.batch:
                    positions = positions.reshape(-1)
                # Any integer position is allowed: outside [0, L) it is clamped and ignored (transformers).
                _check_labels(name, positions, (enc.batch,), None, start_logits)
                if positions.dtype != torch.int64:
                    raise ValueError(f"{name} must be int64 token positions, got {positions.dtype} "
                                     "(use .long())")
            ignored = start_logits.size(1)
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=ignored)
                + F.cross_entropy(end_logits, end, ignore_index=ignored)
            ) / 2
        out = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=enc.padded_hidden_states(),
            attentions=enc.attentions,
        )
        return out if _return_dict(self.config, return_dict) else out.to_tuple()


# ================================================================================== encoder (classic)
class RemBertEncoder(nn.Module):
    """The embedding projection (input_embedding_size -> hidden) and the stack of layers."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding_hidden_mapping_in = nn.Linear(config.input_embedding_size, config.hidden_size)
        self.layer = nn.ModuleList([RemBertLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False  # see RemBertPreTrainedModel.gradient_checkpointing_enable

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, L, E) embeddings
        attention_mask: torch.Tensor | None,  # additive (B, 1|heads, L, Lk)
        head_masks: list[torch.Tensor | None],  # per layer (1, heads, 1, 1) or None
        encoder_hidden_states: torch.Tensor | None,  # (B, Le, hidden)
        encoder_attention_mask: torch.Tensor | None,  # additive (B, 1, L|1, Le)
        past_key_values: PastKeyValues | None,
        use_cache: bool,
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> tuple[
        torch.Tensor,
        PastKeyValues | None,
        tuple[torch.Tensor, ...] | None,
        tuple[torch.Tensor, ...] | None,
        tuple[torch.Tensor, ...] | None,
    ]:
        """The classic padded path: returns (hidden, presents, all hidden, attentions, cross-attentions)."""
        hidden_states = self.embedding_hidden_mapping_in(hidden_states)  # (B, L, hidden)
        all_hidden: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        cross_attentions: list[torch.Tensor] = []
        presents: list[tuple[torch.Tensor, ...]] = []
        cross = self.config.add_cross_attention and encoder_hidden_states is not None
        recompute = packed.recomputes(self)
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                all_hidden.append(hidden_states)
            layer_args = (hidden_states, attention_mask, head_masks[i], encoder_hidden_states,
                          encoder_attention_mask, past_key_values[i] if past_key_values is not None else None,
                          output_attentions)
            if recompute:
                hidden_states, probs, cross_probs, present = torch.utils.checkpoint.checkpoint(
                    layer, *layer_args, use_reentrant=False)
            else:
                hidden_states, probs, cross_probs, present = layer(*layer_args)
            if use_cache:
                presents.append(present)
            if output_attentions:
                attentions.append(probs)
                if cross:
                    cross_attentions.append(cross_probs)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return (
            hidden_states,
            tuple(presents) if use_cache else None,
            tuple(all_hidden) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None,
            tuple(cross_attentions) if output_attentions and self.config.add_cross_attention else None,
        )


class RemBertLayer(nn.Module):
    """Post-LN block: a = LN(SelfAttn(x) + x); [a = LN(CrossAttn(a, enc) + a)]; x = LN(FFN(a) + a)."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.attention = RemBertAttention(config)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        if self.add_cross_attention:
            self.crossattention = RemBertAttention(config)
        self.intermediate = RemBertIntermediate(config)
        self.output = RemBertOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, L, hidden)
        attention_mask: torch.Tensor | None,
        head_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        past_key_value: tuple[torch.Tensor, ...] | None,  # (k, v[, cross_k, cross_v])
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """Returns (hidden, self-attention probs, cross-attention probs, present key/values)."""
        self_past = past_key_value[:2] if past_key_value is not None else None
        attention_output, probs, present = self.attention(
            hidden_states, attention_mask, head_mask, None, None, self_past, output_attentions
        )
        cross_probs = None
        if self.is_decoder and encoder_hidden_states is not None:
            cross_past = (
                past_key_value[2:] if past_key_value is not None and len(past_key_value) == 4 else None
            )
            attention_output, cross_probs, cross_present = self.crossattention(
                attention_output,
                None,
                head_mask,
                encoder_hidden_states,
                encoder_attention_mask,
                cross_past,
                output_attentions,
            )
            present = present + cross_present
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return layer_output, probs, cross_probs, present


# ================================================================================== attention (classic)
class RemBertAttention(nn.Module):
    """Self- (or cross-) attention and its output projection + residual LayerNorm."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.self = RemBertSelfAttention(config)
        self.output = RemBertSelfOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, L, hidden)
        attention_mask: torch.Tensor | None,
        head_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        past_key_value: tuple[torch.Tensor, ...] | None,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
        mask = encoder_attention_mask if encoder_hidden_states is not None else attention_mask
        context, probs, present = self.self(
            hidden_states, mask, head_mask, encoder_hidden_states, past_key_value, output_attentions
        )
        return self.output(context, hidden_states), probs, present


class RemBertSelfAttention(nn.Module):
    """Multi-head attention with separate query/key/value Linears (transformers' keys).

    The three Linears' parameters are views into one fused (3*hidden, hidden) weight and (3*hidden,)
    bias (see `fused_qkv`), so the packed path runs one QKV GEMM without holding a second copy of
    the weights. Chosen over a cached fused copy because RemBERT's QKV weights are ~22% of the model
    (a copy would cost that much memory again); `load_state_dict` copies into the views in place, and
    `_apply` (`.to()`, `.half()`) and `_post_load` re-fuse after parameters are replaced.
    """

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.is_decoder = config.is_decoder

    def _apply(self, fn: Any, recurse: bool = True) -> RemBertSelfAttention:
        result = super()._apply(fn, recurse)
        fused_qkv(self)  # re-fuses only if the conversion replaced the parameters' storage
        return result

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, L, hidden)
        attention_mask: torch.Tensor | None,  # additive (B, 1|heads, L, Lk)
        head_mask: torch.Tensor | None,  # (1, heads, 1, 1)
        encoder_hidden_states: torch.Tensor | None,  # (B, Le, hidden): cross-attention
        past_key_value: tuple[torch.Tensor, ...] | None,  # (k, v), each (B, heads, past, head_dim)
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """Returns (context (B, L, hidden), probs (B, heads, L, Lk) or None, present (k, v))."""
        query = self._split_heads(self.query(hidden_states))  # (B, heads, L, head_dim)
        if encoder_hidden_states is not None and past_key_value is not None:
            key, value = past_key_value  # cross-attention keys are computed once and reused
        elif encoder_hidden_states is not None:
            key = self._split_heads(self.key(encoder_hidden_states))
            value = self._split_heads(self.value(encoder_hidden_states))
        else:
            key = self._split_heads(self.key(hidden_states))
            value = self._split_heads(self.value(hidden_states))
            if past_key_value is not None:
                key = torch.cat([past_key_value[0], key], dim=2)
                value = torch.cat([past_key_value[1], value], dim=2)
        dropout_p = self.dropout.p if self.training else 0.0
        if output_attentions or head_mask is not None:
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = self.dropout(F.softmax(scores, dim=-1))  # (B, heads, L, Lk)
            if head_mask is not None:
                probs = probs * head_mask
            context = torch.matmul(probs, value)
        else:
            probs = None
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=dropout_p
            )
        context = context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
        return context, probs if output_attentions else None, (key, value)


class RemBertSelfOutput(nn.Module):
    """LN(dropout(dense(context)) + residual)."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


# ================================================================================== feed-forward (classic)
class RemBertIntermediate(nn.Module):
    """act(dense(x)): hidden -> intermediate."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = config.hidden_act

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return ops.bias_act_ref(self.dense(hidden_states), None, self.activation)


class RemBertOutput(nn.Module):
    """LN(dropout(dense(x)) + residual): intermediate -> hidden."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


# ================================================================================== embeddings and heads
class RemBertEmbeddings(nn.Module):
    """Word, position and token-type tables (input_embedding_size wide), their LayerNorm and dropout."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.input_embedding_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.input_embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.input_embedding_size)
        self.LayerNorm = nn.LayerNorm(config.input_embedding_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False
        )

    def reset_position_ids(self) -> None:
        """(Re)build the non-persistent position-id buffer on the tables' device (after a meta build)."""
        count = self.position_embeddings.num_embeddings
        device = self.word_embeddings.weight.device
        self.register_buffer(
            "position_ids", torch.arange(count, device=device).expand((1, -1)), persistent=False
        )


class RemBertPooler(nn.Module):
    """tanh(dense(first-token hidden state))."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:  # (B, hidden) -> (B, hidden)
        return self.activation(self.dense(first_token))


class RemBertLMPredictionHead(nn.Module):
    """decoder(LN(act(dense(x)))): hidden -> output_embedding_size -> vocab (not tied to the input)."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.output_embedding_size)
        self.decoder = nn.Linear(config.output_embedding_size, config.vocab_size)
        self.activation = config.hidden_act
        self.LayerNorm = nn.LayerNorm(config.output_embedding_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return packed.prediction_head_forward(self, hidden_states, self.activation)


class RemBertOnlyMLMHead(nn.Module):
    """`cls.predictions`: the MLM / causal-LM head."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.predictions = RemBertLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


# ================================================================================== helpers
def _flag(config: Any, name: str, value: bool | None) -> bool:
    return value if value is not None else getattr(config, name, False)


def _return_dict(config: Any, value: bool | None) -> bool:
    return (
        value
        if value is not None
        else getattr(config, "use_return_dict", getattr(config, "return_dict", True))
    )


def _past(past_key_values: PastKeyValues | None, cache: PastKeyValues | None) -> PastKeyValues | None:
    if past_key_values is not None and cache is not None:
        raise ValueError(
            "pass the KV cache once: past_key_values or cache (its transformers 5 name), not both"
        )
    return past_key_values if past_key_values is not None else cache


def _check_inputs(
    config: RemBertConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    weight: torch.Tensor,  # the word-embedding table: the device and dtype inputs must match
) -> tuple[int, int]:
    """Types, shapes, devices and dtypes of the inputs (id ranges are checked where the ids are read,
    mask values where the mask is read); returns (B, L). No host sync."""
    named = (("input_ids", input_ids), ("inputs_embeds", inputs_embeds), ("attention_mask", attention_mask),
             ("token_type_ids", token_type_ids), ("position_ids", position_ids))
    for name, tensor in named:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device != weight.device:
            raise ValueError(f"{name} is on {tensor.device} but the model is on {weight.device}; "
                             f"move it with .to({str(weight.device)!r})")
    for name, tensor in named[3:]:
        if tensor is not None and tensor.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be int64 or int32, got {tensor.dtype}")
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("pass exactly one of input_ids and inputs_embeds (got both)")
    if input_ids is None and inputs_embeds is None:
        raise ValueError("pass exactly one of input_ids and inputs_embeds (got neither)")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seqlen), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64 or int32, got {input_ids.dtype}")
        batch, seqlen = input_ids.shape
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.input_embedding_size:
            raise ValueError(
                f"inputs_embeds must be (batch, seqlen, {config.input_embedding_size}), got shape "
                f"{tuple(inputs_embeds.shape)}"
            )
        if inputs_embeds.dtype != weight.dtype:
            raise ValueError(f"inputs_embeds is {inputs_embeds.dtype} but the model is {weight.dtype}; "
                             f"cast it with .to({weight.dtype})")
        batch, seqlen = inputs_embeds.shape[:2]
    if seqlen == 0:
        raise ValueError(f"the inputs have seqlen 0 (shape {(batch, seqlen)}): nothing to encode")
    if token_type_ids is not None and tuple(token_type_ids.shape) != (batch, seqlen):
        raise ValueError(
            f"token_type_ids has shape {tuple(token_type_ids.shape)}; expected {(batch, seqlen)}"
        )
    if position_ids is not None and tuple(position_ids.shape) not in ((batch, seqlen), (1, seqlen)):
        raise ValueError(
            f"position_ids has shape {tuple(position_ids.shape)}; expected {(batch, seqlen)} or {(1, seqlen)}"
        )
    return batch, seqlen


def _check_mask(
    name: str, mask: torch.Tensor | None, batch: int, q_len: int, k_len: int, heads: int | None = None
) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    expected = {2: (batch, k_len), 3: (batch, q_len, k_len)}.get(mask.dim())
    if mask.dim() == 4:
        ok = mask.shape[0] == batch and mask.shape[2:] == (q_len, k_len) and mask.shape[1] in (1, heads)
        expected = (batch, "1|heads", q_len, k_len)
    else:
        ok = expected is not None and tuple(mask.shape) == expected
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}; expected {(batch, k_len)} (2-D), "
            f"{(batch, q_len, k_len)} (3-D) or (batch, 1|heads, {q_len}, {k_len}) (4-D)"
        )


def _check_num_labels(name: str, config: RemBertConfig) -> None:
    if config.num_labels < 1:
        raise ValueError(f"{name} needs num_labels >= 1, got {config.num_labels}")


def _check_past(config: RemBertConfig, past: PastKeyValues | None, batch: int) -> int:
    """Validate a legacy KV cache, every layer; returns the cached length."""
    if past is None:
        return 0
    if not isinstance(past, (tuple, list)) or len(past) != config.num_hidden_layers:
        raise ValueError(
            f"past_key_values must be a tuple of {config.num_hidden_layers} per-layer tuples (the "
            f"legacy format this model returns), got {type(past).__name__}"
            + (f" of length {len(past)}" if isinstance(past, (tuple, list)) else "")
        )
    sizes = (2, 4) if config.add_cross_attention else (2,)
    past_length = None
    for i, layer in enumerate(past):
        if not isinstance(layer, (tuple, list)) or len(layer) not in sizes:
            raise ValueError(
                f"past_key_values[{i}] must be a tuple of {' or '.join(map(str, sizes))} tensors (key, value"
                f"{', cross key, cross value' if config.add_cross_attention else ''}), got "
                f"{type(layer).__name__}"
                + (f" of length {len(layer)}" if isinstance(layer, (tuple, list)) else "")
            )
        for j, tensor in enumerate(layer[:2]):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"past_key_values[{i}][{j}] must be a torch.Tensor, got {type(tensor).__name__}"
                )
            length = tensor.shape[2] if tensor.dim() == 4 else -1
            if past_length is None:
                past_length = length
            expected = (batch, config.num_attention_heads, past_length, config.head_dim)
            if tuple(tensor.shape) != expected or length != past_length:
                raise ValueError(
                    f"past_key_values[{i}][{j}] has shape {tuple(tensor.shape)}; expected ({batch}, "
                    f"{config.num_attention_heads}, past_length, {config.head_dim}) with the same "
                    f"past_length in every layer ({past_length} in the first)"
                )
    return past_length


def _check_labels(
    name: str,
    labels: torch.Tensor,
    shape: tuple[int, ...],  # the shape labels must have (any shape with as many elements when reshaped)
    classes: int | None,  # class ids must lie in [0, classes) or be -100 (ignored); None: float targets
    like: torch.Tensor,  # the logits: labels must be on their device
) -> None:
    """Raise ValueError naming what is wrong with `labels`, before a loss function fails obscurely (or,
    on CUDA, with a device-side assert). One host sync, only when labels are given."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.device != like.device:
        raise ValueError(f"{name} is on {labels.device} but the logits are on {like.device}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(labels.shape)}; expected {shape}")
    if classes is None:
        return
    if labels.dtype != torch.int64:  # what cross_entropy takes (it fails obscurely on int32)
        raise ValueError(f"{name} must be int64 class ids, got {labels.dtype} (use .long())")
    invalid = (labels != -100) & ((labels < 0) | (labels >= classes))
    first = labels.flatten().index_select(0, invalid.flatten().to(torch.uint8).argmax().view(1))[0]
    bad, value = torch.stack([invalid.any().long(), first.long()]).tolist() if labels.numel() else (0, 0)
    if bad:
        raise ValueError(f"{name} contains {value}, outside [0, {classes}) (and not -100, the ignored value)")


def _additive_mask(
    mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
    causal: bool,
    name: str = "attention_mask",
) -> torch.Tensor | None:
    """A (B, 1|heads, q_len, k_len) mask added to the scores: 0 where allowed, finfo.min elsewhere.

    2-D masks mark real keys (combined with the causal triangle for decoders, aligned so the last query
    sees every key); 3-D masks give (query, key) pairs; 4-D bool masks mark allowed pairs and 4-D
    float masks are already additive (transformers 5's convention), used as given.
    """
    keep = None
    if mask is not None:
        if mask.dim() == 4 and mask.dtype != torch.bool:
            return mask.to(dtype)
        if mask.dtype != torch.bool:
            invalid = (mask != 0) & (mask != 1)
            if invalid.any():  # the classic path is the eager one: this sync is not on the fast path
                raise ValueError(f"{name} contains {mask[invalid][0].item():g}; expected 1 (attend) "
                                 "or 0 (masked). An additive mask (0 / -inf) must be 4-D, or turned into 0/1")
        keep = {2: lambda m: m[:, None, None, :], 3: lambda m: m[:, None, :, :], 4: lambda m: m}[mask.dim()](
            mask.ne(0)
        )
    if causal and (mask is None or mask.dim() == 2):
        triangle = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        keep = triangle[None, None] if keep is None else keep & triangle
    if keep is None:
        return None
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)


def _head_masks(
    head_mask: torch.Tensor | None, layers: int, heads: int, dtype: torch.dtype
) -> list[torch.Tensor | None]:
    """(heads,) or (layers, heads) -> per-layer (1, heads, 1, 1) multipliers of attention probabilities."""
    if head_mask is None:
        return [None] * layers
    if head_mask.dim() == 1 and head_mask.shape[0] == heads:
        head_mask = head_mask.expand(layers, heads)
    if tuple(head_mask.shape) != (layers, heads):
        raise ValueError(
            f"head_mask has shape {tuple(head_mask.shape)}; expected ({heads},) or ({layers}, {heads})"
        )
    return [m.to(dtype)[None, :, None, None] for m in head_mask]


def _flat_positions(positions: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """masked_positions as (B, L) bool or (N, 2) (row, col) -> (N,) flat indices into B*L."""
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"masked_positions must be a torch.Tensor, got {type(positions).__name__}")
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch, seqlen):
            raise ValueError(
                f"masked_positions (bool) has shape {tuple(positions.shape)}; expected {(batch, seqlen)}"
            )
        return torch.nonzero(positions.reshape(-1), as_tuple=False).flatten()
    if positions.dim() != 2 or positions.shape[1] != 2 or positions.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"masked_positions must be a (batch, seqlen) bool mask or an (N, 2) integer tensor of "
            f"(row, column) pairs, got {positions.dtype} of shape {tuple(positions.shape)}"
        )
    ops.check_ids("masked_positions rows", positions[:, 0], batch, "batch")
    ops.check_ids("masked_positions columns", positions[:, 1], seqlen, "seqlen")
    return positions[:, 0].long() * seqlen + positions[:, 1].long()
