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

References: Triton tutorial 05-layer-norm (the one-row-per-program forward);
flash-attention ``flash_attn/ops/triton/layer_norm.py`` (residual and bias as constexpr features);
Liger-Kernel ``ops/layer_norm.py``.
"""

import torch
import triton
import triton.language as tl

from rembert_fast.kernels._launch import on_device_of, output_buffer, rows_view

MAX_N = 16384  # widest row held in registers: 16384 fp32 values over 16 warps = 32 per thread
_MIN_TILE = 2048  # elements per program below which narrow rows are packed together
_MAX_WARPS = 16
_WIDE_FP32_BLOCK = 8192  # fp32 rows of this block take 32 warps (see launch_config)


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
