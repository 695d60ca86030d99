"""Argument validation shared by the ops: every error a caller can cause, with the value named.

Each check raises ``ValueError`` naming the argument, what it is and what was expected. The kernel
launchers behind the ops assume these checks have passed.
"""

from __future__ import annotations

from typing import Any

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "selu")


def check_float(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {tensor.dtype}; expected one of float32, float16, bfloat16")


def check_same(
    name: str,
    tensor: torch.Tensor | None,
    like: torch.Tensor,
    shape: tuple[int, ...],
    dtypes: tuple[torch.dtype, ...] | None = None,  # allowed dtypes; default: like's dtype only
) -> None:
    """Shape, device and dtype of an argument against x; the same rules on every backend (the kernels
    need them, and eager PyTorch would otherwise promote silently or fail deep inside an op)."""
    if tensor is None:
        return
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected {shape}")
    if tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device} but x is on {like.device}")
    dtypes = tuple(dict.fromkeys(dtypes or (like.dtype,)))
    if tensor.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {tensor.dtype}; expected {' or '.join(map(str, dtypes))}")


def check_eps(eps: Any) -> float:
    """eps as a Python float (numpy scalars and 0-d tensors too: the kernels take a float), >= 0."""
    try:
        value = float(eps)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"eps must be a number, got {eps!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def check_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    """x (..., in), weight (out, in), bias (out,) on x's device; returns out. Outside autocast weight
    and bias are in x's dtype (F.linear would refuse the mix); under autocast the GEMM casts them."""
    check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x is a 0-d tensor; a linear layer takes (..., in)")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (out, {x.shape[-1]}) for x of "
                         f"shape {tuple(x.shape)}")
    width = weight.shape[0]
    autocast = torch.is_autocast_enabled(x.device.type)
    dtypes = FLOAT_DTYPES if autocast else (x.dtype,)
    check_same("weight", weight, x, (width, x.shape[-1]), dtypes)
    check_same("bias", bias, x, (width,), dtypes)
    return width


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padded: bool = False) -> None:
    """q, k, v: one float dtype and device; k and v of one shape; heads and head_dim as q's; (padded)
    one batch size."""
    layout = "(batch, seqlen, heads, head_dim)" if padded else "(tokens, heads, head_dim)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
        if t.dim() != (4 if padded else 3):
            raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}; q is {q.dtype} on {q.device}")
    if k.shape != v.shape or k.shape[-2:] != q.shape[-2:] or (padded and k.shape[0] != q.shape[0]):
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def check_cu_seqlens(name: str, cu: torch.Tensor, tokens: int, max_seqlen: int) -> None:
    """Offsets start at 0, never decrease, end at the row count, and no length exceeds max_seqlen."""
    lengths = torch.cat([cu[1:] - cu[:-1], cu.new_zeros(1)]).long()  # a 0 step keeps min/max defined
    first, last, shortest, longest = torch.stack([cu[0].long(), cu[-1].long(), lengths.min(),
                                                  lengths.max()]).tolist()  # one host sync
    if first != 0 or last != tokens or shortest < 0 or longest > max_seqlen:
        shown = cu.tolist() if cu.numel() <= 16 else "[...]"
        raise ValueError(
            f"{name}={shown} is not a valid offset table for {tokens} rows "
            f"and max_seqlen={max_seqlen}: it must start at 0 (got {first}), end at {tokens} (got {last}), "
            f"never decrease (smallest step {shortest}) and no step may exceed max_seqlen (largest {longest})"
        )


def check_varlen_attention_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # (T, heads, head_dim)
    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
) -> None:
    """`ops.attention`'s arguments: q, k, v as `_check_qkv` says; the offsets (B+1,) int32/int64 on q's
    device; max_seqlen_* >= 0. On CPU the offsets' values too (`check_cu_seqlens`): a host read is
    cheap there, and bad offsets read out of range (the Triton interpreter corrupts memory). On CUDA
    they are trusted, as in flash-attention: a check would be a host sync in every layer (and
    impossible inside a CUDA-graph capture); so they are inside a graph torch.compile traces."""
    _check_qkv(q, k, v)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.numel() == 0:
        raise ValueError(
            f"cu_seqlens_q {tuple(cu_seqlens_q.shape)} and cu_seqlens_k {tuple(cu_seqlens_k.shape)} "
            "must both be (batch+1,)"
        )
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype not in (torch.int32, torch.int64) or cu.device != q.device:
            raise ValueError(f"{name} is {cu.dtype} on {cu.device}; expected int32 on {q.device}")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if q.device.type == "cpu" and not torch.compiler.is_compiling():
        check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
        check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)


def check_padded_attention_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> None:
    """`ops.attention_padded`'s arguments: q, k, v (B, L, heads, head_dim) as `_check_qkv` says, one
    batch size; the mask (B, Lk) on q's device."""
    _check_qkv(q, k, v, padded=True)
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (k.shape[0], k.shape[1]):
            raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; expected "
                             f"{(k.shape[0], k.shape[1])}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device}; q is on {q.device}")


def check_ids(name: str, ids: torch.Tensor, limit: int, limit_name: str) -> None:
    """Raise ValueError naming the first id outside [0, limit). One host sync."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be int64 or int32, got {ids.dtype}")
    if ids.numel() == 0:
        return
    low, high = torch.aminmax(ids)
    low, high = int(low), int(high)
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise ValueError(f"{name} contains {bad}, outside [0, {limit}) ({limit_name}={limit})")
