"""Fused bias + activation: ``y = act(x + bias)``, elementwise, bias broadcast along the last dimension.

RemBERT applies it to the first FFN projection (N = 4608, "gelu"), and the MLM head to its dense
output (N = 1664): one read and one write instead of a bias kernel and an activation kernel.

Activations, transformers' names and definitions (fp32 math, z = x + bias)::

    gelu               z * Phi(z) = 0.5 z (1 + erf(z / sqrt 2))                  exact, RemBERT's
    gelu_new,          0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))           tanh approximation
    gelu_pytorch_tanh
    gelu_fast          0.5 z (1 + tanh(0.7978845608 z (1 + 0.044715 z^2)))
    quick_gelu         z * sigmoid(1.702 z)
    relu               max(z, 0)  (NaN stays NaN, as torch.relu)
    selu               1.0507009873554805 * (z if z > 0 else 1.6732632423543772 * (exp(z) - 1))

``0.5 (1 + tanh(u))`` is evaluated as ``sigmoid(2u) = 1 / (1 + exp(-2u))``, the same function without
the cancellation of ``1 + tanh(u)`` for negative u, and without needing a tanh instruction;
``exp(z) - 1`` uses Kahan's ``(e - 1) * z / log(e)``, accurate for tiny z where ``exp(z) - 1`` loses
every digit. ``erf`` is ``tl.math.erf`` (libdevice ``erff`` on NVIDIA).

Grid: 2-D, ``(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N))`` over the (M, N) view of x, one tile of
``_TILE`` elements per program (4 warps; 8 when N is not a multiple of 16, whose unaligned
rows need an address per element); the bias slice is loaded once per tile. BLOCK_N is the power of two
in 128..1024 that leaves the fewest masked columns (the larger on a tie), so RemBERT's widths tile
exactly: 4608 = 9 x 512, 1152 = 9 x 128, 1664 = 13 x 128 (1024 would leave 10%, 44% and 38% of the
lanes idle); narrower rows take the next power of two. Rows may be strided (a view
of a wider buffer is read in place); x is copied once when its last dimension is not contiguous, or
when its leading dimensions cannot be viewed as one row index.
Row offsets are int64.

Dtypes: x in fp32/fp16/bf16; bias in x's dtype; math in fp32; the output in x's dtype.

Backward (``bias_act_backward``): dx = dy * act'(z), the pre-activation z recomputed from x and bias
(nothing is stored by the forward), and d bias = sum over rows of dx. Derivatives, fp32::

    gelu               Phi(z) + z phi(z),  phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
    tanh GELUs         s + 2 z s (1 - s) u'(z),  s = sigmoid(2u), u the forms above
    quick_gelu         s + 1.702 z s (1 - s),  s = sigmoid(1.702 z)
    relu               0 where z <= 0, else 1 (a NaN z passes dy on, as torch's threshold_backward)
    selu               1.0507009873554805 * (1 if z > 0 else 1.6732632423543772 exp(z))

Its grid is ``(programs, cdiv(N, BLOCK_N))`` with the forward's tile: each program walks a contiguous
run of row tiles of one column block and keeps its column sums in fp32 registers, stores one partial
row, and one ``sum(0)`` over the partial rows finishes d bias (a two-stage reduction; the number of
row programs is ``_launch.backward_programs``' rule, a few per SM).

References: Triton tutorial 02-fused-softmax (row-tiled elementwise work); transformers
``activations.py`` (the definitions); W. Kahan's expm1 identity (Higham, Accuracy and Stability of
Numerical Algorithms, 2nd ed., section 1.14.1).
"""

import torch
import triton
import triton.language as tl

from rembert_fast.kernels._launch import backward_programs, on_device_of, output_buffer, rows_view

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "selu")
_TILE = 4096  # elements per program: 4 warps x 32 elements per thread, 16-byte loads at every dtype
_BLOCK_N_CHOICES = (1024, 512, 256, 128)
_NUM_WARPS = 4


@triton.jit
def _sigmoid(t):
    # exp(-t) overflows to inf for t < -88: 1 / inf = 0, the right limit, with no NaN.
    return 1.0 / (1.0 + tl.exp(-t))


@triton.jit
def _expm1(z):
    # Kahan: with e = exp(z) rounded, (e - 1) * z / log(e) cancels the rounding error of e.
    e = tl.exp(z)
    em1 = e - 1.0
    return tl.where(em1 == 0.0, z, tl.where(em1 == -1.0, -1.0, em1 * z / tl.log(e)))


@triton.jit
def _activation(z, ACTIVATION: tl.constexpr):
    if ACTIVATION == "gelu":
        y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    elif ACTIVATION == "gelu_new" or ACTIVATION == "gelu_pytorch_tanh":
        u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
        y = z * _sigmoid(2.0 * u)
    elif ACTIVATION == "gelu_fast":
        u = z * 0.7978845608 * (1.0 + 0.044715 * z * z)
        y = z * _sigmoid(2.0 * u)
    elif ACTIVATION == "quick_gelu":
        y = z * _sigmoid(1.702 * z)
    elif ACTIVATION == "relu":
        y = tl.where(z < 0.0, 0.0, z)
    else:
        tl.static_assert(ACTIVATION == "selu", "unknown activation")
        y = 1.0507009873554805 * tl.where(z > 0.0, z, 1.6732632423543772 * _expm1(z))
    return y


@triton.jit
def _activation_grad(z, ACTIVATION: tl.constexpr):
    """d act / d z, fp32."""
    if ACTIVATION == "gelu":
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        d = cdf + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACTIVATION == "gelu_new" or ACTIVATION == "gelu_pytorch_tanh":
        s = _sigmoid(2.0 * 0.7978845608028654 * (z + 0.044715 * z * z * z))
        d = s + 2.0 * z * s * (1.0 - s) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)
    elif ACTIVATION == "gelu_fast":
        s = _sigmoid(2.0 * z * 0.7978845608 * (1.0 + 0.044715 * z * z))
        d = s + 2.0 * z * s * (1.0 - s) * 0.7978845608 * (1.0 + 3.0 * 0.044715 * z * z)
    elif ACTIVATION == "quick_gelu":
        s = _sigmoid(1.702 * z)
        d = s + 1.702 * z * s * (1.0 - s)
    elif ACTIVATION == "relu":
        d = tl.where(z <= 0.0, 0.0, 1.0)
    else:
        tl.static_assert(ACTIVATION == "selu", "unknown activation")
        d = 1.0507009873554805 * tl.where(z > 0.0, 1.0, 1.6732632423543772 * tl.exp(z))
    return d


@triton.jit(do_not_specialize=["M"])  # the token count changes every batch: one binary for all
def _bias_act_kernel(
    X,  # (M, N) input, row stride stride_x_row, unit column stride
    BIAS,  # (N,) added to every row (read only if HAS_BIAS)
    Y,  # (M, N) output, row stride stride_y_row
    stride_x_row,  # elements between consecutive rows of X
    stride_y_row,  # elements between consecutive rows of Y
    M,  # number of rows
    N,  # row width
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # one of ACTIVATIONS
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # columns per tile
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    col_mask = cols < N
    mask = (rows < M)[:, None] & col_mask[None, :]  # (BLOCK_M, BLOCK_N)
    rows = rows.to(tl.int64)  # row * stride overflows int32 beyond 2**31 elements
    z = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)
        z += bias[None, :]
    y = _activation(z, ACTIVATION)
    tl.store(Y + rows[:, None] * stride_y_row + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def launch_config(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the launch for rows of width `n`."""
    if n < min(_BLOCK_N_CHOICES):
        block_n = triton.next_power_of_2(n)
    else:
        block_n = min(_BLOCK_N_CHOICES, key=lambda b: (triton.cdiv(n, b) * b - n, -b))
    # A width that is not a multiple of 16 (unaligned rows: no vector loads, an address per element)
    # spills at 32 values a thread (fp16 tanh/sigmoid GELUs, sm_90): twice the warps hold 16.
    num_warps = _NUM_WARPS if n % 16 == 0 else 2 * _NUM_WARPS
    return _TILE // block_n, block_n, num_warps


def backward_launch_config(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the backward launch: the forward's, with half the rows per tile
    where N is not a multiple of 16 (unaligned rows: the fp16 tanh GELUs' derivative spills on sm_90 at
    the forward's 16 values a thread)."""
    block_m, block_n, num_warps = launch_config(n)
    return (block_m if n % 16 == 0 else max(block_m // 2, 1)), block_n, num_warps


def bias_act(
    x: torch.Tensor,  # (..., N) fp32/fp16/bf16
    bias: torch.Tensor | None,  # (N,) x's dtype
    activation: str,  # one of ACTIVATIONS (transformers' names)
    *,
    out: torch.Tensor | None = None,  # (..., N) contiguous, x's dtype: written in place if given
) -> torch.Tensor:
    """act(x + bias) on the Triton kernel; x's shape and dtype out.

    Arguments are validated by `rembert_fast.ops.bias_act`; this raises ValueError only for a bad `out`.
    """
    assert activation in ACTIVATIONS and (bias is None or bias.dtype == x.dtype)
    out = output_buffer("bias_act", x, out)
    if x.numel() == 0:
        return out

    n = x.shape[-1]
    x2 = rows_view(x, n)
    y2 = out.view(-1, n)
    m = x2.shape[0]
    block_m, block_n, num_warps = launch_config(n)
    with on_device_of(x):
        _bias_act_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
            x2,
            bias.contiguous() if bias is not None else None,
            y2,
            x2.stride(0), y2.stride(0),
            m, n,
            HAS_BIAS=bias is not None,
            ACTIVATION=activation,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    return out


@triton.jit(do_not_specialize=["M", "rows_per_program"])
def _bias_act_bwd_kernel(
    DY,  # (M, N) gradient of the output, row stride stride_dy_row, unit column stride
    X,  # (M, N) forward input, row stride stride_x_row
    BIAS,  # (N,) forward bias (read only if HAS_BIAS)
    DX,  # (M, N) gradient of x, row stride stride_dx_row, x's dtype
    DB_PARTIAL,  # (programs, N) fp32 per-program column sums of dx (written only if HAS_BIAS)
    stride_dy_row,  # elements between consecutive rows of DY
    stride_x_row,  # elements between consecutive rows of X
    stride_dx_row,  # elements between consecutive rows of DX
    M,  # number of rows
    N,  # row width
    rows_per_program,  # rows each program walks: a multiple of BLOCK_M
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,  # one of ACTIVATIONS
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # columns per tile
):
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if HAS_BIAS:
        bias = tl.load(BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for row0 in tl.range(first, last, BLOCK_M):
        rows = row0 + tl.arange(0, BLOCK_M)
        mask = (rows < last)[:, None] & col_mask[None, :]
        rows = rows.to(tl.int64)
        z = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            z += bias[None, :]
        dy = tl.load(DY + rows[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dz = tl.where(mask, dy * _activation_grad(z, ACTIVATION), 0.0)
        tl.store(DX + rows[:, None] * stride_dx_row + cols[None, :], dz.to(DX.dtype.element_ty), mask=mask)
        if HAS_BIAS:
            db_acc += tl.sum(dz, axis=0)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid.to(tl.int64) * N + cols, db_acc, mask=col_mask)


def bias_act_backward(
    dy: torch.Tensor,  # (..., N) gradient of bias_act's output, x's dtype
    x: torch.Tensor,  # (..., N) the forward's x
    bias: torch.Tensor | None,  # (N,) x's dtype
    activation: str,  # one of ACTIVATIONS
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of `bias_act` on the Triton kernel: (dx in x's shape and dtype, d bias in bias's dtype
    summed in fp32, or None without a bias)."""
    assert activation in ACTIVATIONS and dy.shape == x.shape and dy.dtype == x.dtype
    n = x.shape[-1]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    m = x.numel() // max(n, 1)
    if m == 0:
        return dx, torch.zeros_like(bias) if bias is not None else None
    x2 = rows_view(x, n)
    dy2 = rows_view(dy, n)
    dx2 = dx.view(-1, n)
    block_m, block_n, num_warps = backward_launch_config(n)
    programs, rows_per_program = backward_programs(m, block_m, x.device)
    partial = torch.empty((programs, n), dtype=torch.float32, device=x.device) if bias is not None else None
    with on_device_of(x):
        _bias_act_bwd_kernel[(programs, triton.cdiv(n, block_n))](
            dy2, x2,
            bias.contiguous() if bias is not None else None,
            dx2, partial,
            dy2.stride(0), x2.stride(0), dx2.stride(0),
            m, n, rows_per_program,
            HAS_BIAS=bias is not None,
            ACTIVATION=activation,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    return dx, partial.sum(0).to(bias.dtype) if partial is not None else None
