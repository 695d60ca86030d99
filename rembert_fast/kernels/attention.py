"""Fused attention forward over packed variable-length sequences (FlashAttention-2 style).

Math, per sequence b and head h, with L_q = len_q(b), L_k = len_k(b):

    S = scale * Q K^T                     (L_q, L_k)
    S[i, j] = -inf  where key j is padding, or (causal) j > i + L_k - L_q
    O = softmax(S) V                      (L_q, head_dim); a row with no visible key is 0

Causal masking is aligned to the bottom-right corner, as flash-attention's varlen functions do.
The softmax is computed online (running max m and sum l per query row), in fp32, in base 2:
log2(e) is folded into the scale so every exponential is one `exp2`, and S is never materialised.

Grid: (cdiv(max_seqlen_q, BLOCK_M), heads, batch). A program owns BLOCK_M query rows of one head
of one sequence; it reads its sequence's [start, end) from `cu_seqlens_q` / `cu_seqlens_k` and
exits at once when its block starts past the end of a shorter sequence. It walks the keys in
BLOCK_N blocks: first the blocks every row of the query block may see in full (no masks), then the
tail block and the causal diagonal blocks with masks. The causal walk stops at the diagonal.

Layout: q/k/v are (tokens, heads, head_dim) tensors read through their strides, so views sliced
from one fused QKV GEMM output (T, 3, heads, head_dim) are taken as they are: no transpose, no
copy (a tensor whose last dim is not contiguous is made contiguous first). The output is a fresh
contiguous (T, heads, head_dim) tensor, so `.view(T, heads * head_dim)` for the output projection
is free. Token offsets are computed in int64 (T * stride overflows int32 at large batches).

The padded entry `attention_padded` runs the same kernel on (B, L, heads, head_dim) tensors: the
batch becomes a stride instead of a cu_seqlens offset, and the (B, L) key-padding mask is loaded
per key block (so left padding and holes are handled, not only right padding).

Dtypes: fp32, fp16 and bf16 in (q, k, v alike); the output has q's dtype. Q K^T and P V run on
tensor cores in the input dtype with fp32 accumulation (P is rounded to the input dtype before
P V, as in FlashAttention); fp32 inputs use IEEE fp32 dots, not TF32, so fp32 stays exact to ~1e-6.

Tuning: `triton.autotune` over CONFIGS (BLOCK_M, BLOCK_N in {32, 64, 128}, 4 or 8 warps, 2-4
stages, plus the smaller fp32 tiles of FP32_TILES), pruned per head_dim and dtype by `keep()` to 1-4
configs, keyed on head_dim, the flags and a power-of-two bucket of max_seqlen_q. Under the
interpreter one fixed 16 x 16 config is used.

Limits: head_dim in SUPPORTED_HEAD_DIMS (16, 32, 64, 128; rembert_fast.ops sends other sizes to eager);
batches over 65535 sequences are launched in chunks (CUDA's grid z limit); fp32 dots are IEEE
(slower than TF32, chosen for exactness); no dropout, no attention bias. The backward (varlen only)
is in `attention_backward.py`; the forward saves the per-row log-sum-exp it needs (``lse=``).
cu_seqlens are trusted (as in flash-attention): rows of q outside every sequence are not written.

References: Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"
(arXiv 2307.08691); Triton tutorial 06-fused-attention; flash-attention's `flash_attn_varlen_func`
(argument names and the bottom-right causal convention).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from rembert_fast.kernels._launch import interpreting, on_device_of, output_buffer

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)

# The grid's batch axis (z) is limited to 65535 by CUDA; larger batches are launched in chunks.
_MAX_GRID_BATCH = 65535
_LOG2E = 1.4426950408889634

# Shared memory an sm_80 block may use (A100: 163 KiB opt-in); configs above it cannot launch there.
SM80_SHARED_MEMORY = 163 * 1024
# Budget for the ring of K and V tiles the software pipeline keeps in flight: at 64 KiB two programs
# still fit one sm_80 SM (with their Q tiles), so one program's softmax overlaps the other's loads.
KV_RING_BYTES = 64 * 1024


def shared_memory_estimate(
    block_m: int, block_n: int, num_stages: int, head_dim: int, elem_bytes: int
) -> int:
    """Bytes of shared memory a config needs: an upper bound on the compiled kernels' `shared`.

    K and V tiles are staged through shared memory, one buffer per pipeline stage; the Q tile (and,
    reusing the same space, the P tile converted for the P V dot) takes one more buffer; fp32 row
    statistics exchanged between warps take up to 8 bytes per query row. The compile gate
    (tests/test_compile.py) checks the bound on every kept config: sm_90 16-bit kernels use exactly
    ring + tile, fp32 adds 512-608 B of scratch, sm_80 pipelines with one K/V stage fewer.
    """
    kv_ring = 2 * block_n * head_dim * elem_bytes * num_stages
    return kv_ring + block_m * max(block_n, head_dim) * elem_bytes + 8 * block_m


def _deepest_stages(block_n: int, head_dim: int, elem_bytes: int) -> int:
    """The most pipeline stages (2..4) whose K/V ring fits KV_RING_BYTES; 0 if even 2 do not."""
    ring_per_stage = 2 * block_n * head_dim * elem_bytes
    return max((s for s in (2, 3, 4) if s * ring_per_stage <= KV_RING_BYTES), default=0)


# fp32 dots are IEEE (no TF32) and run on FMA units, which hold each thread's rows of both operands
# in registers: larger tiles spill. These (BLOCK_M, BLOCK_N, num_warps) are the fp32 tiles that compile
# without a register spill on sm_80 and sm_90, causal or not (the compile gate, tests/test_compile.py,
# fails any admitted config that spills).
FP32_TILES = {
    16: ((128, 64, 8), (128, 128, 8)),
    32: ((64, 32, 4),),
    64: ((32, 16, 4), (64, 16, 8), (32, 32, 8)),
    128: ((32, 16, 8),),
}
# 16-bit tiles that spill registers for sm_8x (sm_80's ptxas allocates the MMA fragments differently
# from sm_90's), per head_dim: not admitted below sm_90.
SM80_SPILLING_16BIT_TILES = {
    64: ((128, 64, 4), (128, 128, 8)),
    128: ((64, 64, 4), (128, 64, 8)),
}


def keep(conf: triton.Config, head_dim: int, elem_bytes: int, arch: int = 90) -> bool:
    """Whether autotune should try `conf` for this head_dim, element size and compute capability
    (`arch`: major * 10 + minor of the device); 1 to 4 configs each.

    fp32: the tiles of FP32_TILES only. 16-bit, blocks of 32 to 128 rows and 4 or 8 warps:
    - at least 16 query rows per warp (one m16 MMA tile), so no warp computes only padding rows;
    - BLOCK_N <= BLOCK_M: more keys than queries per step only grows registers and the masked tail;
    - 8 warps exactly when a 128 x 128 fp32 tile (S or the O accumulator) would otherwise give each
      of 128 threads 128 registers of it and spill; 4 warps for smaller tiles;
    - 32-key blocks only for rows of 256+ bytes (head_dim 128), where larger K/V tiles would not fit
      the ring;
    - below sm_90, none of SM80_SPILLING_16BIT_TILES.
    Both:
    - the deepest pipeline whose K/V ring fits KV_RING_BYTES (deeper hides more load latency; a
      tile that does not fit at 2 stages is dropped);
    - the whole block fits sm_80 shared memory (tests/test_compile.py measures each kept config).
    """
    block_m, block_n, num_warps = conf.kwargs["BLOCK_M"], conf.kwargs["BLOCK_N"], conf.num_warps
    if elem_bytes == 4:
        if (block_m, block_n, num_warps) not in FP32_TILES.get(head_dim, ()):
            return False
    else:
        if min(block_m, block_n) < 32 or num_warps not in (4, 8):  # the tiles FP32_TILES adds
            return False
        if block_m // num_warps < 16 or block_n > block_m:
            return False
        if (num_warps == 8) != (block_m * max(block_n, head_dim) >= 128 * 128):
            return False
        if block_n == 32 and head_dim * elem_bytes < 256:
            return False
        if arch < 90 and (block_m, block_n, num_warps) in SM80_SPILLING_16BIT_TILES.get(head_dim, ()):
            return False
    if conf.num_stages != _deepest_stages(block_n, head_dim, elem_bytes):
        return False
    shared = shared_memory_estimate(block_m, block_n, conf.num_stages, head_dim, elem_bytes)
    return shared <= SM80_SHARED_MEMORY


# The search space; `keep` narrows it per head_dim and dtype at launch (the autotuner's prune hook).
_TILES = [(block_m, block_n, num_warps) for block_m in (32, 64, 128) for block_n in (32, 64, 128)
          for num_warps in (4, 8)]
_TILES += sorted({tile for tiles in FP32_TILES.values() for tile in tiles} - set(_TILES))
CONFIGS = [
    triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)
    for block_m, block_n, num_warps in _TILES
    for num_stages in (2, 3, 4)
]

# The Triton 3.9 interpreter's dot multiplies bf16 tiles as their raw uint16 storage (numpy has no
# bf16), so under the interpreter bf16 tiles are widened to fp32 before each dot: exact, and the
# products and fp32 sums are the ones the tensor-core bf16 dot computes. Compiled kernels never do it.
#
# The interpreter runs every config it autotunes, slowly: tests use one small config instead, whose
# 16-row blocks make tiny test sequences span several blocks (tail, diagonal and early-exit paths).
INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)


def configs_for(head_dim: int, elem_bytes: int, arch: int = 90) -> list[triton.Config]:
    """The configs autotune tries for one head_dim, element size and arch (what the compile gate builds)."""
    return [conf for conf in CONFIGS if keep(conf, head_dim, elem_bytes, arch)]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    args = {**named_args, **kwargs}
    head_dim, elem_bytes = args["HEAD_DIM"], args["Q"].element_size()
    major, minor = torch.cuda.get_device_capability(args["Q"].device)
    return [conf for conf in configs if keep(conf, head_dim, elem_bytes, 10 * major + minor)]


@triton.jit
def _attn_fwd_inner(
    acc,  # (BLOCK_M, HEAD_DIM) fp32 running numerator
    l_i,  # (BLOCK_M,) fp32 running denominator
    m_i,  # (BLOCK_M,) fp32 running max of the scaled base-2 logits
    q,  # (BLOCK_M, HEAD_DIM) query tile, input dtype
    k_base,  # pointer to key row 0 of this sequence and head
    v_base,  # pointer to value row 0 of this sequence and head
    mask_base,  # pointer to this sequence's key-padding mask row (read only when HAS_KEY_MASK)
    stride_kt,  # elements between consecutive key tokens
    stride_vt,  # elements between consecutive value tokens
    stride_mt,  # elements between consecutive mask entries
    offs_m,  # (BLOCK_M,) query positions within the sequence
    causal_shift,  # L_k - L_q: query i sees keys j <= i + causal_shift
    len_k,  # keys in this sequence
    lo,  # first key of the walk (a multiple of BLOCK_N)
    hi,  # one past the last key of the walk
    qk_scale,  # softmax_scale * log2(e)
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,  # blocks that cross the sequence end or the causal diagonal
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_UPCAST: tl.constexpr,
):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[None, :].to(tl.int64) * stride_kt + offs_d[:, None]  # (HEAD_DIM, BLOCK_N)
        v_ptrs = v_base + offs_n[:, None].to(tl.int64) * stride_vt + offs_d[None, :]  # (BLOCK_N, HEAD_DIM)
        if MASKED:
            k = tl.load(k_ptrs, mask=offs_n[None, :] < len_k, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < len_k, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        if DOT_UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N) fp32
        if MASKED:
            visible = offs_n[None, :] < len_k
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None] + causal_shift)
            qk = tl.where(visible, qk, float("-inf"))
        if HAS_KEY_MASK:
            key_real = tl.load(mask_base + offs_n.to(tl.int64) * stride_mt, mask=offs_n < len_k, other=0)
            qk = tl.where(key_real[None, :] != 0, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row that has seen only masked keys keeps m = -inf; subtracting 0 instead keeps its
        # p = exp2(-inf) = 0 and alpha = 0 rather than exp2(-inf - -inf) = NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(qk - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(v_base.dtype.element_ty)  # P V runs in the input dtype, as on tensor cores
        if DOT_UPCAST:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = tl.dot(p, v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q,  # (Tq, heads, HEAD_DIM) packed, or (B, Lq, heads, HEAD_DIM) padded; last dim contiguous
    K,  # (Tk, heads, HEAD_DIM) or (B, Lk, heads, HEAD_DIM)
    V,  # same shape as K
    Out,  # same layout as Q, contiguous, q's dtype
    CU_SEQLENS_Q,  # (B+1,) int32 cumulative query lengths (read when IS_VARLEN)
    CU_SEQLENS_K,  # (B+1,) int32 cumulative key lengths (read when IS_VARLEN)
    KEY_MASK,  # (B, Lk) key-padding mask, non-zero = real key (read when HAS_KEY_MASK)
    LSE,  # (heads, Tq) fp32 per-row log2-sum-exp2 of the scaled logits, for the backward (STORE_LSE)
    stride_qb,  # Q batch stride (padded layout only)
    stride_qt,  # Q token stride
    stride_qh,  # Q head stride
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ob,
    stride_ot,
    stride_oh,
    stride_mb,  # KEY_MASK batch stride
    stride_mt,  # KEY_MASK key stride
    stride_lse_h,  # LSE head stride
    seqlen_q,  # Lq of the padded layout (unused when IS_VARLEN)
    seqlen_k,  # Lk of the padded layout (unused when IS_VARLEN)
    qk_scale,  # softmax_scale * log2(e)
    MAX_SEQLEN_BUCKET,  # power-of-two bucket of max_seqlen_q: an autotune key, not read
    HEAD_DIM: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no TF32), "tf32" otherwise (unused by fp16/bf16)
    DOT_UPCAST: tl.constexpr,  # interpreter + bf16 only: dot on exact fp32 copies of the bf16 tiles
    STORE_LSE: tl.constexpr,  # write LSE (varlen only)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(IS_VARLEN or not STORE_LSE, "the log-sum-exp is stored for the varlen layout only")
    start_m = tl.program_id(0)
    off_h = tl.program_id(1).to(tl.int64)
    off_b = tl.program_id(2)
    if IS_VARLEN:
        q_start = tl.load(CU_SEQLENS_Q + off_b)
        len_q = tl.load(CU_SEQLENS_Q + off_b + 1) - q_start
        k_start = tl.load(CU_SEQLENS_K + off_b)
        len_k = tl.load(CU_SEQLENS_K + off_b + 1) - k_start
        q_row0 = q_start.to(tl.int64) * stride_qt
        k_row0 = k_start.to(tl.int64) * stride_kt
        v_row0 = k_start.to(tl.int64) * stride_vt
        o_row0 = q_start.to(tl.int64) * stride_ot
    else:
        len_q = seqlen_q
        len_k = seqlen_k
        q_row0 = off_b.to(tl.int64) * stride_qb
        k_row0 = off_b.to(tl.int64) * stride_kb
        v_row0 = off_b.to(tl.int64) * stride_vb
        o_row0 = off_b.to(tl.int64) * stride_ob
    if start_m * BLOCK_M >= len_q:
        return

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + q_row0 + off_h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < len_q, other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)
    k_base = K + k_row0 + off_h * stride_kh
    v_base = V + v_row0 + off_h * stride_vh
    mask_base = KEY_MASK + off_b.to(tl.int64) * stride_mb

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    causal_shift = len_k - len_q
    # Keys [0, full_end) are seen by every row of this block: whole blocks, before the diagonal.
    full_end = (len_k // BLOCK_N) * BLOCK_N
    hi = len_k
    if CAUSAL:
        full_end = tl.minimum(full_end, ((start_m * BLOCK_M + causal_shift + 1) // BLOCK_N) * BLOCK_N)
        full_end = tl.maximum(full_end, 0)
        hi = tl.minimum(hi, start_m * BLOCK_M + BLOCK_M + causal_shift)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kt, stride_vt,
                                    stride_mt, offs_m, causal_shift, len_k, 0, full_end, qk_scale,
                                    HEAD_DIM, BLOCK_N, False, CAUSAL, HAS_KEY_MASK, DOT_PRECISION, DOT_UPCAST)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, mask_base, stride_kt, stride_vt,
                                    stride_mt, offs_m, causal_shift, len_k, full_end, hi, qk_scale,
                                    HEAD_DIM, BLOCK_N, True, CAUSAL, HAS_KEY_MASK, DOT_PRECISION, DOT_UPCAST)

    # Rows with no visible key have l = 0 and acc = 0: divide by 1 so they come out 0, not NaN.
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = Out + o_row0 + off_h * stride_oh + offs_m[:, None].to(tl.int64) * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < len_q)
    if STORE_LSE:
        # m + log2(l) in the base-2 units of qk_scale; +inf for a row with no visible key, so the
        # backward's exp2(s - lse) is 0 there.
        lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        lse_ptrs = LSE + off_h * stride_lse_h + q_start + offs_m
        tl.store(lse_ptrs, lse, mask=offs_m < len_q)


_attn_fwd = triton.autotune(
    configs=[INTERPRETER_CONFIG] if interpreting() else CONFIGS,
    key=["HEAD_DIM", "IS_VARLEN", "CAUSAL", "HAS_KEY_MASK", "MAX_SEQLEN_BUCKET"],
    prune_configs_by=None if interpreting() else {"early_config_prune": _prune},
)(_attn_fwd_kernel)


def _seqlen_bucket(max_seqlen: int) -> int:
    """Autotune per power of two of the longest sequence (64 .. 8192): a handful of tuning keys."""
    return min(max(triton.next_power_of_2(max(max_seqlen, 1)), 64), 8192)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_head_dim(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rank: int) -> None:
    """What the kernel cannot take (ValueError); the rest was validated by `rembert_fast.ops`."""
    assert q.dim() == k.dim() == v.dim() == rank and q.dtype == k.dtype == v.dtype
    assert k.shape == v.shape and k.shape[-2:] == q.shape[-2:]
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {q.shape[-1]} is not supported by the kernel; use one of "
                         f"{SUPPORTED_HEAD_DIMS} or the eager backend")


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    batch: int,
    max_seqlen_q: int,
    causal: bool,
    softmax_scale: float | None,
    lse: torch.Tensor | None = None,
) -> None:
    """Launch over `batch` sequences; q/k/v/out are 3-D packed (cu_seqlens given) or 4-D padded; `lse`
    ((heads, Tq) fp32, varlen only) receives each row's log-sum-exp when given."""
    head_dim, heads = q.shape[-1], q.shape[-2]
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
    varlen = cu_seqlens_q is not None

    def strides(t: torch.Tensor) -> tuple[int, int, int]:
        return (0, t.stride(0), t.stride(1)) if varlen else (t.stride(0), t.stride(1), t.stride(2))

    mask_strides = (key_mask.stride(0), key_mask.stride(1)) if key_mask is not None else (0, 0)
    seqlen_q, seqlen_k = (0, 0) if varlen else (q.shape[1], k.shape[1])
    # Unused pointer arguments get a tensor of the right kind so each specialisation has one signature;
    # it is never read, so `empty` (no fill kernel).
    cu_q = cu_seqlens_q if varlen else torch.empty(1, dtype=torch.int32, device=q.device)
    cu_k = cu_seqlens_k if varlen else cu_q
    mask = key_mask if key_mask is not None else cu_q
    with on_device_of(q):
        for b0 in range(0, batch, _MAX_GRID_BATCH):
            nb = min(_MAX_GRID_BATCH, batch - b0)
            if varlen:
                # cu_seqlens hold absolute token offsets, so a chunk is a slice of them; tensors stay whole.
                args = (q, k, v, out, cu_q[b0:], cu_k[b0:], mask, lse)
            else:
                chunk_mask = mask[b0:] if key_mask is not None else mask
                args = (q[b0:], k[b0:], v[b0:], out[b0:], cu_q, cu_k, chunk_mask, None)

            def grid(meta: dict, nb: int = nb) -> tuple[int, int, int]:
                return (triton.cdiv(max_seqlen_q, meta["BLOCK_M"]), heads, nb)

            _attn_fwd[grid](
                *args,
                *strides(q), *strides(k), *strides(v), *strides(out), *mask_strides,
                lse.stride(0) if lse is not None else 0,
                seqlen_q, seqlen_k, scale * _LOG2E, _seqlen_bucket(max_seqlen_q),
                HEAD_DIM=head_dim,
                IS_VARLEN=varlen,
                CAUSAL=bool(causal),
                HAS_KEY_MASK=key_mask is not None,
                DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                DOT_UPCAST=q.dtype == torch.bfloat16 and interpreting(),
                STORE_LSE=lse is not None,
            )


def attention_varlen(
    q: torch.Tensor,  # (Tq, heads, head_dim) fp32/fp16/bf16; may be a strided view of a fused QKV buffer
    k: torch.Tensor,  # (Tk, heads, head_dim), q's dtype
    v: torch.Tensor,  # (Tk, heads, head_dim), q's dtype
    cu_seqlens_q: torch.Tensor,  # (B+1,) int32 cumulative query lengths, cu_seqlens_q[0] == 0
    cu_seqlens_k: torch.Tensor,  # (B+1,) int32 cumulative key lengths
    max_seqlen_q: int,  # longest query sequence (sizes the grid)
    max_seqlen_k: int,  # longest key sequence
    causal: bool = False,  # bottom-right aligned: query i sees keys j <= i + len_k - len_q
    softmax_scale: float | None = None,  # default 1/sqrt(head_dim)
    *,
    out: torch.Tensor | None = None,  # (Tq, heads, head_dim) contiguous, q's dtype; allocated if None
    lse: torch.Tensor | None = None,  # (heads, Tq) fp32 with unit token stride: receives the log-sum-exp
) -> torch.Tensor:
    """Attention over packed variable-length sequences; returns (Tq, heads, head_dim) in q's dtype.

    Rows of `out` outside every [cu_seqlens_q[b], cu_seqlens_q[b+1]) are not written. With `lse`, each
    row's log2-sum-exp2 of its logits scaled by softmax_scale * log2(e) (+inf where the row sees no key)
    is written there, what `attention_backward.attention_varlen_backward` reads.
    """
    _check_head_dim(q, k, v, 3)
    assert cu_seqlens_q.shape == cu_seqlens_k.shape and int(max_seqlen_q) >= 0 and int(max_seqlen_k) >= 0
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    out = output_buffer("attention", q, out)
    batch = cu_seqlens_q.numel() - 1
    if batch <= 0 or q.shape[0] == 0 or int(max_seqlen_q) == 0:
        return out
    # The kernel indexes the offsets as flat arrays: a strided view (a column of a table) is copied.
    cu_seqlens_q = cu_seqlens_q.to(torch.int32).contiguous()
    cu_seqlens_k = cu_seqlens_k.to(torch.int32).contiguous()
    if lse is not None:
        assert lse.shape == (q.shape[1], q.shape[0]) and lse.dtype == torch.float32 and lse.stride(1) == 1
    _launch(q, k, v, out, cu_seqlens_q, cu_seqlens_k, None, batch, int(max_seqlen_q), causal, softmax_scale,
            lse)
    return out


def attention_padded(
    q: torch.Tensor,  # (B, Lq, heads, head_dim) fp32/fp16/bf16
    k: torch.Tensor,  # (B, Lk, heads, head_dim), q's dtype
    v: torch.Tensor,  # (B, Lk, heads, head_dim), q's dtype
    key_padding_mask: torch.Tensor | None,  # (B, Lk) bool or integer, non-zero = real key; None = all real
    causal: bool = False,  # aligned to the bottom-right of the padded (Lq, Lk) square
    softmax_scale: float | None = None,  # default 1/sqrt(head_dim)
    *,
    out: torch.Tensor | None = None,  # (B, Lq, heads, head_dim) contiguous, q's dtype; allocated if None
) -> torch.Tensor:
    """Attention on a padded batch with a key-padding mask; returns (B, Lq, heads, head_dim).

    Every query row is written; a row that sees no real key (all keys padding) is 0.
    """
    _check_head_dim(q, k, v, 4)
    assert k.shape[0] == q.shape[0]
    if key_padding_mask is not None:
        assert tuple(key_padding_mask.shape) == (k.shape[0], k.shape[1])
        if key_padding_mask.dtype == torch.bool:
            # Same bytes, a pointer type every backend loads; no copy.
            key_padding_mask = key_padding_mask.view(torch.uint8)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    out = output_buffer("attention", q, out)
    if q.numel() == 0:
        return out
    _launch(q, k, v, out, None, None, key_padding_mask, q.shape[0], q.shape[1], causal, softmax_scale)
    return out
