"""The bias + activation kernel under the Triton interpreter (CPU, tiny shapes) against the eager reference.

Truth is `ops.bias_act_ref` (transformers' definitions) in float64 on the same inputs. fp32 must match
to 1e-5 relative to the largest output; fp16/bf16 may be off by at most twice what eager PyTorch in
the same dtype is off, plus half an ulp of the largest output: rounding the fp32 result to the output
dtype is the kernel's one unavoidable error, and eager can be exact where the function is (relu), so
twice zero would demand more than correct rounding.
"""

import pytest
import torch
from conftest import DEVICE, assert_within_twice_eager, needs_triton

from rembert_fast import ops
from rembert_fast.kernels import activation as act_kernels

pytestmark = [
    needs_triton,
    # exp(-t) overflows to inf for large |t| by design (sigmoid's limit is then exact); numpy, which
    # runs the interpreter, warns about it
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]

ACTIVATIONS = ops.ACTIVATIONS


def _inputs(shape, dtype, bias=True, scale=4.0):
    # scale 4 reaches both tails of every activation (sigmoid saturation, selu's exp branch)
    n = shape[-1]
    x = (scale * torch.randn(shape, device=DEVICE)).to(dtype)
    return x, (torch.randn(n, device=DEVICE).to(dtype) if bias else None)


def _call(backend, x, bias, activation):
    with ops.use_backend(backend):
        return ops.bias_act(x, bias, activation)


def _check(x, bias, activation):
    out = _call("triton", x, bias, activation)
    assert out.dtype == x.dtype and out.shape == x.shape
    truth = ops.bias_act_ref(x.double(), bias.double() if bias is not None else None, activation)
    scale = truth.abs().max().item()
    err = (out.double() - truth).abs().max().item()
    if x.dtype == torch.float32:
        assert err <= 1e-5 * scale, f"{activation}: fp32 relative error {err / scale:.3g} > 1e-5"
    else:
        assert_within_twice_eager(out, truth, _call("eager", x, bias, activation), what=activation)
    return out


@pytest.mark.parametrize("has_bias", (True, False))
@pytest.mark.parametrize("n", (1, 7, 33, 257, 1153))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fp32_every_activation(activation, n, has_bias):
    _check(*_inputs((5, n), torch.float32, has_bias), activation)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_half_precision_every_activation(activation, dtype):
    _check(*_inputs((6, 300), dtype), activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_elementwise_relative_accuracy(activation):
    # Near zero every activation is ~linear in z, and in the negative tail the sigmoid forms are tiny:
    # a naive exp(z) - 1 (selu) or 1 + tanh(u) (the tanh GELUs) loses the digits carrying those
    # results, which a check relative to the largest output would not see. Exact "gelu" keeps eager's
    # 1 + erf form (as torch does), accurate near zero but not in the far tail, so its tail is not held.
    small = torch.logspace(-7, -1, 32, dtype=torch.float64)
    z = torch.cat([small, -small] + ([] if activation == "gelu" else [torch.linspace(-6.0, -1.0, 32)]))
    x = z.float().reshape(2, -1).to(DEVICE)
    truth = ops.bias_act_ref(x.double(), None, activation)
    out = _call("triton", x, None, activation).double()
    keep = truth != 0  # relu's zeros are exact on both sides
    rel = ((out - truth).abs()[keep] / truth.abs()[keep]).max().item()
    assert rel <= 1e-5, f"{activation}: elementwise relative error {rel:.3g}"
    assert torch.equal(out[~keep], truth[~keep])


def test_rembert_ffn_width_3d_input():
    _check(*_inputs((2, 3, 4608), torch.float32), "gelu")


@pytest.mark.parametrize("n", (1152, 1664, 4608, 1153))
def test_column_tiles_at_rembert_widths(n):
    _check(*_inputs((3, n), torch.bfloat16), "gelu")


def test_non_contiguous_input():
    x = (4 * torch.randn(40, 3, device=DEVICE)).t()  # stride(-1) != 1: copied once
    _check(x, torch.randn(40, device=DEVICE), "gelu")


def test_strided_rows_never_read_the_gaps():
    # rows of a wider NaN-filled buffer (a slice of a fused projection): the gaps must stay unread
    n = 33
    buffer = torch.full((7, n + 6), float("nan"), device=DEVICE)
    buffer[:, :n] = 4 * torch.randn(7, n, device=DEVICE)
    out = _check(buffer[:, :n], torch.randn(n, device=DEVICE), "gelu")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("n", (5, 1030))  # 512x8 and 32x128 tiles: both end in masked rows and columns
def test_writes_exactly_its_elements(n):
    rows = 5
    x, bias = _inputs((rows, n), torch.float32)
    buffer = torch.full((rows + 3, n), float("nan"), device=DEVICE)
    out = act_kernels.bias_act(x, bias, "gelu", out=buffer[:rows])
    truth = ops.bias_act_ref(x.double(), bias.double(), "gelu")
    assert torch.isfinite(out).all(), "an element was left unwritten"
    assert (out.double() - truth).abs().max().item() <= 1e-5 * truth.abs().max().item()
    assert torch.isnan(buffer[rows:]).all(), "the kernel wrote past its last row"


def test_nan_propagates_like_torch():
    x = torch.tensor([[float("nan"), -1.0, 2.0]], device=DEVICE)
    for activation in ACTIVATIONS:
        out = _call("triton", x, None, activation)
        assert torch.isnan(out[0, 0]), f"{activation} turned NaN into {out[0, 0].item()}"


def test_empty_input():
    with ops.use_backend("triton"):
        assert ops.bias_act(torch.randn(0, 8, device=DEVICE), None, "gelu").shape == (0, 8)


def test_dispatch_reaches_the_kernel(monkeypatch):
    calls = []
    launcher = act_kernels.bias_act
    monkeypatch.setattr(act_kernels, "bias_act", lambda *a, **k: calls.append(1) or launcher(*a, **k))
    _check(*_inputs((2, 8), torch.float32), "gelu")
    assert calls, "ops.bias_act did not call the Triton launcher under use_backend('triton')"


def test_rejects_what_the_kernel_cannot_take():
    x = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="out"):
        act_kernels.bias_act(x, None, "gelu", out=torch.empty(2, 8, dtype=torch.float16, device=DEVICE))


def test_op_rejects_what_the_kernel_cannot_take():
    """Validated once, by the op (the launcher trusts its caller)."""
    x = torch.randn(2, 8, device=DEVICE)
    with ops.use_backend("triton"):
        with pytest.raises(ValueError, match="'swish'"):
            ops.bias_act(x, None, "swish")
        with pytest.raises(ValueError, match="bias"):
            ops.bias_act(x.half(), torch.randn(8, device=DEVICE), "gelu")


def test_kernel_names_match_the_op_api():
    assert act_kernels.ACTIVATIONS == ops.ACTIVATIONS


@pytest.mark.gpu
def test_offsets_beyond_int32_on_gpu():
    # M * N > 2**31 elements at RemBERT's FFN width: row offsets must be int64 on the compiled kernel (the
    # interpreter computes in numpy int64 and cannot show an int32 overflow); check the first and last rows.
    n = 4608
    m = 2**31 // n + 8
    x = torch.empty(m, n, dtype=torch.bfloat16, device="cuda").normal_()
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    out = act_kernels.bias_act(x, bias, "gelu")
    for rows in (slice(0, 4), slice(m - 12, m)):
        truth = ops.bias_act_ref(x[rows].double(), bias.double(), "gelu")
        assert_within_twice_eager(out[rows], truth, ops.bias_act_ref(x[rows], bias, "gelu"), what=str(rows))


# ----------------------------------------------------------------------------------------- backward
def _backward_check(x, bias, activation, dy=None):
    """The backward kernel against float64 eager autograd: fp32 to 1e-5 of each gradient's largest value,
    half precision by the twice-eager rule. Returns (dx, dbias)."""
    dy = torch.randn(x.shape, device=DEVICE).to(x.dtype) if dy is None else dy
    got = act_kernels.bias_act_backward(dy, x, bias, activation)
    truth = ops.reference.bias_act_backward_ref(dy.double(), x.double(),
                                                bias.double() if bias is not None else None, activation)
    eager = ops.reference.bias_act_backward_ref(dy, x, bias, activation)
    for name, g, t, e, like in zip(("dx", "dbias"), got, truth, eager, (x, bias), strict=True):
        if like is None:
            assert g is None
            continue
        assert g.dtype == like.dtype and g.shape == like.shape, name
        scale = t.abs().max().item()
        if x.dtype == torch.float32:
            err = (g.double() - t).abs().max().item()
            assert err <= 1e-5 * max(scale, 1.0), f"{activation} {name}: fp32 error {err:.3g}"
        else:
            assert_within_twice_eager(g, t, e, what=f"{activation} {name}")
    return got


@pytest.mark.parametrize("has_bias", (True, False))
@pytest.mark.parametrize("n", (1, 33, 257))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_fp32_every_activation(activation, n, has_bias):
    _backward_check(*_inputs((11, n), torch.float32, has_bias), activation)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_half_precision(activation, dtype):
    _backward_check(*_inputs((9, 131), dtype), activation)


@pytest.mark.parametrize("m", (1, 37, 300))  # one tile; uneven runs of row tiles over the programs
def test_backward_row_counts(m):
    _backward_check(*_inputs((m, 1152), torch.float32), "gelu")


def test_backward_strided_rows_and_poisoned_buffers(monkeypatch):
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    x = (4.0 * torch.randn(2, 7, 45, device=DEVICE))[..., :40]  # rows of a wider buffer
    dy = torch.randn(2, 7, 43, device=DEVICE)[..., :40]
    dx, dbias = _backward_check(x, torch.randn(40, device=DEVICE), "gelu", dy=dy)
    assert torch.isfinite(dx).all() and torch.isfinite(dbias).all()


def test_backward_empty_input():
    empty = torch.empty(0, 8, device=DEVICE)
    dx, dbias = act_kernels.bias_act_backward(empty, empty, torch.randn(8, device=DEVICE), "gelu")
    assert dx.shape == (0, 8) and torch.equal(dbias, torch.zeros(8, device=DEVICE))
