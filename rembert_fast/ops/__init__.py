"""The op API: one function per fused op (and per GEMM + epilogue), each validating its arguments
(`contract`) and dispatching to a backend (`dispatch`): the Triton kernels, the compiled extension,
or the eager references (`reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rembert_fast.ops import contract, dispatch, library
from rembert_fast.ops.contract import ACTIVATIONS, FLOAT_DTYPES, check_ids
from rembert_fast.ops.dispatch import (
    BACKENDS,
    backend_for,
    backend_info,
    extension_takes_embed,
    gemm_takes_bias,
    requested_backend,
    triton_status,
    use_backend,
)
from rembert_fast.ops.reference import (
    attention_padded_ref,
    attention_per_sequence,
    attention_ref,
    bias_act_ref,
    embed_ref,
    layer_norm_ref,
)

__all__ = [
    "ACTIVATIONS", "BACKENDS", "FLOAT_DTYPES", "attention", "attention_padded", "attention_padded_ref",
    "attention_per_sequence", "attention_ref", "backend_for", "backend_info",
    "bias_act", "bias_act_ref", "check_ids", "embed", "embed_ref", "extension_takes_embed",
    "gemm_takes_bias", "layer_norm", "layer_norm_ref", "linear_bias_act", "linear_residual_layer_norm",
    "requested_backend", "triton_status", "use_backend",
]


# ----------------------------------------------------------------------------------------- layer_norm
def layer_norm(
    x: torch.Tensor,  # (..., N) fp32/fp16/bf16
    weight: torch.Tensor,  # (N,)
    bias: torch.Tensor | None,  # (N,)
    eps: float,
    residual: torch.Tensor | None = None,  # (..., N), same shape as x
    x_bias: torch.Tensor | None = None,  # (N,) added to x before the residual (a Linear's bias)
) -> torch.Tensor:
    """LayerNorm(x + x_bias + residual) over the last dimension; statistics in fp32; x's dtype out."""
    contract.check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x is a 0-d tensor; layer_norm normalises the last dimension of (..., N)")
    n = x.shape[-1]
    contract.check_same("weight", weight, x, (n,), (x.dtype, torch.float32))
    contract.check_same("bias", bias, x, (n,), (weight.dtype,))
    contract.check_same("x_bias", x_bias, x, (n,))
    contract.check_same("residual", residual, x, tuple(x.shape))
    eps = contract.check_eps(eps)
    if dispatch.use_triton("layer_norm", x.device, x.dtype, (x, weight, bias, residual, x_bias)):
        from rembert_fast.kernels import layer_norm as kernel

        # Rows wider than the kernel holds in registers run eagerly on `auto` (on `triton` it raises).
        if n <= kernel.MAX_N or requested_backend() == "triton":
            launch = library.layer_norm if torch.compiler.is_compiling() else kernel.layer_norm
            return launch(x, weight, bias, eps, residual, x_bias)
    return layer_norm_ref(x, weight, bias, eps, residual=residual, x_bias=x_bias)


# ----------------------------------------------------------------------------------------- bias_act
def bias_act(
    x: torch.Tensor,  # (..., N) fp32/fp16/bf16
    bias: torch.Tensor | None,  # (N,)
    activation: str = "gelu",  # transformers' name; "gelu" is the exact erf GELU
) -> torch.Tensor:
    """act(x + bias); math in fp32 on the triton backend; x's dtype out."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported; choose one of {ACTIVATIONS}")
    contract.check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x is a 0-d tensor; bias_act takes (..., N)")
    contract.check_same("bias", bias, x, (x.shape[-1],))
    if dispatch.use_triton("bias_act", x.device, x.dtype, (x, bias)):
        from rembert_fast.kernels import activation as kernel

        launch = library.bias_act if torch.compiler.is_compiling() else kernel.bias_act
        return launch(x, bias, activation)
    return bias_act_ref(x, bias, activation)


# ----------------------------------------------------------------------------------------- GEMM + epilogue
def _gemm_then_epilogue_bias(
    epilogue: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x W^T, b) for a Triton epilogue to add b in the pass it makes anyway, or (x W^T + b, None) in one
    addmm where the epilogue runs eagerly (a bias handed to the eager op would be an extra pass). Under
    autocast the GEMM's output is in the autocast dtype while b stays float32: b is cast to it, as
    autocast's own addmm does."""
    if not dispatch.use_triton(epilogue, x.device, x.dtype, (x, weight, bias)):
        return F.linear(x, weight, bias), None
    y = F.linear(x, weight)
    return y, (bias.to(y.dtype) if bias is not None and bias.dtype != y.dtype else bias)


def linear_bias_act(
    x: torch.Tensor,  # (..., in) fp32/fp16/bf16
    weight: torch.Tensor,  # (out, in)
    bias: torch.Tensor | None,  # (out,)
    activation: str = "gelu",  # transformers' name; "gelu" is the exact erf GELU
) -> torch.Tensor:
    """act(x W^T + b) -> (..., out) in the GEMM's output dtype (x's, or autocast's).

    Eager: the bias inside the GEMM (one addmm), then the activation. Triton: the GEMM without bias,
    then the fused `bias_act` kernel adds it. ValueError names a bad shape, dtype, device or activation.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported; choose one of {ACTIVATIONS}")
    contract.check_linear(x, weight, bias)
    return bias_act(*_gemm_then_epilogue_bias("bias_act", x, weight, bias), activation)


def linear_residual_layer_norm(
    x: torch.Tensor,  # (..., in) fp32/fp16/bf16
    weight: torch.Tensor,  # (out, in)
    bias: torch.Tensor | None,  # (out,)
    residual: torch.Tensor,  # (..., out), the GEMM output's shape and dtype
    ln_weight: torch.Tensor,  # (out,)
    ln_bias: torch.Tensor | None,  # (out,)
    eps: float,
) -> torch.Tensor:
    """LayerNorm(x W^T + b + residual) over the last dimension -> (..., out) in the GEMM's output dtype.

    Eager: the bias inside the GEMM (one addmm), then LN(y + residual). Triton: the GEMM without bias,
    then the fused `layer_norm` kernel adds bias and residual in its one pass. ValueError names a bad
    shape, dtype, device or eps.
    """
    width = contract.check_linear(x, weight, bias)
    if tuple(residual.shape) != (*x.shape[:-1], width):
        raise ValueError(f"residual has shape {tuple(residual.shape)}; expected {(*x.shape[:-1], width)}")
    y, x_bias = _gemm_then_epilogue_bias("layer_norm", x, weight, bias)
    return layer_norm(y, ln_weight, ln_bias, eps, residual=residual, x_bias=x_bias)


# ----------------------------------------------------------------------------------------- attention
def attention(
    q: torch.Tensor,  # (Tq, heads, head_dim); may be a strided view of a fused QKV buffer
    k: torch.Tensor,  # (Tk, heads, head_dim)
    v: torch.Tensor,  # (Tk, heads, head_dim)
    cu_seqlens_q: torch.Tensor,  # (B+1,) int32 cumulative query lengths
    cu_seqlens_k: torch.Tensor,  # (B+1,) int32 cumulative key lengths
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    softmax_scale: float | None = None,  # default 1/sqrt(head_dim)
) -> torch.Tensor:
    """Attention over packed variable-length sequences (flash-attention's varlen arguments).

    Returns (Tq, heads, head_dim) in q's dtype. Head dims the kernel does not take fall back to eager.
    The offsets must start at 0, never decrease, end at the row count, and no step may exceed
    max_seqlen: checked on CPU (ValueError), trusted on CUDA.
    """
    contract.check_varlen_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    if dispatch.use_triton("attention", q.device, q.dtype, (q, k, v)):
        from rembert_fast.kernels import attention as kernel

        if q.shape[-1] in kernel.SUPPORTED_HEAD_DIMS:
            launch = library.attention_varlen if torch.compiler.is_compiling() else kernel.attention_varlen
            return launch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                          softmax_scale)
    if q.device.type == "cpu" and not torch.compiler.is_compiling():  # it reads the offsets on the host
        return attention_per_sequence(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=causal,
                                      softmax_scale=softmax_scale)
    return attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                         softmax_scale=softmax_scale)


def attention_padded(
    q: torch.Tensor,  # (B, Lq, heads, head_dim)
    k: torch.Tensor,  # (B, Lk, heads, head_dim)
    v: torch.Tensor,  # (B, Lk, heads, head_dim)
    key_padding_mask: torch.Tensor | None = None,  # (B, Lk) bool/int, non-zero = real key
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention on a padded batch with a key-padding mask; (B, Lq, heads, head_dim) out.

    Rows of padding queries are unspecified. For callers that keep (B, L) tensors; the model's fast
    path uses the packed `attention` instead.
    """
    contract.check_padded_attention_args(q, k, v, key_padding_mask)
    if dispatch.use_triton("attention_padded", q.device, q.dtype, (q, k, v)):
        from rembert_fast.kernels import attention as kernel

        if q.shape[-1] in kernel.SUPPORTED_HEAD_DIMS:
            launch = library.attention_padded if torch.compiler.is_compiling() else kernel.attention_padded
            return launch(q, k, v, key_padding_mask, causal, softmax_scale)
    return attention_padded_ref(q, k, v, key_padding_mask, causal=causal, softmax_scale=softmax_scale)


# ----------------------------------------------------------------------------------------- embed
def embed(
    input_ids: torch.Tensor,  # (...) int64/int32 token ids
    position_ids: torch.Tensor,  # (...) same shape
    token_type_ids: torch.Tensor,  # (...) same shape
    word_weight: torch.Tensor,  # (vocab, E)
    position_weight: torch.Tensor,  # (max_positions, E)
    type_weight: torch.Tensor,  # (type_vocab, E)
    ln_weight: torch.Tensor,  # (E,)
    ln_bias: torch.Tensor,  # (E,)
    eps: float,
    proj_weight: torch.Tensor | None = None,  # (hidden, E): embedding_hidden_mapping_in
    proj_bias: torch.Tensor | None = None,  # (hidden,)
) -> torch.Tensor:
    """LN(word[ids] + type[tt] + pos[pos]) then the optional E->hidden projection; (..., E or hidden).

    Ids outside their table raise ValueError naming the value.
    """
    for name, ids in (("position_ids", position_ids), ("token_type_ids", token_type_ids)):
        if ids.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {tuple(ids.shape)}; input_ids has {tuple(input_ids.shape)}")
    for name, ids in (("input_ids", input_ids), ("position_ids", position_ids),
                      ("token_type_ids", token_type_ids)):
        if ids.device != word_weight.device:
            raise ValueError(f"{name} is on {ids.device} but word_weight is on {word_weight.device}")
    if proj_bias is not None and proj_weight is None:
        raise ValueError("proj_bias was given without proj_weight")
    eps = contract.check_eps(eps)
    contract.check_float("word_weight", word_weight)
    if word_weight.dim() != 2:
        raise ValueError(f"word_weight must be (vocab, E), got shape {tuple(word_weight.shape)}")
    width = word_weight.shape[1]
    for name, table in (("position_weight", position_weight), ("type_weight", type_weight)):
        rows = table.shape[0] if table.dim() == 2 else -1
        contract.check_same(name, table, word_weight, (rows, width))
    contract.check_same("ln_weight", ln_weight, word_weight, (width,), (word_weight.dtype, torch.float32))
    contract.check_same("ln_bias", ln_bias, word_weight, (width,), (ln_weight.dtype,))
    if proj_weight is not None:
        hidden = proj_weight.shape[0] if proj_weight.dim() == 2 else -1
        contract.check_same("proj_weight", proj_weight, word_weight, (hidden, width))
        contract.check_same("proj_bias", proj_bias, word_weight, (hidden,))
    args = (input_ids, position_ids, token_type_ids, word_weight, position_weight, type_weight,
            ln_weight, ln_bias, eps, proj_weight, proj_bias)
    grads = dispatch.needs_autograd(
        (word_weight, position_weight, type_weight, ln_weight, ln_bias, proj_weight)
    )
    if dispatch.backend_for("embed", input_ids.device, word_weight.dtype) == "cuda" and not grads:
        from rembert_fast import extension

        # On `auto`, what the kernel cannot read as it is takes the eager path.
        if extension_takes_embed(word_weight, position_weight, type_weight, ln_weight, ln_bias):
            if torch.compiler.is_compiling():
                return library.embed(*args)
            return extension.embed(extension.load(), *args)
        if requested_backend() == "cuda":
            raise ValueError("backend 'cuda' was requested but the extension's kernel cannot read these "
                             "weights: it needs contiguous tables and LayerNorm weight and bias, the "
                             f"LayerNorm parameters in the tables' dtype {word_weight.dtype} (got "
                             f"{ln_weight.dtype}), and a LayerNorm bias (got "
                             f"{'None' if ln_bias is None else 'one'}); backend 'auto' runs these eagerly")
    # Checked here, not before the extension call: its kernel validates the ids itself (one sync, not three).
    # A host read each, so not inside a graph torch.compile traces: there F.embedding refuses bad ids.
    if not torch.compiler.is_compiling():
        check_ids("input_ids", input_ids, word_weight.shape[0], "vocab_size")
        check_ids("position_ids", position_ids, position_weight.shape[0], "max_position_embeddings")
        check_ids("token_type_ids", token_type_ids, type_weight.shape[0], "type_vocab_size")
    return embed_ref(*args)
