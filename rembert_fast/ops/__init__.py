"""The op API: one function per fused op (and per GEMM + epilogue), each validating its arguments
(`contract`) and dispatching to a backend (`dispatch`): the Triton kernels, the compiled extension,
or the eager references (`reference`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rembert_fast import extension
from rembert_fast.ops import competitors, contract, dispatch, library
from rembert_fast.ops.contract import ACTIVATIONS, FLOAT_DTYPES, check_ids
from rembert_fast.ops.dispatch import (
    BACKENDS,
    backend_for,
    backend_info,
    extension_takes_embed,
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
    "attention_kernel_head_dims", "attention_per_sequence", "attention_ref", "backend_for", "backend_info",
    "bias_act", "bias_act_ref", "check_ids", "embed", "embed_ref", "extension_takes_embed",
    "layer_norm", "layer_norm_ref", "linear_bias_act", "linear_residual_layer_norm",
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
    n, eps = _check_layer_norm(x, weight, bias, eps, residual, x_bias)
    impl = dispatch.choose("layer_norm", (residual is not None, x_bias is not None), (n,), x.device, x.dtype,
                           x.numel() // max(n, 1), (x, weight, bias, residual, x_bias))
    if impl == "triton":
        from rembert_fast.kernels import layer_norm as kernel

        # Rows wider than the kernel holds in registers run eagerly on `auto` (on `triton` it raises);
        # in training, rows wider than its backward holds run eagerly.
        tensors = (x, weight, bias, residual, x_bias)
        limit = kernel.BACKWARD_MAX_N if dispatch.needs_autograd(tensors) else kernel.MAX_N
        if n <= limit or requested_backend() == "triton" and limit == kernel.MAX_N:
            fused = _via_library(tensors)
            launch = library.layer_norm if fused else kernel.layer_norm
            return launch(x, weight, bias, eps, residual, x_bias)
    return layer_norm_ref(x, weight, bias, eps, residual=residual, x_bias=x_bias)


def _via_library(tensors: tuple[torch.Tensor | None, ...]) -> bool:
    """Whether a fused call goes through its custom op (`library`): while torch.compile traces, and
    under autograd (the custom op carries the backward); else straight to the launcher."""
    return torch.compiler.is_compiling() or dispatch.needs_autograd(tensors)


def _check_layer_norm(x, weight, bias, eps, residual, x_bias) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """layer_norm's arguments as its contract says; (width, eps as a float)."""
    contract.check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x is a 0-d tensor; layer_norm normalises the last dimension of (..., N)")
    n = x.shape[-1]
    contract.check_same("weight", weight, x, (n,), (x.dtype, torch.float32))
    contract.check_same("bias", bias, x, (n,), (weight.dtype,))
    contract.check_same("x_bias", x_bias, x, (n,))
    contract.check_same("residual", residual, x, tuple(x.shape))
    return n, contract.check_eps(eps)


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
    n = x.shape[-1]
    contract.check_same("bias", bias, x, (n,))
    if dispatch.choose("bias_act", (activation, bias is not None), (n,), x.device, x.dtype,
                       x.numel() // max(n, 1), (x, bias)) == "triton":
        from rembert_fast.kernels import activation as kernel

        launch = library.bias_act if _via_library((x, bias)) else kernel.bias_act
        return launch(x, bias, activation)
    return bias_act_ref(x, bias, activation)


# ----------------------------------------------------------------------------------------- GEMM + epilogue
def _epilogue_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias a fused epilogue adds to y = x W^T: under autocast y is in the autocast dtype while the
    bias stays float32, so it is cast to y's dtype, as autocast's own addmm does."""
    return bias.to(y.dtype) if bias is not None and bias.dtype != y.dtype else bias


def _gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of F.linear(x, W): autocast's where autocast is on for x's device, else x's. The
    epilogue kernel runs in it, so the call class is decided (probed, timed) for it."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def linear_bias_act(
    x: torch.Tensor,  # (..., in) fp32/fp16/bf16
    weight: torch.Tensor,  # (out, in)
    bias: torch.Tensor | None,  # (out,)
    activation: str = "gelu",  # transformers' name; "gelu" is the exact erf GELU
) -> torch.Tensor:
    """act(x W^T + b) -> (..., out) in the GEMM's output dtype (x's, or autocast's).

    Eager: the bias inside the GEMM (one addmm), then the activation. Triton: the GEMM without bias,
    then the fused `bias_act` kernel adds it. Which one serves is decided per call class like every op's
    (`dispatch.choose`). ValueError names a bad shape, dtype, device or activation.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported; choose one of {ACTIVATIONS}")
    width = contract.check_linear(x, weight, bias)
    impl = dispatch.choose("linear_bias_act", (activation,), (x.shape[-1], width), x.device, _gemm_dtype(x),
                           x.numel() // max(x.shape[-1], 1), (x, weight, bias))
    if impl == "triton":
        from rembert_fast.kernels import activation as kernel

        y = F.linear(x, weight)
        y_bias = _epilogue_bias(y, bias)
        launch = library.bias_act if _via_library((y, y_bias)) else kernel.bias_act
        return launch(y, y_bias, activation)
    return bias_act_ref(F.linear(x, weight, bias), None, activation)


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
    impl = dispatch.choose("linear_residual_layer_norm", (), (x.shape[-1], width), x.device, _gemm_dtype(x),
                           x.numel() // max(x.shape[-1], 1), (x, weight, bias, residual, ln_weight, ln_bias))
    if impl == "triton":
        from rembert_fast.kernels import layer_norm as kernel

        training = dispatch.needs_autograd((x, weight, bias, residual, ln_weight, ln_bias))
        limit = kernel.BACKWARD_MAX_N if training else kernel.MAX_N
        if width <= limit or requested_backend() == "triton" and not training:
            y = F.linear(x, weight)
            x_bias = _epilogue_bias(y, bias)
            _, eps = _check_layer_norm(y, ln_weight, ln_bias, eps, residual, x_bias)
            tensors = (y, ln_weight, ln_bias, residual, x_bias)
            launch = library.layer_norm if _via_library(tensors) else kernel.layer_norm
            return launch(y, ln_weight, ln_bias, eps, residual, x_bias)
    y = F.linear(x, weight, bias)
    _, eps = _check_layer_norm(y, ln_weight, ln_bias, eps, residual, None)
    return layer_norm_ref(y, ln_weight, ln_bias, eps, residual=residual)


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

    Returns (Tq, heads, head_dim) in q's dtype. On `auto` the Triton kernel, SDPA on the padded batch,
    torch's varlen attention (CUDA, where this torch has it) or the eager reference serves, the fastest
    that passed its probe for the call's class (`dispatch.choose`). Head dims the kernel does not take
    fall back to eager.
    The offsets must start at 0, never decrease, end at the row count, and no step may exceed
    max_seqlen: checked on CPU (ValueError), trusted on CUDA.
    """
    contract.check_varlen_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    impl = dispatch.choose("attention", (bool(causal), cu_seqlens_q is cu_seqlens_k), tuple(q.shape[1:]),
                           q.device, q.dtype, q.shape[0], (q, k, v), seqlen=max_seqlen_q)
    if impl == "triton":
        from rembert_fast.kernels import attention as kernel

        if q.shape[-1] in kernel.SUPPORTED_HEAD_DIMS:
            args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale)
            if not dispatch.needs_autograd((q, k, v)):
                compiling = torch.compiler.is_compiling()
                return (library.attention_varlen if compiling else kernel.attention_varlen)(*args)
            if q.shape[0] == k.shape[0]:  # the backward writes one QKV-shaped gradient buffer
                return library.attention_varlen_lse(*args)[0]
    elif impl == "sdpa_padded":
        return competitors.attention_sdpa_padded(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                 max_seqlen_k, causal, softmax_scale)
    elif impl == "torch_varlen":
        return competitors.attention_torch_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                  max_seqlen_k, causal, softmax_scale)
    if q.device.type == "cpu" and not torch.compiler.is_compiling():  # it reads the offsets on the host
        return attention_per_sequence(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=causal,
                                      softmax_scale=softmax_scale)
    return attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                         softmax_scale=softmax_scale)


def attention_kernel_head_dims() -> tuple[int, ...]:
    """The head dims the Triton attention kernel takes; attention with another head_dim runs eagerly on
    `auto` (on CUDA with no host read, so a CUDA graph captures it too)."""
    from rembert_fast.kernels import attention as kernel

    return kernel.SUPPORTED_HEAD_DIMS


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
    if dispatch.choose("attention_padded", (bool(causal), key_padding_mask is not None), tuple(q.shape[2:]),
                       q.device, q.dtype, q.shape[0] * q.shape[1], (q, k, v), seqlen=k.shape[1]) == "triton":
        from rembert_fast.kernels import attention as kernel

        if q.shape[-1] in kernel.SUPPORTED_HEAD_DIMS:
            if not dispatch.needs_autograd((q, k, v)):
                compiling = torch.compiler.is_compiling()
                launch = library.attention_padded if compiling else kernel.attention_padded
                return launch(q, k, v, key_padding_mask, causal, softmax_scale)
            if key_padding_mask is None and q.shape[1] == k.shape[1]:
                # Training on a full batch: the same sequences as a varlen batch of equal lengths.
                batch, length = q.shape[:2]
                cu_seqlens = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=q.device)
                out, _ = library.attention_varlen_lse(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                                                      cu_seqlens, cu_seqlens, length, length, causal,
                                                      softmax_scale)
                return out.unflatten(0, (batch, length))
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
    *,
    ids_checked: bool = False,  # the ids were checked against their tables already (on the host)
) -> torch.Tensor:
    """LN(word[ids] + type[tt] + pos[pos]) then the optional E->hidden projection; (..., E or hidden).

    Ids outside their table raise ValueError naming the value. With `ids_checked` the ids are not read
    on the host (no device sync: a CUDA graph can capture the call); a bad id then gives a wrong row.
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
    impl = dispatch.choose("embed", (proj_weight is not None,),
                           (width, 0 if proj_weight is None else proj_weight.shape[0]), input_ids.device,
                           word_weight.dtype, input_ids.numel(), ())
    if impl == "cuda" and not grads:
        # On `auto`, what the kernel cannot read as it is takes the eager path.
        if extension_takes_embed(word_weight, position_weight, type_weight, ln_weight, ln_bias):
            if torch.compiler.is_compiling():
                return library.embed(*args)
            return extension.embed(extension.load(), *args, check_ids=not ids_checked)
        if requested_backend() == "cuda":
            raise ValueError("backend 'cuda' was requested but the extension's kernel cannot read these "
                             "weights: it needs contiguous tables and LayerNorm weight and bias, the "
                             f"LayerNorm parameters in the tables' dtype {word_weight.dtype} (got "
                             f"{ln_weight.dtype}), and a LayerNorm bias (got "
                             f"{'None' if ln_bias is None else 'one'}); backend 'auto' runs these eagerly")
    # Checked here, not before the extension call: its kernel validates the ids itself (one sync, not three).
    # A host read each, so not inside a graph torch.compile traces: there F.embedding refuses bad ids.
    if not torch.compiler.is_compiling() and not ids_checked:
        check_ids("input_ids", input_ids, word_weight.shape[0], "vocab_size")
        check_ids("position_ids", position_ids, position_weight.shape[0], "max_position_embeddings")
        check_ids("token_type_ids", token_type_ids, type_weight.shape[0], "type_vocab_size")
    return embed_ref(*args)
