"""Fused LayerNorm: ``y = LN(x + x_bias + residual) * weight + bias`` over the last dimension, one pass.

Math (per row r of width N, every step in fp32)::

    h    = x[r] + x_bias + residual[r]          # either term optional
    mean = sum(h) / N
    var  = sum((h - mean)^2) / N                # two-pass over registers: no cancellation
    y[r] = (h - mean) / sqrt(var + eps) * weight + bias

RemBERT calls it after both projections of every layer (``x_bias`` = the Linear's bias, ``residual`` =
the block input) and in the embedding stage, so the three reads, the sum and the normalisation are one
memory pass instead of three.

Grid: one program per ``ROWS`` rows, ``(cdiv(M, ROWS),)``. A whole row lives in registers: ``BLOCK_N`` is
the next power of two >= N (masked). Narrow rows are packed several to a program so every program
moves at least ``_MIN_TILE`` elements: at N=256 a one-row program would be a 1-warp block holding 512
bytes, and an SM runs at most 32 blocks, so half its warp slots would stay empty. ``num_warps`` grows
with the tile so each thread holds 16-32 elements (16-byte vector loads, no spills), except fp32 rows
of the 8192 block, 8 a thread over 32 warps (16 with x_bias spill); the compile gate in
``tests/test_compile.py`` records registers and spills per configuration.

Dtypes: x, residual and x_bias in one of fp32/fp16/bf16; weight and bias in x's dtype or fp32 (the
mixed-type rule of ``torch.nn.functional.layer_norm``, what autocast produces); loads are upcast to
fp32, statistics in fp32 (eps 1e-12 is below fp16's resolution), the output in x's dtype.

Limits: N <= 16384 (a row must fit in registers); wider rows raise ValueError (the eager backend
takes any width). Rows may be strided (a 2-D view with padded rows is read in place); the input is
copied once when its last dimension is not contiguous, or when its leading dimensions cannot be
viewed as one row index. Row offsets are int64, so tensors beyond 2**31 elements are addressed correctly.

Backward (``layer_norm_backward``), per row, with xhat = (h - mean) * rstd and g = dy * weight::

    dh[r]     = rstd * (g - mean(g) - xhat * mean(g * xhat))   # = dx = d residual
    d x_bias  = sum_r dh[r],   d weight = sum_r dy[r] * xhat[r],   d bias = sum_r dy[r]

The statistics are recomputed from x, x_bias and residual (which the backward reads anyway to form
xhat), so the forward stores nothing. The column sums are a two-stage fp32 reduction: a fixed number
of programs (``_launch.backward_programs``: four per SM) each walk a contiguous run of rows and accumulate
their partial sums in registers, store one (N,) fp32 row each, and one ``sum(0)`` over those rows
finishes. The backward keeps twice the forward's warps per tile (``backward_launch_config``): it holds
about twice as many row-sized values per thread, and its column accumulators stay in registers, so it
takes rows up to BACKWARD_MAX_N = 4096 wide (wider rows train eagerly; RemBERT's are 256, 1152, 1664).

References: Triton tutorial 05-layer-norm (the one-row-per-program forward, the two-stage weight
gradient);
flash-attention ``flash_attn/ops/triton/layer_norm.py`` (residual and bias as constexpr features);
Liger-Kernel ``ops/layer_norm.py``.
"""

import torch
import triton
import triton.language as tl

from rembert_fast.kernels._launch import (
    backward_programs,
    on_device_of,
    output_buffer,
    rows_view,
)

MAX_N = 16384  # widest row held in registers: 16384 fp32 values over 16 warps = 32 per thread
_MIN_TILE = 2048  # elements per program below which narrow rows are packed together
_MAX_WARPS = 16
_WIDE_FP32_BLOCK = 8192  # fp32 rows of this block take 32 warps (see launch_config)
BACKWARD_MAX_N = 4096  # widest row the backward holds in registers without a spill (compile gate)
_NARROW_BWD_TILE = 1024


@triton.jit(do_not_specialize=["M"])  # the token count changes every batch: one binary for all
def _layer_norm_fwd_kernel(
    X,  # (M, N) input rows, row stride stride_x_row, unit column stride
    RESIDUAL,  # (M, N) rows added to x, row stride stride_res_row (read only if HAS_RESIDUAL)
    X_BIAS,  # (N,) added to every row of x before the residual (read only if HAS_X_BIAS)
    W,  # (N,) LayerNorm weight
    B,  # (N,) LayerNorm bias (read only if HAS_BIAS)
    Y,  # (M, N) output rows, row stride stride_y_row
    stride_x_row,  # elements between consecutive rows of X
    stride_res_row,  # elements between consecutive rows of RESIDUAL
    stride_y_row,  # elements between consecutive rows of Y
    M,  # number of rows
    N,  # row width (normalised dimension)
    eps,  # added to the variance
    HAS_RESIDUAL: tl.constexpr,
    HAS_X_BIAS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # next power of two >= N
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < M
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]  # (ROWS, BLOCK_N)
    rows = rows.to(tl.int64)  # row * stride overflows int32 beyond 2**31 elements

    h = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_X_BIAS:
        x_bias = tl.load(X_BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)
        h += x_bias[None, :]
    if HAS_RESIDUAL:
        res = tl.load(RESIDUAL + rows[:, None] * stride_res_row + cols[None, :], mask=mask, other=0.0)
        h += res.to(tl.float32)

    mean = tl.sum(h, axis=1) / N  # (ROWS,)
    centered = tl.where(mask, h - mean[:, None], 0.0)  # masked lanes must not enter the variance
    var = tl.sum(centered * centered, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)

    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
        y += b[None, :]
    tl.store(Y + rows[:, None] * stride_y_row + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def launch_config(n: int, elem_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_N, ROWS, num_warps) of the launch for rows of width `n` with `elem_bytes`-byte elements."""
    block_n = triton.next_power_of_2(n)
    rows = max(1, _MIN_TILE // block_n)
    num_warps = min(max(rows * block_n // 512, 1), _MAX_WARPS)
    if elem_bytes == 4 and block_n == _WIDE_FP32_BLOCK:
        num_warps = 32  # 16 masked fp32 values a thread plus x_bias spill (sm_80); 8 do not
    return block_n, rows, num_warps


def layer_norm(
    x: torch.Tensor,  # (..., N) fp32/fp16/bf16, last dim normalised
    weight: torch.Tensor,  # (N,) x's dtype or fp32
    bias: torch.Tensor | None,  # (N,) weight's dtype
    eps: float,
    residual: torch.Tensor | None = None,  # (..., N) x's shape and dtype
    x_bias: torch.Tensor | None = None,  # (N,) x's dtype, added to x before the residual
    *,
    out: torch.Tensor | None = None,  # (..., N) contiguous, x's dtype: written in place if given
) -> torch.Tensor:
    """LN(x + x_bias + residual) over the last dim on the Triton kernel; x's shape and dtype out.

    Arguments are validated by `rembert_fast.ops.layer_norm`; this raises ValueError only for what the
    kernel itself cannot take (rows wider than MAX_N, a bad `out`).
    """
    n = x.shape[-1]
    if n > MAX_N:
        raise ValueError(f"layer_norm: row width {n} exceeds the kernel's limit of {MAX_N}; "
                         "use the eager backend (rembert_fast.use_backend('eager')) for wider rows")
    assert weight.dtype in (x.dtype, torch.float32) and (bias is None or bias.dtype == weight.dtype)
    assert all(t is None or t.dtype == x.dtype for t in (residual, x_bias))
    out = output_buffer("layer_norm", x, out)
    if x.numel() == 0:
        return out

    x2 = rows_view(x, n)
    res2 = rows_view(residual, n) if residual is not None else None
    y2 = out.view(-1, n)
    weight = weight.contiguous()
    m = x2.shape[0]
    block_n, rows, num_warps = launch_config(n, x.element_size())
    with on_device_of(x):
        _layer_norm_fwd_kernel[(triton.cdiv(m, rows),)](
            x2, res2,
            x_bias.contiguous() if x_bias is not None else None,
            weight,
            bias.contiguous() if bias is not None else None,
            y2,
            x2.stride(0), res2.stride(0) if res2 is not None else 0, y2.stride(0),
            m, n, eps,
            HAS_RESIDUAL=residual is not None,
            HAS_X_BIAS=x_bias is not None,
            HAS_BIAS=bias is not None,
            ROWS=rows,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    return out


@triton.jit(do_not_specialize=["M", "rows_per_program"])
def _layer_norm_bwd_kernel(
    DY,  # (M, N) gradient of the output, row stride stride_dy_row, unit column stride
    X,  # (M, N) forward input rows, row stride stride_x_row
    RESIDUAL,  # (M, N) forward residual, row stride stride_res_row (read only if HAS_RESIDUAL)
    X_BIAS,  # (N,) forward x_bias (read only if HAS_X_BIAS)
    W,  # (N,) LayerNorm weight
    DX,  # (M, N) gradient of x (and of residual), row stride stride_dx_row, x's dtype
    DW_PARTIAL,  # (programs, N) fp32 per-program sums of dy * xhat
    DB_PARTIAL,  # (programs, N) fp32 per-program sums of dy (written only if HAS_BIAS)
    DXB_PARTIAL,  # (programs, N) fp32 per-program sums of dx (written only if HAS_X_BIAS)
    stride_dy_row,  # elements between consecutive rows of DY
    stride_x_row,  # elements between consecutive rows of X
    stride_res_row,  # elements between consecutive rows of RESIDUAL
    stride_dx_row,  # elements between consecutive rows of DX
    M,  # number of rows
    N,  # row width
    eps,  # added to the variance (as in the forward)
    rows_per_program,  # rows each program walks: a multiple of ROWS
    HAS_RESIDUAL: tl.constexpr,
    HAS_X_BIAS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # next power of two >= N
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    if HAS_X_BIAS:
        x_bias = tl.load(X_BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    dxb_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, M)
    for row0 in tl.range(first, last, ROWS):
        rows = row0 + tl.arange(0, ROWS)
        mask = (rows < last)[:, None] & col_mask[None, :]
        rows = rows.to(tl.int64)
        h = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_X_BIAS:
            h += x_bias[None, :]
        if HAS_RESIDUAL:
            res = tl.load(RESIDUAL + rows[:, None] * stride_res_row + cols[None, :], mask=mask, other=0.0)
            h += res.to(tl.float32)
        mean = tl.sum(h, axis=1) / N
        centered = tl.where(mask, h - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / N + eps)
        xhat = centered * rstd[:, None]  # 0 on masked lanes and rows
        dy = tl.load(DY + rows[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = dy * w[None, :]
        mean_g = tl.sum(g, axis=1) / N
        mean_gx = tl.sum(g * xhat, axis=1) / N
        dh = (g - mean_g[:, None] - xhat * mean_gx[:, None]) * rstd[:, None]
        dh = tl.where(mask, dh, 0.0)
        tl.store(DX + rows[:, None] * stride_dx_row + cols[None, :], dh.to(DX.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(dy * xhat, axis=0)
        if HAS_BIAS:
            db_acc += tl.sum(dy, axis=0)
        if HAS_X_BIAS:
            dxb_acc += tl.sum(dh, axis=0)
    partial = pid.to(tl.int64) * N + cols
    tl.store(DW_PARTIAL + partial, dw_acc, mask=col_mask)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + partial, db_acc, mask=col_mask)
    if HAS_X_BIAS:
        tl.store(DXB_PARTIAL + partial, dxb_acc, mask=col_mask)


def backward_launch_config(n: int, elem_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_N, ROWS, num_warps) of the backward launch: the forward's tile with twice the warps, as it
    holds about twice the values per element; rows of 16 or fewer columns in tiles of _NARROW_BWD_TILE
    elements over 8 warps (the forward's 2048-element tile spills on sm_90 there)."""
    block_n, rows, num_warps = launch_config(n, elem_bytes)
    if block_n <= 16:
        return block_n, _NARROW_BWD_TILE // block_n, 8
    return block_n, rows, min(2 * num_warps, 32)


def layer_norm_backward(
    dy: torch.Tensor,  # (..., N) gradient of layer_norm's output, x's dtype
    x: torch.Tensor,  # (..., N) the forward's x
    weight: torch.Tensor,  # (N,) x's dtype or fp32
    bias: torch.Tensor | None,  # (N,) weight's dtype; only whether it is given matters
    eps: float,
    residual: torch.Tensor | None = None,  # (..., N) x's shape and dtype
    x_bias: torch.Tensor | None = None,  # (N,) x's dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of `layer_norm` on the Triton kernel: (dx, d weight, d bias, d x_bias).

    dx has x's shape and dtype and is also the gradient of `residual`; d weight and d bias have
    weight's dtype (summed in fp32); d x_bias has x_bias's dtype; None for an absent bias / x_bias.
    ValueError for rows wider than BACKWARD_MAX_N.
    """
    n = x.shape[-1]
    if n > BACKWARD_MAX_N:
        raise ValueError(f"layer_norm_backward: row width {n} exceeds the kernel's limit of "
                         f"{BACKWARD_MAX_N}; use the eager backend for wider rows")
    assert dy.shape == x.shape and dy.dtype == x.dtype
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    m = x.numel() // max(n, 1)
    if m == 0:
        zeros = torch.zeros(n, dtype=torch.float32, device=x.device)
        return (dx, zeros.to(weight.dtype), zeros.to(weight.dtype) if bias is not None else None,
                zeros.to(x_bias.dtype) if x_bias is not None else None)
    x2 = rows_view(x, n)
    dy2 = rows_view(dy, n)
    res2 = rows_view(residual, n) if residual is not None else None
    dx2 = dx.view(-1, n)
    block_n, rows, num_warps = backward_launch_config(n, x.element_size())
    programs, rows_per_program = backward_programs(m, rows, x.device)
    partial = torch.empty((1 + (bias is not None) + (x_bias is not None), programs, n), dtype=torch.float32,
                          device=x.device)
    db_partial = partial[1] if bias is not None else None
    dxb_partial = partial[-1] if x_bias is not None else None
    with on_device_of(x):
        _layer_norm_bwd_kernel[(programs,)](
            dy2, x2, res2,
            x_bias.contiguous() if x_bias is not None else None,
            weight.contiguous(),
            dx2, partial[0], db_partial, dxb_partial,
            dy2.stride(0), x2.stride(0), res2.stride(0) if res2 is not None else 0, dx2.stride(0),
            m, n, eps, rows_per_program,
            HAS_RESIDUAL=residual is not None,
            HAS_X_BIAS=x_bias is not None,
            HAS_BIAS=bias is not None,
            ROWS=rows,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    # The second stage: one fp32 sum per gradient, each its own tensor (custom ops return no aliases).
    return (dx, partial[0].sum(0).to(weight.dtype),
            partial[1].sum(0).to(weight.dtype) if bias is not None else None,
            partial[-1].sum(0).to(x_bias.dtype) if x_bias is not None else None)
