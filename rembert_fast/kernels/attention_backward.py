"""Backward of the varlen flash attention (FlashAttention-2 algorithm): dQ, dK, dV from the saved
per-row log-sum-exp, never the (L, L) probability matrix.

Math, per sequence and head, with s = softmax_scale, S = s Q K^T (masked as in the forward),
P = softmax(S) = exp(S - lse) recomputed block by block from the forward's lse::

    delta_i = sum_d dO[i, d] O[i, d]            (= rowsum(P * dP), the softmax's Jacobian term)
    dV = P^T dO
    dP = dO V^T
    dS = P * (dP - delta)
    dQ = s dS K,   dK = s dS^T Q

Three kernels, split the way the data flows (Triton tutorial 06's backward):
- ``_attn_bwd_preprocess_kernel``: delta, one program per BLOCK_T tokens of one head;
- ``_attn_bwd_dkdv_kernel``: one program per BLOCK_N keys of one head of one sequence, holding K, V
  and the fp32 dK, dV accumulators while it walks the sequence's query blocks (causal: from the first
  query block that sees a key of its block);
- ``_attn_bwd_dq_kernel``: one program per BLOCK_M queries, walking the key blocks (causal: up to
  the diagonal). A pass of its own rather than atomics: deterministic, and no fp32 dQ buffer.
The logits are in base 2 as in the forward (lse is log2-sum-exp2 of S * log2(e)), so each exponential
is one exp2; rows with no visible key have lse = +inf and so P = 0. P and dS are rounded to the input
dtype before their dots, as FlashAttention does; fp32 inputs use IEEE fp32 dots.

Layout: q, k, v, dO are (tokens, heads, head_dim) read through their strides (views of the fused QKV
output are read in place). When q and k have the same token count the gradients are written into one
fresh (T, 3, heads, head_dim) buffer laid out like the fused QKV output, so the gradient of that
GEMM's output is this buffer as it is; `dq`, `dk`, `dv` are its three views.

Tiles: ``tile_config(head_dim, elem_bytes)`` gives (SMALL, BIG, num_warps, num_stages): the dK/dV
kernel takes BIG keys and steps SMALL queries, the dQ kernel BIG queries and steps SMALL keys. They
are the largest tiles that compile without a register spill on sm_80 and sm_90 (the compile gate,
tests/test_compile.py). Under the interpreter both are 16 so tiny tests cross block boundaries.

Limits: head_dim in attention.SUPPORTED_HEAD_DIMS; batches over 65535 sequences are launched in
chunks; varlen only (the padded entry runs eagerly in training); no dropout.

References: Dao, "FlashAttention-2" (arXiv 2307.08691), Algorithm 2; Triton tutorial
06-fused-attention (``_attn_bwd_preprocess``, ``_attn_bwd_dkdv``, ``_attn_bwd_dq``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from rembert_fast.kernels._launch import interpreting, on_device_of
from rembert_fast.kernels.attention import _LOG2E, _MAX_GRID_BATCH, SUPPORTED_HEAD_DIMS

# (SMALL, BIG, num_warps, num_stages) per (head_dim, element bytes); see the module docstring.
_TILES = {
    (16, 2): (32, 64, 4, 2), (32, 2): (32, 64, 4, 2), (64, 2): (32, 64, 4, 2), (128, 2): (32, 64, 8, 2),
    (16, 4): (16, 32, 4, 1), (32, 4): (16, 32, 4, 1), (64, 4): (16, 32, 4, 1), (128, 4): (16, 32, 8, 2),
}
INTERPRETER_TILE = (16, 16, 4, 1)
_PREPROCESS_BLOCK_T = 64  # tokens per preprocess program (16 under the interpreter)


def tile_config(head_dim: int, elem_bytes: int) -> tuple[int, int, int, int]:
    """(SMALL, BIG, num_warps, num_stages) of the backward kernels for this head_dim and element size."""
    return INTERPRETER_TILE if interpreting() else _TILES[(head_dim, elem_bytes)]


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    if DOT_UPCAST:  # the interpreter's bf16 dot is wrong (see attention.py): exact fp32 copies instead
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit(do_not_specialize=["T"])
def _attn_bwd_preprocess_kernel(
    OUT,  # (T, heads, HEAD_DIM) forward output
    DO,  # (T, heads, HEAD_DIM) gradient of the output
    DELTA,  # (heads, T) fp32, written: rowsum(dO * O)
    stride_ot,  # O token stride
    stride_oh,  # O head stride
    stride_dot,  # DO token stride
    stride_doh,  # DO head stride
    stride_delta_h,  # DELTA head stride (its token stride is 1)
    T,  # tokens
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    off_h = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_t[:, None].to(tl.int64)
    mask = offs_t[:, None] < T
    o = tl.load(OUT + off_h * stride_oh + rows * stride_ot + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + off_h * stride_doh + rows * stride_dot + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + off_h * stride_delta_h + offs_t, delta, mask=offs_t < T)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,  # (Tq, heads, HEAD_DIM), last dim contiguous
    K,  # (Tk, heads, HEAD_DIM)
    V,  # (Tk, heads, HEAD_DIM)
    DO,  # (Tq, heads, HEAD_DIM) gradient of the output
    LSE,  # (heads, Tq) fp32 forward log2-sum-exp2, unit token stride
    DELTA,  # (heads, Tq) fp32 rowsum(dO * O), LSE's strides
    DK,  # (Tk, heads, HEAD_DIM) written, q's dtype
    DV,  # (Tk, heads, HEAD_DIM) written
    CU_SEQLENS_Q,  # (B+1,) int32 cumulative query lengths
    CU_SEQLENS_K,  # (B+1,) int32 cumulative key lengths
    stride_qt, stride_qh,  # Q token and head strides
    stride_kt, stride_kh,
    stride_vt, stride_vh,
    stride_dot, stride_doh,
    stride_dkt, stride_dkh,
    stride_dvt, stride_dvh,
    stride_lse_h,  # LSE and DELTA head stride
    qk_scale,  # softmax_scale * log2(e)
    sm_scale,  # softmax_scale
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per step
    BLOCK_N: tl.constexpr,  # keys per program
):
    start_n = tl.program_id(0)
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2)
    q_start = tl.load(CU_SEQLENS_Q + off_b)
    len_q = tl.load(CU_SEQLENS_Q + off_b + 1) - q_start
    k_start = tl.load(CU_SEQLENS_K + off_b)
    len_k = tl.load(CU_SEQLENS_K + off_b + 1) - k_start
    if start_n * BLOCK_N >= len_k:
        return

    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_rows = (k_start + offs_n)[:, None].to(tl.int64)
    key_mask = offs_n[:, None] < len_k
    k = tl.load(K + off_h * stride_kh + key_rows * stride_kt + offs_d[None, :], mask=key_mask, other=0.0)
    v = tl.load(V + off_h * stride_vh + key_rows * stride_vt + offs_d[None, :], mask=key_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    q_base = Q + off_h * stride_qh + q_start.to(tl.int64) * stride_qt
    do_base = DO + off_h * stride_doh + q_start.to(tl.int64) * stride_dot
    lse_base = LSE + off_h * stride_lse_h + q_start
    delta_base = DELTA + off_h * stride_lse_h + q_start
    causal_shift = len_k - len_q  # query i sees keys j <= i + causal_shift
    lo = 0
    if CAUSAL:
        lo = (tl.maximum(start_n * BLOCK_N - causal_shift, 0) // BLOCK_M) * BLOCK_M
    for start_m in tl.range(lo, len_q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_real = offs_m < len_q
        q_t = tl.load(q_base + offs_m[None, :].to(tl.int64) * stride_qt + offs_d[:, None],
                      mask=q_real[None, :], other=0.0)  # (HEAD_DIM, BLOCK_M)
        lse = tl.load(lse_base + offs_m, mask=q_real, other=float("inf"))
        p_t = tl.math.exp2(_dot(k, q_t, DOT_PRECISION, DOT_UPCAST) * qk_scale - lse[None, :])  # (N, M)
        if CAUSAL:
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + causal_shift, p_t, 0.0)
        do = tl.load(do_base + offs_m[:, None].to(tl.int64) * stride_dot + offs_d[None, :],
                     mask=q_real[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
        dv += _dot(p_t.to(do.dtype), do, DOT_PRECISION, DOT_UPCAST)
        delta = tl.load(delta_base + offs_m, mask=q_real, other=0.0)
        dp_t = _dot(v, tl.trans(do), DOT_PRECISION, DOT_UPCAST)  # (BLOCK_N, BLOCK_M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q_t.dtype), tl.trans(q_t), DOT_PRECISION, DOT_UPCAST)
    dk *= sm_scale
    dk_rows = (k_start + offs_n)[:, None].to(tl.int64)
    tl.store(DK + off_h * stride_dkh + dk_rows * stride_dkt + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=key_mask)
    tl.store(DV + off_h * stride_dvh + dk_rows * stride_dvt + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=key_mask)


@triton.jit
def _attn_bwd_dq_kernel(
    Q,  # (Tq, heads, HEAD_DIM), last dim contiguous
    K,  # (Tk, heads, HEAD_DIM)
    V,  # (Tk, heads, HEAD_DIM)
    DO,  # (Tq, heads, HEAD_DIM) gradient of the output
    LSE,  # (heads, Tq) fp32 forward log2-sum-exp2, unit token stride
    DELTA,  # (heads, Tq) fp32 rowsum(dO * O), LSE's strides
    DQ,  # (Tq, heads, HEAD_DIM) written, q's dtype
    CU_SEQLENS_Q,  # (B+1,) int32 cumulative query lengths
    CU_SEQLENS_K,  # (B+1,) int32 cumulative key lengths
    stride_qt, stride_qh,  # Q token and head strides
    stride_kt, stride_kh,
    stride_vt, stride_vh,
    stride_dot, stride_doh,
    stride_dqt, stride_dqh,
    stride_lse_h,  # LSE and DELTA head stride
    qk_scale,  # softmax_scale * log2(e)
    sm_scale,  # softmax_scale
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per step
):
    start_m = tl.program_id(0)
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2)
    q_start = tl.load(CU_SEQLENS_Q + off_b)
    len_q = tl.load(CU_SEQLENS_Q + off_b + 1) - q_start
    k_start = tl.load(CU_SEQLENS_K + off_b)
    len_k = tl.load(CU_SEQLENS_K + off_b + 1) - k_start
    if start_m * BLOCK_M >= len_q:
        return

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_rows = (q_start + offs_m)[:, None].to(tl.int64)
    q_real = offs_m < len_q
    q = tl.load(Q + off_h * stride_qh + q_rows * stride_qt + offs_d[None, :], mask=q_real[:, None], other=0.0)
    do = tl.load(DO + off_h * stride_doh + q_rows * stride_dot + offs_d[None, :], mask=q_real[:, None],
                 other=0.0)
    lse = tl.load(LSE + off_h * stride_lse_h + q_start + offs_m, mask=q_real, other=float("inf"))
    delta = tl.load(DELTA + off_h * stride_lse_h + q_start + offs_m, mask=q_real, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    k_base = K + off_h * stride_kh + k_start.to(tl.int64) * stride_kt
    v_base = V + off_h * stride_vh + k_start.to(tl.int64) * stride_vt
    causal_shift = len_k - len_q
    hi = len_k
    if CAUSAL:
        hi = tl.maximum(tl.minimum(hi, start_m * BLOCK_M + BLOCK_M + causal_shift), 0)
    for start_n in tl.range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        visible = offs_n[None, :] < len_k
        k_t = tl.load(k_base + offs_n[None, :].to(tl.int64) * stride_kt + offs_d[:, None], mask=visible,
                      other=0.0)  # (HEAD_DIM, BLOCK_N)
        v_t = tl.load(v_base + offs_n[None, :].to(tl.int64) * stride_vt + offs_d[:, None], mask=visible,
                      other=0.0)
        p = tl.math.exp2(_dot(q, k_t, DOT_PRECISION, DOT_UPCAST) * qk_scale - lse[:, None])  # (M, N)
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None] + causal_shift)
        p = tl.where(visible, p, 0.0)
        dp = _dot(do, v_t, DOT_PRECISION, DOT_UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k_t.dtype), tl.trans(k_t), DOT_PRECISION, DOT_UPCAST)
    dq *= sm_scale
    tl.store(DQ + off_h * stride_dqh + q_rows * stride_dqt + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=q_real[:, None])


def attention_varlen_backward(
    dout: torch.Tensor,  # (Tq, heads, head_dim) gradient of attention_varlen's output, q's dtype
    q: torch.Tensor,  # (Tq, heads, head_dim) the forward's q (a view of a fused QKV buffer is fine)
    k: torch.Tensor,  # (Tk, heads, head_dim)
    v: torch.Tensor,  # (Tk, heads, head_dim)
    out: torch.Tensor,  # (Tq, heads, head_dim) the forward's output
    lse: torch.Tensor,  # (heads, Tq) fp32, the forward's `lse=`
    cu_seqlens_q: torch.Tensor,  # (B+1,) int32, as in the forward
    cu_seqlens_k: torch.Tensor,  # (B+1,) int32
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    softmax_scale: float | None = None,  # default 1/sqrt(head_dim)
    *,
    dqkv: torch.Tensor | None = None,  # (T, 3, heads, head_dim) contiguous, q's dtype (Tq == Tk): written
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each in its input's shape and q's dtype. With Tq == Tk they are the three views
    [:, 0], [:, 1], [:, 2] of one contiguous (T, 3, heads, head_dim) buffer (`dqkv`, or a new one).
    Rows outside every sequence are not written (the offsets must cover every row, as the op API
    checks)."""
    head_dim, heads = q.shape[-1], q.shape[-2]
    assert head_dim in SUPPORTED_HEAD_DIMS and q.dtype == k.dtype == v.dtype == dout.dtype == out.dtype
    assert lse.shape == (heads, q.shape[0]) and lse.dtype == torch.float32 and lse.stride(1) == 1
    q, k, v, dout, out = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, dout, out))
    if dqkv is not None:
        assert dqkv.shape == (q.shape[0], 3, heads, head_dim) == (k.shape[0], 3, heads, head_dim)
        assert dqkv.dtype == q.dtype and dqkv.is_contiguous()
        dq, dk, dv = dqkv.unbind(1)
    elif q.shape[0] == k.shape[0]:
        dq, dk, dv = torch.empty((q.shape[0], 3, heads, head_dim), dtype=q.dtype, device=q.device).unbind(1)
    else:
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dk, dv = (torch.empty(k.shape, dtype=q.dtype, device=q.device) for _ in range(2))
    batch = cu_seqlens_q.numel() - 1
    if batch <= 0 or q.shape[0] == 0 and k.shape[0] == 0:
        return dq, dk, dv
    cu_q = cu_seqlens_q.to(torch.int32).contiguous()
    cu_k = cu_seqlens_k.to(torch.int32).contiguous()
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
    small, big, num_warps, num_stages = tile_config(head_dim, q.element_size())
    flags = {"HEAD_DIM": head_dim, "CAUSAL": bool(causal),
             "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
             "DOT_UPCAST": q.dtype == torch.bfloat16 and interpreting(),
             "num_warps": num_warps, "num_stages": num_stages}
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
               dout.stride(0), dout.stride(1))
    delta = torch.empty_like(lse)
    block_t = 16 if interpreting() else _PREPROCESS_BLOCK_T
    with on_device_of(q):
        if q.shape[0]:
            _attn_bwd_preprocess_kernel[(triton.cdiv(q.shape[0], block_t), heads)](
                out, dout, delta, out.stride(0), out.stride(1), dout.stride(0), dout.stride(1),
                delta.stride(0), q.shape[0], HEAD_DIM=head_dim, BLOCK_T=block_t,
            )
        for b0 in range(0, batch, _MAX_GRID_BATCH):
            nb = min(_MAX_GRID_BATCH, batch - b0)
            if max_seqlen_k:
                _attn_bwd_dkdv_kernel[(triton.cdiv(max_seqlen_k, big), heads, nb)](
                    q, k, v, dout, lse, delta, dk, dv, cu_q[b0:], cu_k[b0:], *strides,
                    dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0),
                    scale * _LOG2E, scale, BLOCK_M=small, BLOCK_N=big, **flags,
                )
            if max_seqlen_q:
                _attn_bwd_dq_kernel[(triton.cdiv(max_seqlen_q, big), heads, nb)](
                    q, k, v, dout, lse, delta, dq, cu_q[b0:], cu_k[b0:], *strides,
                    dq.stride(0), dq.stride(1), lse.stride(0),
                    scale * _LOG2E, scale, BLOCK_M=big, BLOCK_N=small, **flags,
                )
    return dq, dk, dv
