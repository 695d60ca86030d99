"""The varlen attention backward (kernels/attention_backward.py) against float64 eager autograd.

Under the interpreter both backward kernels use 16 x 16 tiles, so the short sequences here (0 to 40
tokens) cross key and query blocks, the causal diagonal and the early exits. The forward is the
kernel's own (`attention_varlen(..., lse=)`), so the saved log-sum-exp is what the backward reads.

Tolerances, per gradient: fp32 <= 1e-4 of its largest magnitude; fp16/bf16 at most twice eager
autograd's error in the same dtype plus a floor of one ulp of the largest magnitude: the kernel, like
FlashAttention, rounds P and dS to the input dtype before their dots (eager keeps them in fp32), half
an ulp each.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, assert_within_twice_eager, needs_triton

from rembert_fast import ops
from rembert_fast.kernels import attention as forward
from rembert_fast.kernels import attention_backward as backward

pytestmark = needs_triton
HEADS = 2


def _cu(lengths) -> torch.Tensor:
    return torch.tensor((0, *torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32, device=DEVICE)


def _run(lengths_q, lengths_k, head_dim, dtype, causal, fused=True, softmax_scale=None):
    """Forward + backward on the kernels and by eager autograd; asserts each gradient's tolerance and
    returns the kernel's (dq, dk, dv)."""
    cu_q, cu_k = _cu(lengths_q), _cu(lengths_k)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    if fused:  # strided views of one QKV GEMM output, as the model makes them
        q, k, v = torch.randn(tq, 3, HEADS, head_dim, device=DEVICE).to(dtype).unbind(1)
    else:
        q = torch.randn(tq, HEADS, head_dim, device=DEVICE).to(dtype)
        k, v = (torch.randn(tk, HEADS, head_dim, device=DEVICE).to(dtype) for _ in range(2))
    dout = torch.randn(tq, HEADS, head_dim, device=DEVICE).to(dtype)
    shape = (cu_q, cu_k, max(lengths_q, default=0), max(lengths_k, default=0), causal, softmax_scale)
    lse = torch.full((HEADS, tq), float("nan"), device=DEVICE)
    out = forward.attention_varlen(q, k, v, *shape, lse=lse)
    got = backward.attention_varlen_backward(dout, q, k, v, out, lse, *shape)
    truth = ops.reference.attention_backward_ref(dout.double(), q.double(), k.double(), v.double(), *shape)
    eager = ops.reference.attention_backward_ref(dout, q, k, v, *shape)
    for name, g, t, e, like in zip(("dq", "dk", "dv"), got, truth, eager, (q, k, v), strict=True):
        assert g.shape == like.shape and g.dtype == dtype, name
        assert torch.isfinite(g).all(), f"{name} has non-finite values"
        if g.numel() == 0:
            continue
        scale = t.abs().max().item()
        if dtype == torch.float32:
            err = (g.double() - t).abs().max().item()
            assert err <= 1e-4 * max(scale, 1e-3), f"{name}: fp32 error {err:.3g} (largest {scale:.3g})"
        else:
            assert_within_twice_eager(g, t, e, floor=torch.finfo(dtype).eps * scale, what=name)
    return got


@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("head_dim", forward.SUPPORTED_HEAD_DIMS)
def test_fp32_every_head_dim(head_dim, causal):
    lengths = (5, 33, 0, 17)  # uneven, one empty, one shorter than a block, one spanning three
    _run(lengths, lengths, head_dim, torch.float32, causal)


@pytest.mark.parametrize("causal", (False, True))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("head_dim", (16, 64, 128))
def test_half_precision(head_dim, dtype, causal):
    lengths = (19, 3, 29)
    _run(lengths, lengths, head_dim, dtype, causal)


@pytest.mark.parametrize("causal", (False, True))
def test_queries_and_keys_of_different_lengths(causal):
    # bottom-right causal alignment; a sequence with keys and no queries, one with queries and no keys
    _run((5, 20, 3, 0, 7), (7, 0, 30, 4, 7), 32, torch.float32, causal, fused=False)


def test_softmax_scale_and_single_tokens():
    _run((1, 1, 2), (1, 1, 2), 16, torch.float32, False, softmax_scale=0.3)


def test_gradients_share_one_qkv_shaped_buffer():
    dq, dk, dv = _run((9, 4), (9, 4), 16, torch.float32, True)
    base = dq.untyped_storage().data_ptr()
    assert dk.untyped_storage().data_ptr() == base == dv.untyped_storage().data_ptr()
    assert dq.stride() == (3 * HEADS * 16, 16, 1)
    buffer = torch.stack((dq, dk, dv), dim=1)
    assert torch.equal(torch.as_strided(dq, buffer.shape, buffer.stride()), buffer)  # (T, 3, heads, D)


def test_every_gradient_element_is_written(monkeypatch):
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    for causal in (False, True):  # _run asserts every gradient finite
        _run((3, 0, 21), (3, 0, 21), 32, torch.float32, causal)


def test_saved_log_sum_exp():
    lengths = (6, 0, 18)
    cu = _cu(lengths)
    q, k, v = (torch.randn(24, HEADS, 16, device=DEVICE) for _ in range(3))
    lse = torch.full((HEADS, 24), float("nan"), device=DEVICE)
    forward.attention_varlen(q, k, v, cu, cu, 18, 18, True, lse=lse)
    scale = 16 ** -0.5
    for b, (start, end) in enumerate(((0, 6), (6, 6), (6, 24))):
        if start == end:
            continue
        logits = torch.einsum("qhd,khd->hqk", q[start:end].double(), k[start:end].double()) * scale
        future = torch.ones(end - start, end - start, dtype=torch.bool).triu(1)
        logits = logits.masked_fill(future, -torch.inf)
        truth = torch.logsumexp(logits, dim=-1) / torch.log(torch.tensor(2.0, dtype=torch.float64))
        assert (lse[:, start:end].double() - truth).abs().max().item() <= 1e-5, b


def test_empty_batch():
    q = torch.randn(0, HEADS, 16, device=DEVICE)
    lse = torch.empty(HEADS, 0, device=DEVICE)
    cu = torch.zeros(3, dtype=torch.int32, device=DEVICE)
    dq, dk, dv = backward.attention_varlen_backward(q, q, q, q, q, lse, cu, cu, 0, 0)
    assert dq.shape == dk.shape == dv.shape == (0, HEADS, 16)
