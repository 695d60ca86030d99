"""The Triton kernels and the extension's embed as `torch.library` custom ops, so `torch.compile`
traces through the op API instead of breaking its graph at each kernel launch.

Ops (namespace ``rembert_fast``; their schemas below), each the launcher of the same name, its
arguments positional, validated by `rembert_fast.ops` first; every one returns a new contiguous
tensor and mutates nothing: layer_norm and bias_act x's shape and dtype; attention_varlen and
attention_padded q's shape and dtype; embed (..., E, or hidden with the projection) in the tables'
dtype.

The fake (meta) implementations give those shapes and dtypes without running anything. The public
functions call these ops only while `torch.compile` traces them; an eager call goes straight to the
launcher (a custom op's dispatch would cost it microseconds for nothing). There is no autograd
formula: under autograd the public functions take the eager path instead.
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
