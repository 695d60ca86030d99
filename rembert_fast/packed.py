"""The packed path: RemBERT's encoder on the real tokens of a batch only.

Data flow (see docs/architecture.md): unpad once at the encoder's entry (`padding.unpad_input`: the
real tokens of a (B, L) batch become (T, ...) rows, with `cu_seqlens` and `max_seqlen` for varlen
attention; a row with no real token raises `padding.NoRealTokensError`), embed the packed ids
(`embed_tokens`), run every layer on (T, hidden) rows (`packed_layer_forward`: one fused QKV GEMM,
varlen attention, then the GEMM + epilogue ops `linear_residual_layer_norm` and `linear_bias_act`),
and pad once at the exit (`EncodedBatch.pad`). Heads that need one row per sequence read
`EncodedBatch.first_tokens()` without padding.

Every function here reads modules by transformers' attribute names only (`attention.self.query`,
`intermediate.dense`, `embeddings.LayerNorm`, ...), so the same code runs rembert_fast's models and
transformers' (patched by `rembert_fast.optimize`). `packable` is the one rule deciding whether a call
can take this path; everything else runs the classic padded forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rembert_fast import ops, padding

__all__ = [
    "EncodedBatch",
    "packable",
    "plain_modules",
    "fused_qkv",
    "embed_tokens",
    "packed_layer_forward",
    "encode_rows",
    "packed_encoder_forward",
    "recomputes",
    "global_hooks",
]


# ----------------------------------------------------------------------------------------- the type
@dataclass
class EncodedBatch:
    """An encoder's output for a batch as rows, on either path, with what is needed to put rows back in
    (B, L) form: what every head reads.

    On the packed path the rows are the real tokens only (T of them, batch-major) and `indices` maps
    them into the padded batch; with `indices=None` every position of the (B, L) batch is a row (no
    mask, or the classic padded path), in row-major order, and T = B * L.
    """

    hidden: torch.Tensor  # (T, hidden) last hidden state of each row
    indices: torch.Tensor | None  # (T,) int64 flat indices into B*L; None: every position is a row
    cu_seqlens: torch.Tensor  # (B+1,) int32 cumulative row counts per sequence, from 0
    max_seqlen: int  # the longest sequence's row count
    batch: int  # B
    seqlen: int  # L
    # (B, L, hidden) each, zeros at padding: the embeddings, then each layer's output. Each is the tensor the
    # next layer's input was computed from, so a gradient w.r.t. it is the model's (attribution methods).
    hidden_states: tuple[torch.Tensor, ...] | None = None
    pooled: torch.Tensor | None = None  # (B, hidden) pooler output, set by the model
    attentions: tuple[torch.Tensor, ...] | None = None  # classic path only: (B, heads, L, Lk) per layer
    cross_attentions: tuple[torch.Tensor, ...] | None = None  # classic path only
    past_key_values: Any = None  # classic path only: the legacy per-layer KV cache

    @classmethod
    def from_padded(cls, sequence: torch.Tensor, **extras: Any) -> EncodedBatch:
        """A (B, L, hidden) padded result as rows (a view: every position is a row)."""
        batch, seqlen = sequence.shape[:2]
        cu_seqlens = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=sequence.device)
        return cls(sequence.reshape(batch * seqlen, sequence.shape[-1]), None, cu_seqlens, seqlen, batch,
                   seqlen, **extras)

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-row values (T, ...) of this batch -> (B, L, ...); padding positions are zeros."""
        if self.indices is None:
            return rows.view(self.batch, self.seqlen, *rows.shape[1:])
        return padding.pad_input(rows, self.indices, self.batch, self.seqlen)

    def padded(self) -> torch.Tensor:
        """(B, L, hidden) last hidden state; zeros at padding positions."""
        return self.pad(self.hidden)

    def padded_hidden_states(self) -> tuple[torch.Tensor, ...] | None:
        """Each stage's (B, L, hidden) hidden state, or None when they were not asked for."""
        return self.hidden_states

    def first_tokens(self) -> torch.Tensor:
        """(B, hidden): each sequence's first row (its [CLS] on the packed path); zeros for a sequence
        without rows."""
        if self.hidden.shape[0] == 0:
            return self.hidden.new_zeros(self.batch, self.hidden.shape[-1])
        starts = self.cu_seqlens[:-1].long()
        empty = self.cu_seqlens[1:].long() == starts
        rows = self.hidden.index_select(0, starts.clamp(max=self.hidden.shape[0] - 1))
        return rows.masked_fill(empty[:, None], 0.0)

    def rows_at(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, hidden): the hidden rows at flat (B*L) positions `flat` (N,), without padding the whole
        batch; a padding position reads a zero row, as `pad` would give."""
        if self.indices is None:
            return self.hidden.index_select(0, flat)
        lookup = torch.full((self.batch * self.seqlen,), -1, dtype=torch.long, device=flat.device)
        lookup[self.indices] = torch.arange(self.indices.shape[0], device=flat.device)
        rows = lookup.index_select(0, flat)
        picked = self.hidden.index_select(0, rows.clamp(min=0))
        return picked.masked_fill((rows < 0)[:, None], 0.0)


# ----------------------------------------------------------------------------------------- the rule
def packable(
    model: nn.Module,  # a RemBertModel (ours or transformers'): config, embeddings, encoder, training
    attention_mask: torch.Tensor | None,
    *,
    output_attentions: bool | None = None,  # None: config.output_attentions
    use_cache: bool | None = None,  # None: config.use_cache (a cache is only ever returned by decoders)
    head_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    past_key_values: Any = None,
) -> bool:
    """Whether a forward call with these arguments gives its answer on the packed path.

    The packed path computes each real token's hidden state from the real tokens of its own sequence
    (causally for a decoder); it has no attention probabilities, head masks, 3-D/4-D masks,
    cross-attention or KV cache, no attention-probability dropout, and runs the ops' float dtypes and
    activations. Any call that needs one of those runs the classic padded forward. Hidden dropout and
    gradient checkpointing in training are applied on the packed path.
    """
    config = model.config
    if output_attentions is None:
        output_attentions = getattr(config, "output_attentions", False)
    if use_cache is None:
        use_cache = getattr(config, "use_cache", False)
    returns_cache = bool(use_cache) and bool(config.is_decoder)
    return (
        (attention_mask is None or attention_mask.dim() == 2)
        and not output_attentions
        and not returns_cache
        and head_mask is None
        and encoder_hidden_states is None
        and encoder_attention_mask is None
        and past_key_values is None
        and isinstance(config.hidden_act, str) and config.hidden_act in ops.ACTIVATIONS
        and model.embeddings.word_embeddings.weight.dtype in ops.FLOAT_DTYPES
        and not (model.training and any(layer.attention.self.dropout.p > 0 for layer in model.encoder.layer))
        and plain_modules(model)
    )


_PLAIN_TORCH = (nn.Linear, nn.Embedding, nn.LayerNorm)


def plain_modules(model: nn.Module) -> bool:
    """Whether every weight-holding module of the embeddings and encoder is a plain torch layer (or
    RemBERT's own), no layer is wrapped by PEFT (`base_layer`), and no module of the encoder has a
    forward hook or pre-hook (nor a global one is set).

    The packed path reads `.weight`/`.bias` of these modules instead of calling them, so a wrapped layer
    (PEFT's LoRA, a quantized Linear, a hooked replacement) or a layer sharded by FSDP2's `fully_shard`
    (whose forward gathers its parameters) would be bypassed, and so would a hook on a layer (activation
    capture, FSDP's unsharding): such a model runs the classic path, which calls every module. The
    embeddings' hooks do not count there (transformers' `enable_input_require_grads`, which activation
    checkpointing adds, is one). An `optimize()`d transformers model also asks that no module has a
    forward hook (`patching.reads_what_it_would_call`).
    """
    if global_hooks():
        return False
    for part in (model.embeddings, model.encoder):
        for module in part.modules():
            if part is model.encoder and (module._forward_hooks or module._forward_pre_hooks):
                return False
            if hasattr(module, "base_layer") or _sharded(module):  # PEFT's wrapper of a layer; FSDP2
                return False
            kind = type(module)
            if (module._parameters and kind not in _PLAIN_TORCH
                    and not kind.__module__.startswith(("rembert_fast.", "transformers.models.rembert."))):
                return False
    return True


def global_hooks() -> bool:
    """Whether a global forward hook or pre-hook is set (`register_module_forward_hook`): it would run on
    every module the packed path reads instead of calling."""
    hooks = torch.nn.modules.module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)


def _sharded(module: nn.Module) -> bool:
    """A module FSDP2's `fully_shard` manages: its parameters are gathered by its own forward's hooks,
    which reading them instead of calling the module would skip."""
    return any(cls.__name__ == "FSDPModule" for cls in type(module).__mro__)


# ----------------------------------------------------------------------------------------- fused QKV
_FUSED = "_rembert_fast_fused_qkv"


def fused_qkv(attention: nn.Module, rebuild: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (3*H, hidden) weight and (3*H,) bias for a module with `query`, `key` and `value` Linears.

    The first call concatenates the three weights into one buffer and points the Linears'
    parameters at views of it (same values, same state-dict keys, no second copy), caching the buffer
    on the module. Later calls check, by data pointer, that the parameters still view the buffer (a
    `.to()`, `load_state_dict(assign=True)` or a replaced parameter breaks that) and re-fuse if not.
    In-place updates (`load_state_dict`, optimizer steps) write through the views. Works on
    transformers' `RemBertSelfAttention` as well as ours.
    """
    linears = (attention.query, attention.key, attention.value)
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) != all(has_bias):
        raise ValueError(f"query/key/value must all have biases or none; got {has_bias}")
    cached = attention.__dict__.get(_FUSED)
    if not rebuild and cached is not None and _views_of(linears, *cached):
        return cached
    with torch.inference_mode(False), torch.no_grad():
        weight = torch.cat([lin.weight for lin in linears])  # (3H, hidden)
        bias = torch.cat([lin.bias for lin in linears]) if all(has_bias) else None  # (3H,)
        rows = linears[0].weight.shape[0]
        for i, lin in enumerate(linears):
            lin.weight.data = weight[i * rows : (i + 1) * rows]
            if bias is not None:
                lin.bias.data = bias[i * rows : (i + 1) * rows]
    attention.__dict__[_FUSED] = (weight, bias)
    return weight, bias


def _views_of(linears: tuple[nn.Linear, ...], weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether each Linear's weight/bias is the i-th contiguous third of the fused buffers."""
    rows = linears[0].weight.shape[0]
    if weight.dtype != linears[0].weight.dtype or weight.device != linears[0].weight.device:
        return False
    for i, lin in enumerate(linears):
        w = lin.weight
        if w.shape != (rows, weight.shape[1]) or not w.is_contiguous():
            return False
        if w.data_ptr() != weight.data_ptr() + i * w.numel() * w.element_size():
            return False
        if bias is not None and lin.bias.data_ptr() != bias.data_ptr() + i * rows * bias.element_size():
            return False
    return True


def _qkv_weights(attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused buffers for inference; under autograd a differentiable concatenation instead, and so
    while torch.compile traces (the buffers' pointer check cannot be traced, and a buffer used
    unchecked could be stale after parameters were replaced)."""
    linears = (attention.query, attention.key, attention.value)
    if torch.compiler.is_compiling() or (
        torch.is_grad_enabled() and any(p.requires_grad for lin in linears for p in lin.parameters())
    ):
        bias = torch.cat([lin.bias for lin in linears]) if linears[0].bias is not None else None
        return torch.cat([lin.weight for lin in linears]), bias
    return fused_qkv(attention)


# ----------------------------------------------------------------------------------------- forwards
def _packed_attention(
    q: torch.Tensor,  # (T, heads, head_dim) strided views of the QKV GEMM's output
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,  # (B+1,) int32
    max_seqlen: int,
    causal: bool,
) -> torch.Tensor:
    """(T, heads*head_dim) context. A batch whose sequences all have max_seqlen tokens is a plain
    (B, L) batch: the padded entry then needs no mask and no per-sequence bookkeeping."""
    tokens, batch = q.shape[0], cu_seqlens.shape[0] - 1
    if tokens == batch * max_seqlen:
        shape = (batch, max_seqlen)
        out = ops.attention_padded(
            q.unflatten(0, shape), k.unflatten(0, shape), v.unflatten(0, shape), None, causal=causal
        )
    else:
        out = ops.attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=causal)
    return out.reshape(tokens, q.shape[1] * q.shape[2])


def _linear_residual_norm(
    dense: nn.Linear, norm: nn.LayerNorm, x: torch.Tensor, residual: torch.Tensor, dropout_p: float
) -> torch.Tensor:
    """LN(dropout(dense(x)) + residual); without dropout one GEMM + epilogue op."""
    if dropout_p > 0.0:
        y = F.dropout(F.linear(x, dense.weight, dense.bias), dropout_p, training=True)
        return ops.layer_norm(y, norm.weight, norm.bias, norm.eps, residual=residual)
    return ops.linear_residual_layer_norm(x, dense.weight, dense.bias, residual, norm.weight, norm.bias,
                                          norm.eps)


def packed_layer_forward(
    layer: nn.Module,  # a RemBertLayer (ours or transformers'), without cross-attention
    hidden: torch.Tensor,  # (T, hidden) packed real tokens
    cu_seqlens: torch.Tensor,  # (B+1,) int32 cumulative lengths
    max_seqlen: int,
    activation: str,  # config.hidden_act, transformers' name ("gelu" = exact erf)
    causal: bool = False,  # config.is_decoder
) -> torch.Tensor:
    """One post-LN block on packed rows -> (T, hidden). Hidden dropout applies when `layer.training`.

    qkv = x Wqkv^T + bqkv (one GEMM) -> varlen attention on strided q/k/v views -> LN(ctx Wo^T + bo + x)
    -> act(a W1^T + b1) -> LN(f W2^T + b2 + a). Attention-probability dropout is not applied here:
    the caller sends training with attention dropout to the classic path.
    """
    attention = layer.attention.self
    tokens = hidden.shape[0]
    heads, head_dim = attention.num_attention_heads, attention.attention_head_size
    dropout_p = layer.attention.output.dropout.p if layer.training else 0.0
    weight, bias = _qkv_weights(attention)
    qkv = F.linear(hidden, weight, bias).view(tokens, 3, heads, head_dim)  # (T, 3, heads, head_dim)
    q, k, v = qkv.unbind(1)  # each (T, heads, head_dim), strided, no copies
    context = _packed_attention(q, k, v, cu_seqlens, max_seqlen, causal)  # (T, H)
    a = _linear_residual_norm(
        layer.attention.output.dense, layer.attention.output.LayerNorm, context, hidden, dropout_p
    )  # (T, hidden)
    dense = layer.intermediate.dense
    f = ops.linear_bias_act(a, dense.weight, dense.bias, activation)  # (T, intermediate)
    return _linear_residual_norm(layer.output.dense, layer.output.LayerNorm, f, a, dropout_p)  # (T, hidden)


def embed_tokens(
    embeddings: nn.Module,  # RemBertEmbeddings (ours or transformers')
    projection: nn.Linear | None,  # encoder.embedding_hidden_mapping_in, or None to stop at E
    input_ids: torch.Tensor | None,  # (...) int
    token_type_ids: torch.Tensor,  # (...) int
    position_ids: torch.Tensor,  # (...) int
    inputs_embeds: torch.Tensor | None = None,  # (..., E) instead of input_ids
    ids_checked: bool = False,  # the ids were checked against their tables on the host (`ops.embed`)
) -> torch.Tensor:
    """LN(word[ids] + type[tt] + pos[pos]) -> dropout (training) -> optional projection; (..., E or hidden).

    Without dropout the projection runs inside `ops.embed` (fused on CUDA). Ids outside their tables
    raise ValueError naming the value (unless `ids_checked`). When the word table takes gradients and
    the padding id is among the ids (one host read, in training only), words are looked up by the
    nn.Embedding itself, so that its `padding_idx` row gets no gradient (nn.Embedding's contract, kept by
    transformers), which the fused lookup would give it.
    """
    words = embeddings.word_embeddings
    if (inputs_embeds is None and words.padding_idx is not None and torch.is_grad_enabled()
            and words.weight.requires_grad and bool((input_ids == words.padding_idx).any())):
        ops.check_ids("input_ids", input_ids, words.num_embeddings, "vocab_size")
        inputs_embeds = words(input_ids)
    dropout_p = embeddings.dropout.p if embeddings.training else 0.0
    fuse_projection = projection is not None and dropout_p == 0.0
    norm = embeddings.LayerNorm
    if inputs_embeds is None:
        x = ops.embed(
            input_ids,
            position_ids,
            token_type_ids,
            embeddings.word_embeddings.weight,
            embeddings.position_embeddings.weight,
            embeddings.token_type_embeddings.weight,
            norm.weight,
            norm.bias,
            norm.eps,
            projection.weight if fuse_projection else None,
            projection.bias if fuse_projection else None,
            ids_checked=ids_checked,
        )
        if fuse_projection:
            return x
    else:
        ops.check_ids(
            "token_type_ids",
            token_type_ids,
            embeddings.token_type_embeddings.num_embeddings,
            "type_vocab_size",
        )
        ops.check_ids(
            "position_ids",
            position_ids,
            embeddings.position_embeddings.num_embeddings,
            "max_position_embeddings",
        )
        x = inputs_embeds + embeddings.token_type_embeddings(token_type_ids)
        x = x + embeddings.position_embeddings(position_ids)
        x = norm(x)
    if dropout_p > 0.0:
        x = F.dropout(x, dropout_p, training=True)
    return projection(x) if projection is not None else x


def packed_encoder_forward(
    embeddings: nn.Module,  # RemBertEmbeddings (ours or transformers')
    encoder: nn.Module,  # RemBertEncoder: .embedding_hidden_mapping_in and .layer
    input_ids: torch.Tensor | None,  # (B, L) int
    attention_mask: torch.Tensor | None,  # (B, L), non-zero = real token; None = no padding
    token_type_ids: torch.Tensor | None,  # (B, L); default zeros
    position_ids: torch.Tensor | None,  # (B, L) or (1, L); default: the index in the padded row
    config: Any,  # RemBertConfig (ours or transformers'): hidden_act, is_decoder
    inputs_embeds: torch.Tensor | None = None,  # (B, L, E) instead of input_ids
    output_hidden_states: bool = False,
    sequences: tuple[torch.Tensor, int] | None = None,  # a padding-free row: (n+1,) int32 offsets, max len
) -> EncodedBatch:
    """Unpad once, embed and run every layer on the real tokens only; see `EncodedBatch`.

    Padding positions keep transformers' position ids (left padding and holes in the mask give the
    same numbers). One host read (token count and max_seqlen) when a mask is given, none without.
    A mask row with no real token raises `padding.NoRealTokensError` naming the row. `sequences` (no
    mask, one row: a padding-free batch, see `modeling.flattened`) splits the row into the sequences it
    concatenates: attention stays inside each (the caller gives the position ids).
    """
    source = input_ids if input_ids is not None else inputs_embeds
    batch, seqlen = source.shape[:2]
    device = source.device
    if attention_mask is None:
        indices = None
        cu_seqlens = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
        max_seqlen = seqlen
        packed_source = source.reshape(batch * seqlen, *source.shape[2:])
        default_positions = torch.arange(seqlen, device=device).repeat(batch)
        if sequences is not None:
            cu_seqlens, max_seqlen = sequences
    else:
        packed_source, indices, cu_seqlens, max_seqlen = padding.unpad_input(source, attention_mask,
                                                                             allow_empty_rows=False)
        default_positions = indices % seqlen

    def gather(t: torch.Tensor) -> torch.Tensor:  # (B, L) -> (T,)
        flat = t.expand(batch, seqlen).reshape(-1)
        return flat if indices is None else flat.index_select(0, indices)

    positions = gather(position_ids) if position_ids is not None else default_positions
    token_types = gather(token_type_ids) if token_type_ids is not None else torch.zeros_like(positions)
    all_hidden: list[torch.Tensor] | None = [] if output_hidden_states else None

    def keep(rows: torch.Tensor) -> torch.Tensor:
        """Pad `rows` into the hidden states returned and go on from the padded tensor (a differentiable
        gather), so that each returned state is part of the graph, as in transformers."""
        state = padding.pad_input(rows, indices, batch, seqlen) if indices is not None else rows.view(
            batch, seqlen, rows.shape[-1])
        all_hidden.append(state)
        flat = state.reshape(batch * seqlen, state.shape[-1])
        return flat if indices is None else flat.index_select(0, indices)

    hidden = encode_rows(
        embeddings,
        encoder,
        config,
        packed_source if input_ids is not None else None,
        token_types,
        positions,
        cu_seqlens,
        max_seqlen,
        inputs_embeds=packed_source if input_ids is None else None,
        keep=keep if all_hidden is not None else None,
    )
    return EncodedBatch(hidden, indices, cu_seqlens, max_seqlen, batch, seqlen,
                        hidden_states=tuple(all_hidden) if all_hidden else None)


def encode_rows(
    embeddings: nn.Module,  # RemBertEmbeddings (ours or transformers')
    encoder: nn.Module,  # RemBertEncoder: .embedding_hidden_mapping_in and .layer
    config: Any,  # RemBertConfig (ours or transformers'): hidden_act, is_decoder
    input_ids: torch.Tensor | None,  # (T,) int packed ids
    token_type_ids: torch.Tensor,  # (T,) int
    position_ids: torch.Tensor,  # (T,) int
    cu_seqlens: torch.Tensor,  # (N+1,) int32; may describe empty sequences
    max_seqlen: int,  # an upper bound of the sequence lengths
    *,
    inputs_embeds: torch.Tensor | None = None,  # (T, E) instead of input_ids
    keep: Callable[[torch.Tensor], torch.Tensor] | None = None,  # each stage's rows -> the rows to go on from
    ids_checked: bool = False,  # the ids were checked on the host already (`ops.embed`)
) -> torch.Tensor:
    """Embed packed rows and run every layer: (T, hidden). The one layer loop of the packed path; in
    inference with `ids_checked` it reads nothing back to the host, so the CUDA-graph runner captures it
    as it is. `keep`, when given, sees each stage's rows (the embeddings, then each layer's output) and
    returns the rows the next stage reads: `packed_encoder_forward` keeps the hidden states there."""
    hidden = embed_tokens(embeddings, encoder.embedding_hidden_mapping_in, input_ids, token_type_ids,
                          position_ids, inputs_embeds, ids_checked=ids_checked)  # (T, hidden)
    if keep is not None:
        hidden = keep(hidden)
    for layer in encoder.layer:
        layer_args = (layer, hidden, cu_seqlens, max_seqlen, config.hidden_act, bool(config.is_decoder))
        if recomputes(layer):  # the recomputation the layer's own forward would do (see recomputes)
            hidden = layer._gradient_checkpointing_func(packed_layer_forward, *layer_args)
        else:
            hidden = packed_layer_forward(*layer_args)
        if keep is not None:
            hidden = keep(hidden)
    return hidden


def recomputes(layer: nn.Module) -> bool:
    """Whether a RemBertLayer (ours or transformers', both `GradientCheckpointingLayer`s) recomputes in
    backward: its `gradient_checkpointing` flag is set (by the model's `activation_checkpointing_enable`,
    with the recomputation in `layer._gradient_checkpointing_func`), it is training and gradients are
    recorded."""
    enabled = bool(getattr(layer, "gradient_checkpointing", False))
    return enabled and layer.training and torch.is_grad_enabled()
