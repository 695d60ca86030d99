"""RemBERT's modules for the classic padded path, read top-down: encoder -> layer -> attention ->
feed-forward -> embeddings -> pooler and LM head. Names and state-dict keys are transformers'."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rembert_fast import ops
from rembert_fast.configuration import RemBertConfig
from rembert_fast.hf_base import LayerBase
from rembert_fast.outputs import PastKeyValues
from rembert_fast.packed import fused_qkv


# ================================================================================== encoder (classic)
class RemBertEncoder(nn.Module):
    """The embedding projection (input_embedding_size -> hidden) and the stack of layers."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding_hidden_mapping_in = nn.Linear(config.input_embedding_size, config.hidden_size)
        self.layer = nn.ModuleList([RemBertLayer(config) for _ in range(config.num_hidden_layers)])

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
        for i, layer in enumerate(self.layer):
            if output_hidden_states:
                all_hidden.append(hidden_states)
            layer_args = (hidden_states, attention_mask, head_masks[i], encoder_hidden_states,
                          encoder_attention_mask, past_key_values[i] if past_key_values is not None else None,
                          output_attentions)
            # A layer with `gradient_checkpointing` set recomputes itself in backward (see LayerBase).
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


class RemBertLayer(LayerBase):
    """Post-LN block: a = LN(SelfAttn(x) + x); [a = LN(CrossAttn(a, enc) + a)]; x = LN(FFN(a) + a).

    A transformers `GradientCheckpointingLayer` (standalone: its equivalent): with `gradient_checkpointing`
    set by the model's `activation_checkpointing_enable`, a training forward recomputes in backward."""

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
        if config.hidden_size % config.num_attention_heads != 0:  # transformers' check and message
            raise ValueError(
                f"The hidden size ({config.hidden_size}) is not a multiple of the number of attention "
                f"heads ({config.num_attention_heads})"
            )
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
        return prediction_head_forward(self, hidden_states, self.activation)


def prediction_head_forward(
    head: nn.Module,  # a RemBertLMPredictionHead (ours or transformers'): dense, LayerNorm, decoder
    hidden_states: torch.Tensor,  # (..., hidden)
    activation: str,  # config.hidden_act
) -> torch.Tensor:
    """decoder(LN(act(dense(x)))) -> (..., vocab), with bias+activation and the LayerNorm through the ops;
    also the forward `optimize()` gives transformers' LM head."""
    x = ops.linear_bias_act(hidden_states, head.dense.weight, head.dense.bias, activation)
    x = ops.layer_norm(x, head.LayerNorm.weight, head.LayerNorm.bias, head.LayerNorm.eps)
    return head.decoder(x)


class RemBertOnlyMLMHead(nn.Module):
    """`cls.predictions`: the MLM / causal-LM head."""

    def __init__(self, config: RemBertConfig) -> None:
        super().__init__()
        self.predictions = RemBertLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)
