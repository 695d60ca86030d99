"""The op API: one function per fused op, each dispatching per call to a backend.

Backends (see DESIGN.md "Backends and dispatch"):
- ``triton``: the kernels in ``rembert_fast.kernels``; chosen for CUDA tensors, and for CPU tensors
  when ``TRITON_INTERPRET=1`` (the Triton interpreter: how kernels are tested without a GPU).
- ``cuda``: the compiled extension ``rembert_fast._C``; chosen for ``embed`` on CUDA tensors.
- ``eager``: plain PyTorch, the ``*_ref`` functions below. The CPU default, the fallback wherever a
  kernel does not apply (autograd, unsupported head_dim), and the reference every kernel is tested
  against.

The choice is ``auto`` unless ``REMBERT_FAST_BACKEND`` or ``use_backend(...)`` says otherwise. A
backend asked for explicitly that cannot run raises ``RuntimeError`` with the reason; ``auto`` never
raises for availability. Under autograd (grad enabled and an input that requires grad) every op takes
the eager path, because the kernels have no backward: gradients stay right.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "eager", "triton", "cuda")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "selu")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_backend_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("rembert_fast_backend",
                                                                               default=None)


# ----------------------------------------------------------------------------------------- dispatch
def requested_backend() -> str:
    """The backend asked for: `use_backend(...)` if active, else $REMBERT_FAST_BACKEND, else auto."""
    name = _backend_override.get() or os.environ.get("REMBERT_FAST_BACKEND", "auto") or "auto"
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"REMBERT_FAST_BACKEND={name!r} is not one of {BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend `name` ("auto", "eager", "triton" or "cuda")."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {BACKENDS}")
    token = _backend_override.set(name)
    try:
        yield
    finally:
        _backend_override.reset(token)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_status() -> tuple[bool, str]:
    """(available, reason) for the Triton backend in this process."""
    try:
        import triton  # noqa: F401
    except Exception as err:  # an ImportError, or a broken install raising anything
        return False, f"triton cannot be imported: {err}"
    if torch.cuda.is_available():
        return True, "triton on CUDA"
    if _interpreting():
        return True, "triton interpreter on CPU (TRITON_INTERPRET=1)"
    return False, "no CUDA device and TRITON_INTERPRET is not set"


def _needs_autograd(tensors: tuple[Any, ...]) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )


def _use_triton(device: torch.device, tensors: tuple[Any, ...]) -> bool:
    """Whether this call runs the Triton kernel; raises if triton was asked for and cannot run."""
    requested = requested_backend()
    if requested == "eager" or _needs_autograd(tensors):
        return False
    if device.type == "cuda":
        runnable, reason = triton_status()
    elif device.type == "cpu" and _interpreting():
        runnable, reason = triton_status()
    else:
        runnable, reason = False, f"triton does not run on {device.type} tensors without TRITON_INTERPRET=1"
    if requested == "triton" and not runnable:
        raise RuntimeError(f"backend 'triton' was requested but cannot run: {reason}")
    return runnable


def gemm_takes_bias(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether a Linear feeding layer_norm(x_bias=...) or bias_act should add its bias in the GEMM.

    True where that op runs eagerly: `F.linear` with a bias is one addmm, while a bias handed to the
    eager op is an extra pass over the output (about 3% of a full-width layer on CPU). False where the
    Triton kernel runs: it adds the bias in the pass it makes anyway.
    """
    return not _use_triton(x.device, (x, *params))


def backend_info() -> dict[str, Any]:
    """What is available in this process and why not: versions, devices, backends, the extension."""
    from rembert_fast import extension

    triton_ok, triton_reason = triton_status()
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    ext_ok, ext_reason = extension.status()
    try:
        requested = requested_backend()
    except ValueError as error:  # a bad $REMBERT_FAST_BACKEND: what a diagnosis should show, not crash on
        requested = f"invalid: {error}"
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "requested_backend": requested,
        "triton_interpret": _interpreting(),
        "backends": {
            "eager": {"available": True, "reason": "plain PyTorch, always available"},
            "triton": {"available": triton_ok, "reason": triton_reason},
            "cuda": {"available": ext_ok, "reason": ext_reason},
        },
    }


# ----------------------------------------------------------------------------------------- checks
def _check_float(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} has dtype {tensor.dtype}; expected one of float32, float16, bfloat16")


def _check_same(
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


def _check_eps(eps: Any) -> float:
    """eps as a Python float (numpy scalars and 0-d tensors too: the kernels take a float), >= 0."""
    try:
        value = float(eps)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"eps must be a number, got {eps!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


# ----------------------------------------------------------------------------------------- layer_norm
def layer_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None = None,
    x_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eager LN(x + x_bias + residual) over the last dim, in x's dtype (transformers' op order)."""
    if x_bias is not None:
        x = x + x_bias
    if residual is not None:
        x = x + residual
    if weight.dtype != x.dtype:  # fp32 LN parameters on half x: CUDA's F.layer_norm refuses the mix
        return F.layer_norm(x.to(weight.dtype), (x.shape[-1],), weight, bias, eps).to(x.dtype)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def layer_norm(
    x: torch.Tensor,  # (..., N) fp32/fp16/bf16
    weight: torch.Tensor,  # (N,)
    bias: torch.Tensor | None,  # (N,)
    eps: float,
    residual: torch.Tensor | None = None,  # (..., N), same shape as x
    x_bias: torch.Tensor | None = None,  # (N,) added to x before the residual (a Linear's bias)
) -> torch.Tensor:
    """LayerNorm(x + x_bias + residual) over the last dimension; statistics in fp32; x's dtype out."""
    _check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x is a 0-d tensor; layer_norm normalises the last dimension of (..., N)")
    n = x.shape[-1]
    _check_same("weight", weight, x, (n,), (x.dtype, torch.float32))
    _check_same("bias", bias, x, (n,), (weight.dtype,))
    _check_same("x_bias", x_bias, x, (n,))
    _check_same("residual", residual, x, tuple(x.shape))
    eps = _check_eps(eps)
    if _use_triton(x.device, (x, weight, bias, residual, x_bias)):
        from rembert_fast.kernels import layer_norm as kernel

        # Rows wider than the kernel holds in registers run eagerly on `auto` (on `triton` it raises).
        if n <= kernel.MAX_N or requested_backend() == "triton":
            return kernel.layer_norm(x, weight, bias, eps, residual=residual, x_bias=x_bias)
    return layer_norm_ref(x, weight, bias, eps, residual=residual, x_bias=x_bias)


# ----------------------------------------------------------------------------------------- bias_act
def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


_EAGER_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": _gelu_fast,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "selu": F.selu,
}


def bias_act_ref(x: torch.Tensor, bias: torch.Tensor | None, activation: str = "gelu") -> torch.Tensor:
    """Eager act(x + bias) with transformers' definition of each activation, in x's dtype."""
    if bias is not None:
        x = x + bias
    return _EAGER_ACTIVATIONS[activation](x)


def bias_act(
    x: torch.Tensor,  # (..., N) fp32/fp16/bf16
    bias: torch.Tensor | None,  # (N,)
    activation: str = "gelu",  # transformers' name; "gelu" is the exact erf GELU
) -> torch.Tensor:
    """act(x + bias); math in fp32 on the triton backend; x's dtype out."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported; choose one of {ACTIVATIONS}")
    _check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x is a 0-d tensor; bias_act takes (..., N)")
    _check_same("bias", bias, x, (x.shape[-1],))
    if _use_triton(x.device, (x, bias)):
        from rembert_fast.kernels import activation as kernel

        return kernel.bias_act(x, bias, activation)
    return bias_act_ref(x, bias, activation)


# ----------------------------------------------------------------------------------------- GEMM + epilogue
def _check_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    """x (..., in), weight (out, in), bias (out,) on x's device; returns out. Outside autocast weight
    and bias are in x's dtype (F.linear would refuse the mix); under autocast the GEMM casts them."""
    _check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x is a 0-d tensor; a linear layer takes (..., in)")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (out, {x.shape[-1]}) for x of "
                         f"shape {tuple(x.shape)}")
    width = weight.shape[0]
    autocast = torch.is_autocast_enabled(x.device.type)
    dtypes = FLOAT_DTYPES if autocast else (x.dtype,)
    _check_same("weight", weight, x, (width, x.shape[-1]), dtypes)
    _check_same("bias", bias, x, (width,), dtypes)
    return width


def _gemm_then_epilogue_bias(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x W^T, b) for a Triton epilogue to add b in the pass it makes anyway, or (x W^T + b, None) in one
    addmm where the epilogue runs eagerly (a bias handed to the eager op would be an extra pass). Under
    autocast the GEMM's output is in the autocast dtype while b stays float32: b is cast to it, as
    autocast's own addmm does."""
    if not _use_triton(x.device, (x, weight, bias)):
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
    _check_linear(x, weight, bias)
    return bias_act(*_gemm_then_epilogue_bias(x, weight, bias), activation)


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
    width = _check_linear(x, weight, bias)
    if tuple(residual.shape) != (*x.shape[:-1], width):
        raise ValueError(f"residual has shape {tuple(residual.shape)}; expected {(*x.shape[:-1], width)}")
    y, x_bias = _gemm_then_epilogue_bias(x, weight, bias)
    return layer_norm(y, ln_weight, ln_bias, eps, residual=residual, x_bias=x_bias)


# ----------------------------------------------------------------------------------------- attention
def _varlen_to_padded(
    x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, H, D) packed rows -> (B, max_seqlen, H, D) zero-padded, the (B, max_seqlen) mask, flat index."""
    batch = cu_seqlens.numel() - 1
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    positions = torch.arange(max_seqlen, device=x.device)
    mask = positions[None, :] < seqlens[:, None]  # (B, L)
    flat = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    padded = x.new_zeros(batch * max_seqlen, *x.shape[1:])
    padded.index_copy_(0, flat, x)
    return padded.view(batch, max_seqlen, *x.shape[1:]), mask, flat


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Eager varlen attention: pad per sequence, one masked `scaled_dot_product_attention`, unpad.

    Causal masking is aligned to the bottom-right corner, as flash-attention's varlen functions do
    (query i of a sequence sees keys j <= i + len_k - len_q); a query row that sees no key gives zeros.
    """
    qp, _, q_flat = _varlen_to_padded(q, cu_seqlens_q, max_seqlen_q)
    kp, k_mask, _ = _varlen_to_padded(k, cu_seqlens_k, max_seqlen_k)
    vp, _, _ = _varlen_to_padded(v, cu_seqlens_k, max_seqlen_k)
    allowed = k_mask[:, None, None, :]  # (B, 1, 1, Lk)
    if causal:
        len_q = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
        len_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()
        q_pos = torch.arange(max_seqlen_q, device=q.device)[None, :] + (len_k - len_q)[:, None]  # (B, Lq)
        k_pos = torch.arange(max_seqlen_k, device=q.device)
        allowed = allowed & (k_pos[None, None, :] <= q_pos[:, :, None])[:, None]  # (B, 1, Lq, Lk)
    out = F.scaled_dot_product_attention(
        qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), attn_mask=allowed, scale=softmax_scale
    ).transpose(1, 2)  # (B, Lq, H, D)
    out = out.reshape(-1, *q.shape[1:]).index_select(0, q_flat)
    if causal:
        out = out.nan_to_num(0.0)
    return out


def attention_per_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Eager varlen attention on CPU: one `scaled_dot_product_attention` per sequence, on views of the
    packed rows (no padding, no mask, so no work on padding positions: the whole model ran 8.6% faster
    on a padded 8x256 CPU batch than with `attention_ref`, 11.8% at 8x512; benches/RESULTS.md). Reads
    the offsets on the host, which costs nothing on CPU. Same results
    as `attention_ref`: bottom-right causal alignment, zeros for queries that see no key."""
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    pieces = []
    for b in range(len(starts_q) - 1):
        q_rows, k_rows = slice(starts_q[b], starts_q[b + 1]), slice(starts_k[b], starts_k[b + 1])
        len_q, len_k = q_rows.stop - q_rows.start, k_rows.stop - k_rows.start
        if len_q == 0:
            continue
        if len_k == 0:
            pieces.append(q.new_zeros(len_q, q.shape[1], v.shape[2]))
            continue
        mask, is_causal = None, False
        if causal and len_q == len_k:
            is_causal = True  # top-left and bottom-right alignment coincide
        elif causal:
            q_pos = torch.arange(len_q, device=q.device)[:, None] + (len_k - len_q)
            mask = torch.arange(len_k, device=q.device)[None, :] <= q_pos  # (len_q, len_k)
        out = F.scaled_dot_product_attention(
            q[q_rows].transpose(0, 1), k[k_rows].transpose(0, 1), v[k_rows].transpose(0, 1),
            attn_mask=mask, is_causal=is_causal, scale=softmax_scale,
        ).transpose(0, 1)  # (len_q, heads, head_dim)
        if mask is not None and len_q > len_k:
            out = out.nan_to_num(0.0)  # the first len_q - len_k queries see no key
        pieces.append(out)
    if not pieces:
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
    return torch.cat(pieces, dim=0)


def _check_attention_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padded: bool = False) -> None:
    """q, k, v: one float dtype and device; k and v of one shape; heads and head_dim as q's; (padded)
    one batch size."""
    layout = "(batch, seqlen, heads, head_dim)" if padded else "(tokens, heads, head_dim)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float(name, t)
        if t.dim() != (4 if padded else 3):
            raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}; q is {q.dtype} on {q.device}")
    if k.shape != v.shape or k.shape[-2:] != q.shape[-2:] or (padded and k.shape[0] != q.shape[0]):
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def _check_cu_seqlens(name: str, cu: torch.Tensor, tokens: int, max_seqlen: int) -> None:
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
    _check_attention_args(q, k, v)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.numel() == 0:
        raise ValueError(
            f"cu_seqlens_q {tuple(cu_seqlens_q.shape)} and cu_seqlens_k {tuple(cu_seqlens_k.shape)} "
            "must both be (batch+1,)"
        )
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype not in (torch.int32, torch.int64) or cu.device != q.device:
            raise ValueError(f"{name} is {cu.dtype} on {cu.device}; expected int32 on {q.device}")
    if q.device.type == "cpu":
        # On CPU a host read is cheap, so the offsets are checked (bad ones read out of range, and the
        # Triton interpreter corrupts memory). On CUDA they are trusted, as in flash-attention: a check
        # would be a host sync in every layer (and impossible inside a CUDA-graph capture).
        _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
        _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)
    if _use_triton(q.device, (q, k, v)):
        from rembert_fast.kernels import attention as kernel

        if q.shape[-1] in kernel.SUPPORTED_HEAD_DIMS:
            return kernel.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                           causal=causal, softmax_scale=softmax_scale)
    if q.device.type == "cpu":
        return attention_per_sequence(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=causal,
                                      softmax_scale=softmax_scale)
    return attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                         softmax_scale=softmax_scale)


def attention_padded_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Eager padded attention through `scaled_dot_product_attention`; (B, L, H, D) in and out."""
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask.bool()[:, None, None, :]
    if causal:
        lq, lk = q.shape[1], k.shape[1]
        tri = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        mask = tri if mask is None else mask & tri
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=softmax_scale
    )
    return out.transpose(1, 2)


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
    _check_attention_args(q, k, v, padded=True)
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (k.shape[0], k.shape[1]):
            raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; expected "
                             f"{(k.shape[0], k.shape[1])}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device}; q is on {q.device}")
    if _use_triton(q.device, (q, k, v)):
        from rembert_fast.kernels import attention as kernel

        if q.shape[-1] in kernel.SUPPORTED_HEAD_DIMS:
            return kernel.attention_padded(q, k, v, key_padding_mask, causal=causal,
                                           softmax_scale=softmax_scale)
    return attention_padded_ref(q, k, v, key_padding_mask, causal=causal, softmax_scale=softmax_scale)


# ----------------------------------------------------------------------------------------- embed
def embed_ref(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    type_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eager embedding stage in transformers' order: (word + type) + position, LN, optional projection."""
    x = F.embedding(input_ids, word_weight) + F.embedding(token_type_ids, type_weight)
    x = x + F.embedding(position_ids, position_weight)
    x = layer_norm_ref(x, ln_weight, ln_bias, eps)  # also takes fp32 LN parameters on half tables
    if proj_weight is not None:
        x = F.linear(x, proj_weight, proj_bias)
    return x


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


def extension_takes_embed(
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    type_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor | None,
) -> bool:
    """Whether the extension's kernel reads these as they are: contiguous tables and LN parameters, the
    LN parameters in the tables' dtype (fp32 LN parameters with half tables, strided views or a missing
    LN bias run eagerly)."""
    tensors = (word_weight, position_weight, type_weight, ln_weight, ln_bias)
    return ln_weight.dtype == word_weight.dtype and all(t is not None and t.is_contiguous() for t in tensors)


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
    eps = _check_eps(eps)
    _check_float("word_weight", word_weight)
    if word_weight.dim() != 2:
        raise ValueError(f"word_weight must be (vocab, E), got shape {tuple(word_weight.shape)}")
    width = word_weight.shape[1]
    for name, table in (("position_weight", position_weight), ("type_weight", type_weight)):
        _check_same(name, table, word_weight, (table.shape[0], width) if table.dim() == 2 else (-1, width))
    _check_same("ln_weight", ln_weight, word_weight, (width,), (word_weight.dtype, torch.float32))
    _check_same("ln_bias", ln_bias, word_weight, (width,), (ln_weight.dtype,))
    if proj_weight is not None:
        hidden = proj_weight.shape[0] if proj_weight.dim() == 2 else -1
        _check_same("proj_weight", proj_weight, word_weight, (hidden, width))
        _check_same("proj_bias", proj_bias, word_weight, (hidden,))
    args = (input_ids, position_ids, token_type_ids, word_weight, position_weight, type_weight,
            ln_weight, ln_bias, eps, proj_weight, proj_bias)
    requested = requested_backend()
    grads = _needs_autograd((word_weight, position_weight, type_weight, ln_weight, ln_bias, proj_weight))
    if input_ids.device.type == "cuda" and requested in ("auto", "cuda") and not grads:
        from rembert_fast import extension

        module = extension.load()
        # On `auto`, what the kernel cannot read as it is takes the eager path.
        takes = extension_takes_embed(word_weight, position_weight, type_weight, ln_weight, ln_bias)
        if module is not None and takes:
            return extension.embed(module, *args)
        if module is not None and requested == "cuda":
            raise ValueError("backend 'cuda' was requested but the extension's kernel cannot read these "
                             "weights: it needs contiguous tables and LayerNorm weight and bias, the "
                             f"LayerNorm parameters in the tables' dtype {word_weight.dtype} (got "
                             f"{ln_weight.dtype}), and a LayerNorm bias (got "
                             f"{'None' if ln_bias is None else 'one'}); backend 'auto' runs these eagerly")
        if module is None and requested == "cuda":
            raise RuntimeError(f"backend 'cuda' was requested but the extension is unavailable: "
                               f"{extension.status()[1]}")
    elif requested == "cuda":
        raise RuntimeError(f"backend 'cuda' runs on CUDA tensors only; these are on {input_ids.device}")
    # Checked here, not before the extension call: its kernel validates the ids itself (one sync, not three).
    check_ids("input_ids", input_ids, word_weight.shape[0], "vocab_size")
    check_ids("position_ids", position_ids, position_weight.shape[0], "max_position_embeddings")
    check_ids("token_type_ids", token_type_ids, type_weight.shape[0], "type_vocab_size")
    return embed_ref(*args)
