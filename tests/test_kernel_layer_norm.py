"""The fused LayerNorm kernel under the Triton interpreter (CPU, tiny shapes) against the eager reference.

Truth is `ops.layer_norm_ref` in float64 on the same inputs. fp32 must match to 1e-5 relative to the
largest output; fp16/bf16 may be off by at most twice what eager PyTorch in the same dtype is off
(`conftest.assert_within_twice_eager`), plus half an ulp of the largest output: the kernel's
only unavoidable error is rounding its fp32 result to the output dtype, and where eager happens to be
exact (N=1, where every output is the bias) twice zero would demand more than correct rounding.
"""

import itertools

import pytest
import torch
from conftest import DEVICE, assert_within_twice_eager, needs_triton

from rembert_fast import ops
from rembert_fast.kernels import layer_norm as ln_kernels

pytestmark = needs_triton

EPS = 1e-12
ODD_WIDTHS = (1, 7, 33, 257, 1153)
FLAGS = list(itertools.product((False, True), repeat=3))  # residual, x_bias, bias


def _inputs(shape, dtype, residual, x_bias, bias, param_dtype=None):
    n = shape[-1]
    param_dtype = param_dtype or dtype
    return {
        "x": torch.randn(shape, device=DEVICE).to(dtype),
        "weight": (1.0 + 0.5 * torch.randn(n, device=DEVICE)).to(param_dtype),
        "bias": torch.randn(n, device=DEVICE).to(param_dtype) if bias else None,
        "residual": torch.randn(shape, device=DEVICE).to(dtype) if residual else None,
        "x_bias": torch.randn(n, device=DEVICE).to(dtype) if x_bias else None,
    }


def _call(backend, args):
    with ops.use_backend(backend):
        return ops.layer_norm(args["x"], args["weight"], args["bias"], EPS, residual=args["residual"],
                              x_bias=args["x_bias"])


def _truth(args):
    wide = {k: (v.double() if v is not None else None) for k, v in args.items()}
    return ops.layer_norm_ref(wide["x"], wide["weight"], wide["bias"], EPS, residual=wide["residual"],
                              x_bias=wide["x_bias"])


def _check(args):
    """Run the kernel through ops and hold it to the tolerance of its dtype; returns the output."""
    out = _call("triton", args)
    x = args["x"]
    assert out.dtype == x.dtype and out.shape == x.shape
    truth = _truth(args)
    scale = truth.abs().max().item()
    err = (out.double() - truth).abs().max().item()
    if x.dtype == torch.float32:
        assert err <= 1e-5 * scale, f"fp32 relative error {err / scale:.3g} > 1e-5"
    else:
        assert_within_twice_eager(out, truth, _call("eager", args))
    return out


@pytest.mark.parametrize("residual,x_bias,bias", FLAGS)
@pytest.mark.parametrize("n", ODD_WIDTHS)
def test_fp32_every_feature_combination(n, residual, x_bias, bias):
    _check(_inputs((5, n), torch.float32, residual, x_bias, bias))


@pytest.mark.parametrize("residual,x_bias,bias", FLAGS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_every_feature_combination(dtype, residual, x_bias, bias):
    _check(_inputs((6, 257), dtype, residual, x_bias, bias))


@pytest.mark.parametrize("n", (1, 33, 1153))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_odd_widths(dtype, n):
    _check(_inputs((4, n), dtype, True, True, True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fp32_weights_with_half_input(dtype):
    # F.layer_norm's mixed-type rule (what autocast produces): output stays in x's dtype
    _check(_inputs((4, 129), dtype, True, True, True, param_dtype=torch.float32))


@pytest.mark.parametrize("n", (256, 1152, 1664))
def test_rembert_widths(n):
    _check(_inputs((3, n), torch.float32, True, True, True))


def test_widest_row():
    _check(_inputs((2, ln_kernels.MAX_N), torch.float32, True, False, True))


def test_single_row_and_3d_input():
    _check(_inputs((1, 65), torch.float32, True, True, True))
    _check(_inputs((2, 3, 65), torch.float32, True, True, True))


def test_large_mean_keeps_fp32_accuracy():
    # mean/std = 100: a one-pass E[x^2] - E[x]^2 variance in fp32 is off by ~1e-3 here, the centred
    # second pass by ~1e-7 (rounding the mean itself costs 100 * 2**-24 of a standard deviation)
    args = _inputs((4, 300), torch.float32, False, False, True)
    args["x"] += 100.0
    _check(args)


def test_non_contiguous_input():
    args = _inputs((3, 40), torch.float32, True, True, True)
    args["x"] = torch.randn(40, 3, device=DEVICE).t()  # stride(-1) != 1: copied once
    args["residual"] = torch.randn(40, 3, device=DEVICE).t()
    _check(args)
    args = _inputs((2, 3, 40), torch.float32, True, True, True)
    args["x"] = torch.randn(2, 6, 40, device=DEVICE)[:, ::2]  # unit column stride, rows not one index
    _check(args)


def test_strided_rows_never_read_the_gaps():
    # rows of a wider NaN-filled buffer (a slice of a fused projection): the gaps must stay unread
    n = 33
    args = _inputs((7, n), torch.float32, True, True, True)
    for name, width in (("x", n + 5), ("residual", n + 11)):
        buffer = torch.full((7, width), float("nan"), device=DEVICE)
        buffer[:, :n] = args[name]
        args[name] = buffer[:, :n]
    out = _check(args)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("n", (5, 256))  # 256 packs 8 rows per program: rows 5..7 of it are masked
def test_writes_exactly_its_rows(n):
    rows = 5
    args = _inputs((rows, n), torch.float32, True, True, True)
    buffer = torch.full((rows + 3, n), float("nan"), device=DEVICE)
    out = ln_kernels.layer_norm(args["x"], args["weight"], args["bias"], EPS, residual=args["residual"],
                                x_bias=args["x_bias"], out=buffer[:rows])
    truth = _truth(args)
    assert torch.isfinite(out).all(), "a row was left unwritten"
    assert (out.double() - truth).abs().max().item() <= 1e-5 * truth.abs().max().item()
    assert torch.isnan(buffer[rows:]).all(), "the kernel wrote past its last row"


def test_empty_input():
    x = torch.randn(0, 16, device=DEVICE)
    with ops.use_backend("triton"):
        assert ops.layer_norm(x, torch.ones(16, device=DEVICE), None, EPS).shape == (0, 16)


def test_dispatch_reaches_the_kernel(monkeypatch):
    calls = []
    launcher = ln_kernels.layer_norm
    monkeypatch.setattr(ln_kernels, "layer_norm", lambda *a, **k: calls.append(1) or launcher(*a, **k))
    _check(_inputs((2, 8), torch.float32, True, True, True))
    assert calls, "ops.layer_norm did not call the Triton launcher under use_backend('triton')"


def test_rows_wider_than_the_kernel_run_eagerly_on_auto(monkeypatch):
    """N > MAX_N: `auto` takes the eager op (same answer as the reference), `triton` names the width."""
    wide = ln_kernels.MAX_N + 1
    x, w = torch.randn(2, wide, device=DEVICE), torch.randn(wide, device=DEVICE)
    calls = []
    launcher = ln_kernels.layer_norm
    monkeypatch.setattr(ln_kernels, "layer_norm", lambda *a, **k: calls.append(1) or launcher(*a, **k))
    with ops.use_backend("auto"):
        got = ops.layer_norm(x, w, None, EPS, residual=x.flip(0))
    assert not calls and torch.equal(got, ops.layer_norm_ref(x, w, None, EPS, residual=x.flip(0)))
    with ops.use_backend("triton"), pytest.raises(ValueError, match=str(wide)):
        ops.layer_norm(x, w, None, EPS)


def test_rejects_what_the_kernel_cannot_take():
    n = 16
    x = torch.randn(2, n, device=DEVICE)
    w = torch.ones(n, device=DEVICE)
    with pytest.raises(ValueError, match="16385"):
        wide = ln_kernels.MAX_N + 1
        ln_kernels.layer_norm(torch.randn(1, wide, device=DEVICE), torch.ones(wide, device=DEVICE), None, EPS)
    with pytest.raises(ValueError, match="out"):
        ln_kernels.layer_norm(x, w, None, EPS, out=torch.empty(2, n + 1, device=DEVICE))


def test_op_rejects_dtypes_the_kernel_cannot_take():
    """Validated once, by the op (the launcher trusts its caller)."""
    n = 16
    x = torch.randn(2, n, device=DEVICE)
    w = torch.ones(n, device=DEVICE)
    with ops.use_backend("triton"):
        with pytest.raises(ValueError, match="residual"):
            ops.layer_norm(x, w, None, EPS, residual=x.half())
        with pytest.raises(ValueError, match="x_bias"):
            ops.layer_norm(x, w, None, EPS, x_bias=w.double())
        with pytest.raises(ValueError, match="weight"):
            ops.layer_norm(x.half(), w.bfloat16(), None, EPS)
        with pytest.raises(ValueError, match="bias"):
            ops.layer_norm(x, w, w.half(), EPS)


@pytest.mark.gpu
def test_offsets_beyond_int32_on_gpu():
    # M * N > 2**31 elements: row offsets must be int64 on the compiled kernel (the interpreter computes
    # in numpy int64 and cannot show an int32 overflow). The last rows are the ones an overflow corrupts.
    n = ln_kernels.MAX_N
    m = 2**31 // n + 8
    x = torch.empty(m, n, dtype=torch.bfloat16, device="cuda").normal_()
    w = (1.0 + 0.5 * torch.randn(n, device="cuda")).to(torch.bfloat16)
    b = torch.randn(n, device="cuda").to(torch.bfloat16)
    out = ln_kernels.layer_norm(x, w, b, EPS)
    for rows in (slice(0, 4), slice(m - 12, m)):
        truth = ops.layer_norm_ref(x[rows].double(), w.double(), b.double(), EPS)
        assert_within_twice_eager(out[rows], truth, ops.layer_norm_ref(x[rows], w, b, EPS), what=str(rows))


# ----------------------------------------------------------------------------------------- backward
def _backward_check(args, dy=None):
    """The backward kernel against float64 eager autograd: fp32 to 1e-5 of each gradient's largest
    value, half precision by the twice-eager rule per gradient. Returns the kernel's gradients."""
    x = args["x"]
    dy = torch.randn(x.shape, device=DEVICE).to(x.dtype) if dy is None else dy
    call = (x, args["weight"], args["bias"], EPS, args["residual"], args["x_bias"])
    got = ln_kernels.layer_norm_backward(dy, *call)
    wide = [t.double() if isinstance(t, torch.Tensor) else t for t in (dy, *call)]
    truth = ops.reference.layer_norm_backward_ref(*wide)
    eager = ops.reference.layer_norm_backward_ref(dy, *call)
    for name, g, t, e, like in zip(("dx", "dweight", "dbias", "dx_bias"), got, truth, eager,
                                   (x, args["weight"], args["bias"], args["x_bias"]), strict=True):
        if like is None:
            assert g is None, name
            continue
        assert g.dtype == like.dtype and g.shape == like.shape, name
        scale = t.abs().max().item()
        if x.dtype == torch.float32:
            err = (g.double() - t).abs().max().item()
            assert err <= 1e-5 * max(scale, 1.0), f"{name}: fp32 error {err:.3g} (scale {scale:.3g})"
        else:
            assert_within_twice_eager(g, t, e, what=name)
    return got


@pytest.mark.parametrize("residual,x_bias,bias", FLAGS)
@pytest.mark.parametrize("n", (1, 7, 33, 257))
def test_backward_fp32_every_feature_combination(n, residual, x_bias, bias):
    _backward_check(_inputs((13, n), torch.float32, residual, x_bias, bias))


@pytest.mark.parametrize("n", (31, 1153))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_backward_half_precision(dtype, n):
    _backward_check(_inputs((9, n), dtype, True, True, True))
    _backward_check(_inputs((9, n), dtype, True, True, True, param_dtype=torch.float32))  # autocast's mix


@pytest.mark.parametrize("m", (1, 2, 5, 37))  # one program, two, uneven runs of rows per program
def test_backward_row_counts_and_rembert_widths(m):
    for n in (256, 1152):
        _backward_check(_inputs((m, n), torch.float32, True, True, True))


def test_backward_strided_rows_and_3d():
    args = _inputs((2, 3, 40), torch.float32, True, True, True)
    args["x"] = torch.randn(2, 6, 40, device=DEVICE)[:, ::2]
    dy = torch.randn(2, 3, 47, device=DEVICE)[..., :40]  # rows of a wider gradient buffer
    _backward_check(args, dy=dy)


def test_backward_writes_every_gradient_element(monkeypatch):
    # every output buffer the launcher allocates is poisoned: a lane the kernel skips stays NaN
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    got = _backward_check(_inputs((7, 33), torch.float32, True, True, True))
    assert all(torch.isfinite(g).all() for g in got)


def test_backward_empty_input():
    args = _inputs((0, 16), torch.float32, True, True, True)
    dy = torch.empty(0, 16, device=DEVICE)
    dx, dw, db, dxb = ln_kernels.layer_norm_backward(dy, args["x"], args["weight"], args["bias"], EPS,
                                                     args["residual"], args["x_bias"])
    zeros = torch.zeros(16, device=DEVICE)
    assert dx.shape == (0, 16) and all(torch.equal(g, zeros) for g in (dw, db, dxb))


def test_training_rows_wider_than_the_backward_run_eagerly(monkeypatch):
    """N > BACKWARD_MAX_N under autograd: eager even on `triton` (right gradients, no kernel); the
    launcher itself names the width."""
    wide = ln_kernels.BACKWARD_MAX_N + 1
    x = torch.randn(2, wide, device=DEVICE, requires_grad=True)
    w = torch.randn(wide, device=DEVICE, requires_grad=True)
    calls = []
    launcher = ln_kernels.layer_norm
    monkeypatch.setattr(ln_kernels, "layer_norm", lambda *a, **k: calls.append(1) or launcher(*a, **k))
    with ops.use_backend("triton"):
        ops.layer_norm(x, w, None, EPS).square().sum().backward()
    assert not calls
    wide_x, wide_w = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ops.layer_norm_ref(wide_x, wide_w, None, EPS).square().sum().backward()
    torch.testing.assert_close(x.grad, wide_x.grad.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.grad, wide_w.grad.float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=str(wide)):
        ln_kernels.layer_norm_backward(x.detach(), x.detach(), w.detach(), None, EPS)
