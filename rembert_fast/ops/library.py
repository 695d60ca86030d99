"""The Triton kernels and the extension's embed as `torch.library` custom ops, so `torch.compile`
traces through the op API instead of breaking its graph at each kernel launch.

Ops (namespace ``rembert_fast``), each the launcher of the same name with its arguments validated
by `rembert_fast.ops` first; every one returns a new tensor and mutates nothing:

    rembert_fast::layer_norm(x, weight, bias?, eps, residual?, x_bias?) -> (..., N) in x's dtype
    rembert_fast::bias_act(x, bias?, activation) -> x's shape and dtype
    rembert_fast::attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                   causal, softmax_scale?) -> (Tq, heads, head_dim) in q's dtype
    rembert_fast::attention_padded(q, k, v, key_padding_mask?, causal, softmax_scale?)
                                   -> (B, Lq, heads, head_dim) in q's dtype
    rembert_fast::embed(input_ids, position_ids, token_type_ids, word_weight, position_weight,
                        type_weight, ln_weight, ln_bias, eps, proj_weight?, proj_bias?)
                                   -> (..., E or hidden) in the tables' dtype

The fake (meta) implementations give those shapes and dtypes without running anything. The public
functions call these ops only while `torch.compile` traces them; an eager call goes straight to the
launcher (a custom op's dispatch would cost it microseconds for nothing). There is no autograd
formula: under autograd the public functions take the eager path instead.
"""

from __future__ import annotations

import torch

NAMESPACE = "rembert_fast"


# ----------------------------------------------------------------------------------------- layer_norm
@torch.library.custom_op(f"{NAMESPACE}::layer_norm", mutates_args=())
def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None,
    x_bias: torch.Tensor | None,
) -> torch.Tensor:
    from rembert_fast.kernels import layer_norm as kernel

    return kernel.layer_norm(x, weight, bias, eps, residual=residual, x_bias=x_bias)


@layer_norm.register_fake
def _(x, weight, bias, eps, residual, x_bias):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------- bias_act
@torch.library.custom_op(f"{NAMESPACE}::bias_act", mutates_args=())
def bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    from rembert_fast.kernels import activation as kernel

    return kernel.bias_act(x, bias, activation)


@bias_act.register_fake
def _(x, bias, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------------------- attention
@torch.library.custom_op(f"{NAMESPACE}::attention_varlen", mutates_args=())
def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    softmax_scale: float | None,
) -> torch.Tensor:
    from rembert_fast.kernels import attention as kernel

    return kernel.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                   causal=causal, softmax_scale=softmax_scale)


@attention_varlen.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale):
    return q.new_empty(q.shape)


@torch.library.custom_op(f"{NAMESPACE}::attention_padded", mutates_args=())
def attention_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    softmax_scale: float | None,
) -> torch.Tensor:
    from rembert_fast.kernels import attention as kernel

    return kernel.attention_padded(q, k, v, key_padding_mask, causal=causal, softmax_scale=softmax_scale)


@attention_padded.register_fake
def _(q, k, v, key_padding_mask, causal, softmax_scale):
    return q.new_empty(q.shape)


# ----------------------------------------------------------------------------------------- embed
@torch.library.custom_op(f"{NAMESPACE}::embed", mutates_args=())
def embed(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    type_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    proj_weight: torch.Tensor | None,
    proj_bias: torch.Tensor | None,
) -> torch.Tensor:
    from rembert_fast import extension

    return extension.embed(extension.load(), input_ids, position_ids, token_type_ids, word_weight,
                           position_weight, type_weight, ln_weight, ln_bias, eps, proj_weight, proj_bias)


@embed.register_fake
def _(input_ids, position_ids, token_type_ids, word_weight, position_weight, type_weight, ln_weight,
      ln_bias, eps, proj_weight, proj_bias):
    width = word_weight.shape[1] if proj_weight is None else proj_weight.shape[0]
    return word_weight.new_empty((*input_ids.shape, width))
