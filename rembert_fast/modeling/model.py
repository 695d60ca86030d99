"""RemBertModel: validate the inputs, pick the path (`packed.packable`), run the encoder and the
pooler. Both paths hand their result to the heads as one `packed.EncodedBatch`."""

from __future__ import annotations

from typing import Any

import torch

from rembert_fast import packed
from rembert_fast.configuration import RemBertConfig
from rembert_fast.modeling.flattened import (
    block_diagonal_mask,
    check_max_lengths,
    flattened_sequences,
    restarting_positions,
)
from rembert_fast.modeling.inputs import (
    additive_mask,
    check_inputs,
    check_mask,
    check_past,
    check_rows_have_tokens,
    config_flag,
    one_cache,
    per_layer_head_masks,
    return_dict_of,
)
from rembert_fast.modeling.modules import RemBertEmbeddings, RemBertEncoder, RemBertPooler
from rembert_fast.modeling.pretrained import RemBertPreTrainedModel
from rembert_fast.outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    PastKeyValues,
)
from rembert_fast.packed import EncodedBatch, embed_tokens


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
        cu_seq_lens_q: torch.Tensor | None = None,  # padding-free batches: see modeling.flattened
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions | tuple[Any, ...]:
        enc = self.encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            head_mask,
            inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            past_key_values=one_cache(past_key_values, cache),
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            flattening=(cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k),
        )
        sequence_output = enc.padded()  # (B, L, hidden)
        hidden_states = enc.padded_hidden_states()
        if not return_dict_of(self.config, return_dict):
            extras = (enc.past_key_values, hidden_states, enc.attentions, enc.cross_attentions)
            return (sequence_output, enc.pooled) + tuple(x for x in extras if x is not None)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=enc.pooled,
            hidden_states=hidden_states,
            cache=enc.past_key_values,
            attentions=enc.attentions,
            cross_attentions=enc.cross_attentions,
        )

    def encode(
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
        padding_positions: bool = False,
        flattening: tuple[Any, ...] = (None, None, None, None),
    ) -> EncodedBatch:
        """Validate the inputs, pick the path, run the encoder and the pooler.

        `padding_positions=True` asks for transformers' hidden states at padding positions too (a head
        whose loss reads them): the padded path runs even where the packed one could. `flattening` is
        (cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k) as a padding-free collator passes
        them; a padding-free batch (see `modeling.flattened`) runs one sequence per restart on either
        path, and the pooler reads each sequence's first token (`pooled` is (sequences, hidden))."""
        config = self.config
        output_attentions = bool(config_flag(config, "output_attentions", output_attentions))
        output_hidden_states = bool(config_flag(config, "output_hidden_states", output_hidden_states))
        use_cache = bool(use_cache if use_cache is not None else config.use_cache) and config.is_decoder
        batch, seqlen = check_inputs(config, input_ids, inputs_embeds, token_type_ids, position_ids,
                                      attention_mask, self.embeddings.word_embeddings.weight)
        past_length = check_past(config, past_key_values, batch)
        check_mask("attention_mask", attention_mask, batch, seqlen, seqlen + past_length,
                    config.num_attention_heads)
        sequences = None
        if past_key_values is None:
            sequences = flattened_sequences(input_ids if input_ids is not None else inputs_embeds,
                                            attention_mask, position_ids, flattening[0], flattening[1])
            check_max_lengths(sequences, flattening[2], flattening[3])
            if sequences is not None and position_ids is None:  # each sequence counts from 0, as alone
                position_ids = restarting_positions(sequences[0], seqlen)
        if position_ids is None and seqlen + past_length > config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seqlen + past_length} (input {seqlen} + cached {past_length}) exceeds "
                f"max_position_embeddings={config.max_position_embeddings}"
            )
        packable = not padding_positions and packed.packable(
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
                sequences,
            )
        if sequences is not None:
            # The classic path's attention stays inside each sequence through a block-diagonal mask.
            attention_mask = block_diagonal_mask(sequences[0], seqlen, bool(config.is_decoder))
        if not use_cache and past_key_values is None:
            # (The packed path checks in its one host read.) Decoding with a cache may feed a chunk that
            # is all padding for a left-padded row: its outputs are padding, the cache stays right.
            check_rows_have_tokens(attention_mask)
        enc = self._encode_classic(
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
        if sequences is not None and self.pooler is not None:
            enc.pooled = self.pooler(enc.hidden.index_select(0, sequences[0][:-1].long()))
        return enc

    def _encode_packed(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        output_hidden_states: bool,
        sequences: tuple[torch.Tensor, int] | None,
    ) -> EncodedBatch:
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
            sequences=sequences,
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
    ) -> EncodedBatch:
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
        mask = additive_mask(
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
            check_mask(
                "encoder_attention_mask",
                encoder_attention_mask,
                batch,
                seqlen,
                encoder_hidden_states.shape[1],
                config.num_attention_heads,
            )
        encoder_mask = (
            additive_mask(
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
        head_masks = per_layer_head_masks(head_mask, config.num_hidden_layers, config.num_attention_heads,
                                          dtype)
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
        return EncodedBatch.from_padded(
            sequence,
            pooled=pooled,
            hidden_states=hidden_states,
            attentions=attentions,
            cross_attentions=cross_attentions,
            past_key_values=presents,
        )
