"""The varlen attention kernel (kernels/attention.py) against the eager reference.

On CPU the kernel runs under the Triton interpreter (conftest sets TRITON_INTERPRET=1), with its
16 x 16 interpreter blocks, so the tiny sequences here (1 to 40 tokens) still cover several query and
key blocks: the unmasked walk, the masked tail, the causal diagonal and early exit of short sequences.

Truth is `ops.attention_ref` / `ops.attention_padded_ref` in float64 on the same (dtype-rounded)
inputs. Tolerances:
- fp32: max error <= 1e-4 of the largest output magnitude.
- fp16/bf16: max error <= 2x the error of eager attention computed in the same dtype, plus half an
  ulp of the largest output (`eps / 2 * max|truth|`). Eager attention on CPU keeps the softmax
  probabilities P in fp32; the kernel, like FlashAttention, rounds P to the input dtype so P V runs
  on tensor cores, which adds up to eps/2 * sum_j p_j |v_j| per output: of the order of half an ulp
  of the outputs. In bf16 that rounding is most of the kernel's error (about 2-3x eager's here), so
  the floor is what this design needs, and no more; fp16 errors come out equal to eager's.
"""

from __future__ import annotations

import pytest
import torch

# On a GPU machine the same cases run the compiled, autotuned kernel on CUDA tensors (conftest leaves
# TRITON_INTERPRET unset there, and the triton backend refuses CPU tensors without the interpreter).
from conftest import DEVICE, assert_within_twice_eager

from rembert_fast import ops
from rembert_fast.kernels import attention as kernel

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEADS = 2
# Lengths differing by 20x (2 vs 40), a length-1 sequence, and one shorter than a 16-row block.
LENGTHS = (2, 40, 1, 17, 5)


def _cu_seqlens(lengths: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor((0, *torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32, device=DEVICE)


def _fused_qkv(tokens: int, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v as the model makes them: strided views of one (T, 3 * heads * head_dim) GEMM output."""
    qkv = torch.randn(tokens, 3 * HEADS * head_dim, device=DEVICE).to(dtype)
    q, k, v = qkv.view(tokens, 3, HEADS, head_dim).unbind(1)
    return qkv, q, k, v


def _rel_error(out: torch.Tensor, truth: torch.Tensor) -> float:
    return ((out.double() - truth).abs().max() / truth.abs().max()).item()


def _assert_close(out: torch.Tensor, truth: torch.Tensor, eager_same_dtype: torch.Tensor) -> None:
    """Apply the module docstring's tolerance for out's dtype."""
    assert out.dtype == eager_same_dtype.dtype
    assert torch.isfinite(out).all()
    err = (out.double() - truth).abs().max().item()
    if out.dtype == torch.float32:
        assert err <= 1e-4 * truth.abs().max().item(), f"fp32 error {err}"
        return
    assert_within_twice_eager(out, truth, eager_same_dtype)


def _varlen_case(q, k, v, cu_q, cu_k, causal, softmax_scale=None):
    """(triton output, float64 truth, eager same-dtype output) through the op API."""
    max_q = int((cu_q[1:] - cu_q[:-1]).max())
    max_k = int((cu_k[1:] - cu_k[:-1]).max())
    with ops.use_backend("triton"):
        out = ops.attention(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal, softmax_scale=softmax_scale)
    truth = ops.attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k, max_q, max_k, causal=causal,
                              softmax_scale=softmax_scale)
    eager = ops.attention_ref(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal, softmax_scale=softmax_scale)
    return out, truth, eager


@pytest.mark.parametrize("head_dim", (16, 32, 64, 128))
@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_varlen_matches_reference(dtype: torch.dtype, causal: bool, head_dim: int) -> None:
    cu = _cu_seqlens(LENGTHS)
    _, q, k, v = _fused_qkv(int(cu[-1]), head_dim, dtype)
    out, truth, eager = _varlen_case(q, k, v, cu, cu, causal)
    assert out.shape == (int(cu[-1]), HEADS, head_dim) and out.is_contiguous()
    _assert_close(out, truth, eager)


@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_varlen_queries_and_keys_differ_in_length(dtype: torch.dtype, causal: bool) -> None:
    # Second sequence: more queries than keys, so under causal masking (bottom-right aligned) its
    # first 11 query rows see no key at all and must come out 0, not NaN. Last: no queries at all.
    lens_q, lens_k = (3, 16, 1, 20, 0), (21, 5, 33, 20, 4)
    cu_q, cu_k = _cu_seqlens(lens_q), _cu_seqlens(lens_k)
    q = torch.randn(int(cu_q[-1]), HEADS, 32, device=DEVICE).to(dtype)
    k = torch.randn(int(cu_k[-1]), HEADS, 32, device=DEVICE).to(dtype)
    v = torch.randn(int(cu_k[-1]), HEADS, 32, device=DEVICE).to(dtype)
    out, truth, eager = _varlen_case(q, k, v, cu_q, cu_k, causal, softmax_scale=0.3)
    _assert_close(out, truth, eager)
    if causal:
        blind = slice(int(cu_q[1]), int(cu_q[1]) + 11)
        assert (out[blind] == 0).all()
        assert (out[int(cu_q[1]) + 11] != 0).any()


@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
def test_all_sequences_of_length_one(causal: bool) -> None:
    cu = _cu_seqlens((1, 1, 1))
    _, q, k, v = _fused_qkv(3, 64, torch.float32)
    out, truth, eager = _varlen_case(q, k, v, cu, cu, causal)
    _assert_close(out, truth, eager)
    # One key: softmax is 1, the output is that token's value row.
    torch.testing.assert_close(out, v, rtol=1e-6, atol=1e-6)


class _LaunchSpy:
    """Wraps the autotuned kernel: records the tensors each launch gets, then launches for real."""

    def __init__(self, launcher) -> None:
        self.launcher = launcher
        self.calls: list[tuple] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(args)
            return self.launcher[grid](*args, **kwargs)

        return launch


def test_fused_qkv_views_are_read_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    cu = _cu_seqlens(LENGTHS)
    tokens, head_dim = int(cu[-1]), 64
    qkv, q, k, v = _fused_qkv(tokens, head_dim, torch.float16)
    assert not q.is_contiguous()
    spy = _LaunchSpy(kernel._attn_fwd)
    monkeypatch.setattr(kernel, "_attn_fwd", spy)
    out, truth, eager = _varlen_case(q, k, v, cu, cu, causal=False)
    _assert_close(out, truth, eager)
    (launched,) = spy.calls
    lq, lk, lv = launched[:3]
    row = HEADS * head_dim * qkv.element_size()
    # The kernel got the views themselves: same storage, offsets 0 / 1 / 2 head-blocks into each row.
    assert [t.data_ptr() - qkv.data_ptr() for t in (lq, lk, lv)] == [0, row, 2 * row]
    assert lq.stride() == (3 * HEADS * head_dim, head_dim, 1)
    # And the output needs no copy to become the (T, hidden) input of the output projection.
    assert out.view(tokens, HEADS * head_dim).data_ptr() == out.data_ptr()


@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_every_output_row_is_written(dtype: torch.dtype, causal: bool) -> None:
    cu = _cu_seqlens(LENGTHS)
    _, q, k, v = _fused_qkv(int(cu[-1]), 32, dtype)
    out = torch.full(q.shape, float("nan"), dtype=dtype, device=DEVICE)
    result = kernel.attention_varlen(q, k, v, cu, cu, max(LENGTHS), max(LENGTHS), causal=causal, out=out)
    assert result.data_ptr() == out.data_ptr()
    truth = ops.attention_ref(q.double(), k.double(), v.double(), cu, cu, max(LENGTHS), max(LENGTHS),
                              causal=causal)
    _assert_close(out, truth, ops.attention_ref(q, k, v, cu, cu, max(LENGTHS), max(LENGTHS), causal=causal))


def test_strided_cu_seqlens_are_read_by_value() -> None:
    # A column of a (B+1, 2) table of offsets: the kernel indexes cu_seqlens as a flat array, so a view
    # with stride 2 must be made contiguous first, or sequence b reads another entry's offset.
    cu = _cu_seqlens(LENGTHS)
    both = torch.stack([cu, torch.zeros_like(cu)], dim=1)  # (B+1, 2)
    strided = both[:, 0]
    assert strided.stride() == (2,) and torch.equal(strided, cu)
    _, q, k, v = _fused_qkv(int(cu[-1]), 32, torch.float32)
    out, truth, eager = _varlen_case(q, k, v, strided, strided, causal=False)
    _assert_close(out, truth, eager)


def test_batches_beyond_the_grid_limit_are_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA caps the grid's batch axis at 65535; shrink the cap so the chunked path runs at a tiny size.
    monkeypatch.setattr(kernel, "_MAX_GRID_BATCH", 2)
    cu = _cu_seqlens(LENGTHS)
    _, q, k, v = _fused_qkv(int(cu[-1]), 16, torch.float32)
    out, truth, eager = _varlen_case(q, k, v, cu, cu, causal=True)
    _assert_close(out, truth, eager)
    bq = torch.randn(5, 9, HEADS, 16, device=DEVICE)
    mask = torch.ones(5, 9, dtype=torch.bool, device=DEVICE)
    mask[1, 4:] = False
    with ops.use_backend("triton"):
        padded = ops.attention_padded(bq, bq, bq, mask)
    padded_truth = ops.attention_padded_ref(bq.double(), bq.double(), bq.double(), mask)
    assert _rel_error(padded, padded_truth) <= 1e-4


def _key_masks(batch: int, seqlen: int) -> torch.Tensor:
    """Right padding (lengths seqlen, 4, 1), left padding, and holes; key 0 of each row is real
    except under left padding, where real query i >= first real key always sees that key."""
    mask = torch.zeros(batch, seqlen, dtype=torch.bool, device=DEVICE)
    mask[0, :] = True
    mask[1, :4] = True
    mask[2, :1] = True
    mask[3, seqlen - 6:] = True
    mask[4, ::3] = True
    return mask


@pytest.mark.parametrize("mask_dtype", (torch.bool, torch.int64), ids=str)
@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_padded_matches_reference(dtype: torch.dtype, causal: bool, mask_dtype: torch.dtype) -> None:
    batch, seqlen, head_dim = 5, 23, 32
    q, k, v = (torch.randn(batch, seqlen, HEADS, head_dim, device=DEVICE).to(dtype) for _ in range(3))
    mask = _key_masks(batch, seqlen)
    with ops.use_backend("triton"):
        out = ops.attention_padded(q, k, v, mask.to(mask_dtype), causal=causal)
    truth = ops.attention_padded_ref(q.double(), k.double(), v.double(), mask, causal=causal)
    eager = ops.attention_padded_ref(q, k, v, mask, causal=causal)
    assert out.shape == q.shape
    assert torch.isfinite(out).all()  # padding query rows are unspecified but finite
    _assert_close(out[mask], truth[mask], eager[mask])


@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
def test_padded_without_mask_and_with_unequal_lengths(causal: bool) -> None:
    q = torch.randn(2, 7, HEADS, 16, device=DEVICE)
    k, v = torch.randn(2, 19, HEADS, 16, device=DEVICE), torch.randn(2, 19, HEADS, 16, device=DEVICE)
    with ops.use_backend("triton"):
        out = ops.attention_padded(q, k, v, None, causal=causal, softmax_scale=0.5)
    truth = ops.attention_padded_ref(q.double(), k.double(), v.double(), None, causal=causal,
                                     softmax_scale=0.5)
    assert _rel_error(out, truth) <= 1e-4


def test_unsupported_head_dim_routes_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("the kernel was called for an unsupported head_dim")

    monkeypatch.setattr(kernel, "attention_varlen", must_not_run)
    monkeypatch.setattr(kernel, "attention_padded", must_not_run)
    cu = _cu_seqlens((3, 7))
    q, k, v = (torch.randn(10, HEADS, 48, device=DEVICE) for _ in range(3))
    with ops.use_backend("triton"):
        out = ops.attention(q, k, v, cu, cu, 7, 7, causal=True)
        padded = ops.attention_padded(*(t.view(2, 5, HEADS, 48) for t in (q, k, v)))
    torch.testing.assert_close(out, ops.attention_ref(q, k, v, cu, cu, 7, 7, causal=True))
    assert padded.shape == (2, 5, HEADS, 48)


def test_launcher_rejects_bad_arguments() -> None:
    cu = _cu_seqlens((3, 7))
    q = torch.randn(10, HEADS, 48, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim 48"):
        kernel.attention_varlen(q, q, q, cu, cu, 7, 7)
    q = torch.randn(10, HEADS, 16, device=DEVICE)
    with pytest.raises(ValueError, match="out must be"):
        kernel.attention_varlen(q, q, q, cu, cu, 7, 7, out=torch.empty(10, HEADS, 8, device=DEVICE))


def test_op_rejects_bad_arguments() -> None:
    """Validated once, by the op (the launcher trusts its caller)."""
    cu = _cu_seqlens((3, 7))
    q = torch.randn(10, HEADS, 16, device=DEVICE)
    with ops.use_backend("triton"):
        with pytest.raises(ValueError, match="float16"):
            ops.attention(q, q.half(), q, cu, cu, 7, 7)
        with pytest.raises(ValueError, match="max_seqlen_q"):
            ops.attention(q, q, q, cu, cu, -1, 7)
        with pytest.raises(ValueError, match="key_padding_mask"):
            ops.attention_padded(q.view(2, 5, HEADS, 16), q.view(2, 5, HEADS, 16), q.view(2, 5, HEADS, 16),
                                 torch.ones(2, 4, dtype=torch.bool, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rembert_shapes_on_gpu(dtype: torch.dtype, causal: bool) -> None:
    # RemBERT's 18 heads of 64 at its longest sequences, through the autotuned compiled kernel.
    lengths = (512, 3, 200, 1, 77, 512, 130, 64)
    cu = _cu_seqlens(lengths).cuda()
    qkv = torch.randn(int(cu[-1]), 3, 18, 64, device="cuda").to(dtype)
    q, k, v = qkv.unbind(1)
    with ops.use_backend("triton"):
        out = ops.attention(q, k, v, cu, cu, 512, 512, causal=causal)
        again = ops.attention(q, k, v, cu, cu, 512, 512, causal=causal)  # the tuned config, cached
    truth = ops.attention_ref(q.double(), k.double(), v.double(), cu, cu, 512, 512, causal=causal)
    eager = ops.attention_ref(q, k, v, cu, cu, 512, 512, causal=causal)
    _assert_close(out, truth, eager)
    # Each output row is one program's sum in a fixed order: a result that changes between calls on the
    # same input is a race.
    assert torch.equal(out, again)


@pytest.mark.gpu
def test_token_offsets_beyond_int32_on_gpu():
    # RemBERT's fused QKV rows are 3 * 18 * 64 = 3456 elements apart: past 621,378 tokens a token offset
    # exceeds 2**31, which only the compiled kernel (not the interpreter's numpy int64) could get wrong.
    # 1,216 sequences of 512 tokens; the first and last sequences are checked against the reference.
    seqlen, batch = 512, 1216
    cu = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device="cuda")
    qkv = torch.empty(batch * seqlen, 3, 18, 64, dtype=torch.bfloat16, device="cuda").normal_()
    assert qkv.numel() > 2**31
    q, k, v = qkv.unbind(1)
    out = kernel.attention_varlen(q, k, v, cu, cu, seqlen, seqlen)
    one = _cu_seqlens((seqlen,)).cuda()
    for start in (0, (batch - 1) * seqlen):
        rows = slice(start, start + seqlen)
        q64, k64, v64 = (t[rows].double() for t in (q, k, v))
        truth = ops.attention_ref(q64, k64, v64, one, one, seqlen, seqlen)
        eager = ops.attention_ref(q[rows], k[rows], v[rows], one, one, seqlen, seqlen)
        _assert_close(out[rows], truth, eager)


@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_eager_path_runs_one_sdpa_per_sequence(dtype: torch.dtype, causal: bool, monkeypatch) -> None:
    """ops.attention's eager path on CPU (`attention_per_sequence`: one SDPA per sequence on views of
    the packed rows, no padding) against attention_ref in float64, with queries and keys of different
    lengths (bottom-right causal alignment, queries that see no key come out 0), an empty query
    sequence, and fused-QKV views; fp32 to 1e-6 relative, fp16/bf16 within eager's own error."""
    lens_q, lens_k = (3, 16, 1, 20, 0, 9), (21, 5, 33, 20, 4, 9)
    cu_q, cu_k = _cu_seqlens(lens_q).cpu(), _cu_seqlens(lens_k).cpu()
    q = torch.randn(int(cu_q[-1]), HEADS, 32).to(dtype)
    _, k, v = _fused_qkv(int(cu_k[-1]), 32, dtype)[1:]
    k, v = k.cpu(), v.cpu()
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is None)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    with ops.use_backend("eager"):
        out = ops.attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, softmax_scale=0.3)
    assert len(calls) == 5  # one per sequence with queries; no padded batch call
    if causal:
        assert calls == [False, False, False, True, True]  # masks only where lengths differ
    monkeypatch.undo()
    truth = ops.attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k, max(lens_q), max(lens_k),
                              causal=causal, softmax_scale=0.3)
    eager = ops.attention_ref(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, softmax_scale=0.3)
    assert out.shape == q.shape and out.dtype == dtype
    if dtype == torch.float32:
        assert _rel_error(out, truth) <= 1e-6
    else:
        _assert_close(out, truth, eager)
    if causal:
        assert (out[int(cu_q[1]):int(cu_q[1]) + 11] == 0).all()  # 16 queries, 5 keys: 11 see none


def test_cpu_eager_path_gives_zeros_for_queries_without_keys() -> None:
    cu_q, cu_k = _cu_seqlens((4, 3)).cpu(), _cu_seqlens((0, 2)).cpu()
    q, k, v = torch.randn(7, HEADS, 16), torch.randn(2, HEADS, 16), torch.randn(2, HEADS, 16)
    out = ops.attention_per_sequence(q, k, v, cu_q, cu_k)
    truth = ops.attention_ref(q[4:], k, v, _cu_seqlens((3,)).cpu(), _cu_seqlens((2,)).cpu(), 3, 2)
    assert (out[:4] == 0).all()
    torch.testing.assert_close(out[4:], truth, rtol=1e-6, atol=1e-6)
