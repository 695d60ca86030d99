"""The Triton kernels and the extension's embed as `torch.library` custom ops, so `torch.compile`
traces through the op API instead of breaking its graph at each kernel launch.

Ops (namespace ``rembert_fast``; their schemas below), each the launcher of the same name, its
arguments positional, validated by `rembert_fast.ops` first; every one returns new contiguous
tensors and mutates nothing: layer_norm and bias_act x's shape and dtype; attention_varlen and
attention_padded q's shape and dtype; attention_varlen_lse (out, lse: (heads, T) fp32); embed (..., E,
or hidden with the projection) in the tables' dtype.

Training: layer_norm, bias_act and attention_varlen_lse are differentiable (`register_autograd`), their
backward the backward kernels as ops of their own (layer_norm_backward, bias_act_backward,
attention_varlen_backward), so torch.compile traces a training step's forward and backward through
them. The attention backward returns one (T, 3, heads, head_dim) buffer, the gradients of q, k and v
laid out like the fused QKV output (its Tq == Tk: self-attention only). attention_varlen,
attention_padded and embed have no autograd formula: `rembert_fast.ops` takes another path under
autograd.

The fake (meta) implementations give the shapes and dtypes without running anything. The public
functions call these ops while `torch.compile` traces them and under autograd; an inference call
goes straight to the launcher (a custom op's dispatch would cost it microseconds for nothing).
"""

from __future__ import annotations

import torch

from rembert_fast import extension

NAMESPACE = "rembert_fast"


def _custom_op(name: str, schema: str):
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=(), schema=schema)


@_custom_op("layer_norm", "(Tensor x, Tensor weight, Tensor? bias, float eps, Tensor? residual, "
                          "Tensor? x_bias) -> Tensor")
def layer_norm(*args):
    from rembert_fast.kernels import layer_norm as kernel

    return kernel.layer_norm(*args)


@_custom_op("bias_act", "(Tensor x, Tensor? bias, str activation) -> Tensor")
def bias_act(*args):
    from rembert_fast.kernels import activation as kernel

    return kernel.bias_act(*args)


@_custom_op("attention_varlen", "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
                                "SymInt max_seqlen_q, SymInt max_seqlen_k, bool causal, float? softmax_scale)"
                                " -> Tensor")
def attention_varlen(*args):
    from rembert_fast.kernels import attention as kernel

    return kernel.attention_varlen(*args)


@_custom_op("attention_padded", "(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, bool causal, "
                                "float? softmax_scale) -> Tensor")
def attention_padded(*args):
    from rembert_fast.kernels import attention as kernel

    return kernel.attention_padded(*args)


@_custom_op("embed", "(Tensor input_ids, Tensor position_ids, Tensor token_type_ids, Tensor word_weight, "
                     "Tensor position_weight, Tensor type_weight, Tensor ln_weight, Tensor ln_bias, "
                     "float eps, Tensor? proj_weight, Tensor? proj_bias) -> Tensor")
def embed(*args):
    return extension.embed(extension.load(), *args)


def _like_first(x: torch.Tensor, *rest) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _embedding_like(input_ids, position_ids, token_type_ids, word_weight, *rest) -> torch.Tensor:
    proj_weight = rest[-2]
    width = word_weight.shape[1] if proj_weight is None else proj_weight.shape[0]
    return word_weight.new_empty((*input_ids.shape, width))


for _op in (layer_norm, bias_act, attention_varlen, attention_padded):
    _op.register_fake(_like_first)
embed.register_fake(_embedding_like)


# ----------------------------------------------------------------------------------------- training
@_custom_op("layer_norm_backward", "(Tensor dy, Tensor x, Tensor weight, Tensor? bias, float eps, "
                                   "Tensor? residual, Tensor? x_bias) -> (Tensor, Tensor, Tensor, Tensor)")
def layer_norm_backward(dy, x, weight, bias, eps, residual, x_bias):
    """(dx, d weight, d bias, d x_bias); an absent bias or x_bias gets an (N,) zero gradient (a custom
    op returns no None), which the autograd formula drops."""
    from rembert_fast.kernels import layer_norm as kernel

    dx, dw, db, dxb = kernel.layer_norm_backward(dy, x, weight, bias, eps, residual, x_bias)
    return dx, dw, db if db is not None else torch.zeros_like(dw), dxb if dxb is not None else x.new_zeros(
        x.shape[-1])


@layer_norm_backward.register_fake
def _(dy, x, weight, bias, eps, residual, x_bias):
    n = x.shape[-1]
    return torch.empty_like(x, memory_format=torch.contiguous_format), weight.new_empty(n), \
        weight.new_empty(n), x.new_empty(n)


def _layer_norm_setup(ctx, inputs, output) -> None:
    x, weight, bias, eps, residual, x_bias = inputs
    ctx.eps = eps
    ctx.present = (bias is not None, residual is not None, x_bias is not None)
    ctx.save_for_backward(x, weight, bias, residual, x_bias)


def _layer_norm_grads(ctx, dy):
    x, weight, bias, residual, x_bias = ctx.saved_tensors
    dx, dw, db, dxb = layer_norm_backward(dy, x, weight, bias, ctx.eps, residual, x_bias)
    has_bias, has_residual, has_x_bias = ctx.present
    return dx, dw, db if has_bias else None, None, dx if has_residual else None, dxb if has_x_bias else None


layer_norm.register_autograd(_layer_norm_grads, setup_context=_layer_norm_setup)


@_custom_op("bias_act_backward", "(Tensor dy, Tensor x, Tensor? bias, str activation) -> (Tensor, Tensor)")
def bias_act_backward(dy, x, bias, activation):
    """(dx, d bias); without a bias an (N,) zero gradient, which the autograd formula drops."""
    from rembert_fast.kernels import activation as kernel

    dx, db = kernel.bias_act_backward(dy, x, bias, activation)
    return dx, db if db is not None else x.new_zeros(x.shape[-1])


@bias_act_backward.register_fake
def _(dy, x, bias, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[-1])


def _bias_act_setup(ctx, inputs, output) -> None:
    x, bias, activation = inputs
    ctx.activation = activation
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, bias)


def _bias_act_grads(ctx, dy):
    x, bias = ctx.saved_tensors
    dx, db = bias_act_backward(dy, x, bias, ctx.activation)
    return dx, db if ctx.has_bias else None, None


bias_act.register_autograd(_bias_act_grads, setup_context=_bias_act_setup)


@_custom_op("attention_varlen_lse", "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, "
                                    "Tensor cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k, "
                                    "bool causal, float? softmax_scale) -> (Tensor, Tensor)")
def attention_varlen_lse(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                         softmax_scale):
    """attention_varlen's output and the (heads, Tq) fp32 log-sum-exp its backward reads."""
    from rembert_fast.kernels import attention as kernel

    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    out = kernel.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                  softmax_scale, lse=lse)
    return out, lse


@attention_varlen_lse.register_fake
def _(q, k, v, *rest):
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@_custom_op("attention_varlen_backward", "(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, "
                                         "Tensor lse, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
                                         "SymInt max_seqlen_q, SymInt max_seqlen_k, bool causal, "
                                         "float? softmax_scale) -> Tensor")
def attention_varlen_backward(dout, q, k, v, out, lse, *rest):
    """The (T, 3, heads, head_dim) buffer holding dq, dk, dv (Tq == Tk)."""
    from rembert_fast.kernels import attention_backward as kernel

    dqkv = q.new_empty((q.shape[0], 3, *q.shape[1:]))
    kernel.attention_varlen_backward(dout, q, k, v, out, lse, *rest, dqkv=dqkv)
    return dqkv


@attention_varlen_backward.register_fake
def _(dout, q, *rest):
    return q.new_empty((q.shape[0], 3, *q.shape[1:]))


def _attention_setup(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.shape = (max_seqlen_q, max_seqlen_k, causal, softmax_scale)
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)


def _attention_grads(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    dqkv = attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *ctx.shape)
    dq, dk, dv = dqkv.unbind(1)
    return dq, dk, dv, None, None, None, None, None, None


attention_varlen_lse.register_autograd(_attention_grads, setup_context=_attention_setup)
