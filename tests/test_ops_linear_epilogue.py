"""The GEMM + epilogue ops (`linear_bias_act`, `linear_residual_layer_norm`) on every backend.

Each is held to two references on fresh random inputs:
- the composition the model ran before these ops existed, bit for bit: on eager the bias inside the
  GEMM (`F.linear(x, W, b)`) then the eager epilogue; on triton `F.linear(x, W)` then the fused kernel
  with the bias (cast to the GEMM's output dtype under autocast);
- float64 truth: fp32 within 1e-5 relative to the largest output (1e-4 after a LayerNorm, whose
  outputs are O(1) while its inputs are sums of `in` products), fp16/bf16 within twice the eager error
  in the same dtype plus half an ulp of the largest output.
Triton runs under the interpreter on CPU, so shapes are tiny.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_within_twice_eager, needs_triton

from rembert_fast import ops

EPS = 1e-12
BACKENDS = ["eager"] + (["triton"] if ops.triton_status()[0] else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _linear_args(shape, width, dtype, bias=True):
    fan_in = shape[-1]
    return {
        "x": torch.randn(shape, device=DEVICE).to(dtype),
        "weight": (torch.randn(width, fan_in, device=DEVICE) / fan_in**0.5).to(dtype),
        "bias": torch.randn(width, device=DEVICE).to(dtype) if bias else None,
    }


def _ln_args(shape, width, dtype, bias=True, ln_bias=True, param_dtype=None):
    args = _linear_args(shape, width, dtype, bias)
    param_dtype = param_dtype or dtype
    args["residual"] = torch.randn(*shape[:-1], width, device=DEVICE).to(dtype)
    args["ln_weight"] = (1.0 + 0.5 * torch.randn(width, device=DEVICE)).to(param_dtype)
    args["ln_bias"] = torch.randn(width, device=DEVICE).to(param_dtype) if ln_bias else None
    return args


def _gemm(backend, x, weight, bias):
    """The old model path's GEMM: bias in the GEMM on eager; (x W^T, bias in y's dtype) on triton."""
    if backend == "eager":
        return F.linear(x, weight, bias), None
    y = F.linear(x, weight)
    return y, (bias.to(y.dtype) if bias is not None else None)


def _old_bias_act(backend, args, activation):
    with ops.use_backend(backend):
        return ops.bias_act(*_gemm(backend, args["x"], args["weight"], args["bias"]), activation)


def _old_residual_layer_norm(backend, args):
    with ops.use_backend(backend):
        y, x_bias = _gemm(backend, args["x"], args["weight"], args["bias"])
        return ops.layer_norm(y, args["ln_weight"], args["ln_bias"], EPS, residual=args["residual"],
                              x_bias=x_bias)


def _wide(args):
    return {k: (v.double() if v is not None else None) for k, v in args.items()}


def _bias_act_truth(args, activation):
    wide = _wide(args)
    return ops.bias_act_ref(F.linear(wide["x"], wide["weight"], wide["bias"]), None, activation)


def _layer_norm_truth(args):
    wide = _wide(args)
    y = F.linear(wide["x"], wide["weight"], wide["bias"])
    return ops.layer_norm_ref(y, wide["ln_weight"], wide["ln_bias"], EPS, residual=wide["residual"])


def _within_tolerance(out, truth, eager, fp32_rel):
    scale = truth.abs().max().item()
    err = (out.double() - truth).abs().max().item()
    if out.dtype == torch.float32:
        assert err <= fp32_rel * scale, f"fp32 relative error {err / scale:.3g} > {fp32_rel}"
    else:
        assert_within_twice_eager(out, truth, eager)


@pytest.mark.parametrize("has_bias", (True, False))
@pytest.mark.parametrize("activation", ("gelu", "gelu_new", "relu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_bias_act_matches_the_composition(backend, dtype, activation, has_bias):
    args = _linear_args((5, 24), 33, dtype, has_bias)
    with ops.use_backend(backend):
        out = ops.linear_bias_act(args["x"], args["weight"], args["bias"], activation)
    assert out.dtype == dtype and out.shape == (5, 33)
    assert torch.equal(out, _old_bias_act(backend, args, activation))
    eager = _old_bias_act("eager", args, activation)
    _within_tolerance(out, _bias_act_truth(args, activation), eager, 1e-5)


@pytest.mark.parametrize("has_bias,ln_bias", ((True, True), (False, True), (True, False)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_residual_layer_norm_matches_the_composition(backend, dtype, has_bias, ln_bias):
    args = _ln_args((2, 3, 40), 65, dtype, has_bias, ln_bias)
    with ops.use_backend(backend):
        out = ops.linear_residual_layer_norm(**args, eps=EPS)
    assert out.dtype == dtype and out.shape == (2, 3, 65)
    assert torch.equal(out, _old_residual_layer_norm(backend, args))
    eager = _old_residual_layer_norm("eager", args)
    _within_tolerance(out, _layer_norm_truth(args), eager, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_layer_norm_parameters_with_half_input(backend):
    args = _ln_args((4, 16), 33, torch.bfloat16, param_dtype=torch.float32)
    with ops.use_backend(backend):
        out = ops.linear_residual_layer_norm(**args, eps=EPS)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, _old_residual_layer_norm(backend, args))


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_weights_under_autocast(backend, dtype):
    """Autocast: the GEMM returns `dtype` while the fp32 bias is cast to it for the fused epilogue
    (the old path's rule); the LayerNorm's residual is already in the autocast dtype, as in a model."""
    if not torch.amp.is_autocast_available(DEVICE):
        pytest.skip(f"no autocast on {DEVICE}")
    lin = _linear_args((6, 24), 33, torch.float32)
    ln = _ln_args((6, 24), 33, torch.float32)
    ln["residual"] = ln["residual"].to(dtype)
    with torch.autocast(DEVICE, dtype=dtype):
        with ops.use_backend(backend):
            act_out = ops.linear_bias_act(lin["x"], lin["weight"], lin["bias"], "gelu")
            ln_out = ops.linear_residual_layer_norm(**ln, eps=EPS)
        assert act_out.dtype == dtype and ln_out.dtype == dtype
        assert torch.equal(act_out, _old_bias_act(backend, lin, "gelu"))
        assert torch.equal(ln_out, _old_residual_layer_norm(backend, ln))
        act_eager = _old_bias_act("eager", lin, "gelu")
        ln_eager = _old_residual_layer_norm("eager", ln)
    _within_tolerance(act_out, _bias_act_truth(lin, "gelu"), act_eager, 1e-5)
    _within_tolerance(ln_out, _layer_norm_truth(ln), ln_eager, 1e-4)


@needs_triton
def test_gradients_on_triton_match_float64_autograd():
    args = _ln_args((3, 16), 9, torch.float32)
    leaves = {k: v.clone().requires_grad_() for k, v in args.items()}
    with ops.use_backend("triton"):
        ops.linear_residual_layer_norm(**leaves, eps=EPS).square().sum().backward()
    wide = {k: v.double().requires_grad_() for k, v in args.items()}
    y = F.linear(wide["x"], wide["weight"], wide["bias"])
    ops.layer_norm_ref(y, wide["ln_weight"], wide["ln_bias"], EPS, residual=wide["residual"]).square().sum(
    ).backward()
    for name in args:
        torch.testing.assert_close(leaves[name].grad, wide[name].grad.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_name_the_value(backend):
    args = _ln_args((3, 8), 5, torch.float32)
    x, w, b = args["x"], args["weight"], args["bias"]
    with ops.use_backend(backend):
        with pytest.raises(ValueError, match=r"weight has shape \(5, 7\); expected \(out, 8\)"):
            ops.linear_bias_act(x, w[:, :7], b, "gelu")
        with pytest.raises(ValueError, match=r"bias has shape \(4,\); expected \(5,\)"):
            ops.linear_bias_act(x, w, b[:4], "gelu")
        with pytest.raises(ValueError, match="bias has dtype torch.float16; expected torch.float32"):
            ops.linear_bias_act(x, w, b.half(), "gelu")
        with pytest.raises(ValueError, match="weight has dtype torch.bfloat16"):
            ops.linear_residual_layer_norm(**{**args, "weight": w.bfloat16()}, eps=EPS)
        with pytest.raises(ValueError, match="activation 'swish' is not supported"):
            ops.linear_bias_act(x, w, b, "swish")
        with pytest.raises(ValueError, match=r"residual has shape \(3, 4\); expected \(3, 5\)"):
            ops.linear_residual_layer_norm(**{**args, "residual": args["residual"][:, :4]}, eps=EPS)
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            ops.linear_residual_layer_norm(**args, eps=-1.0)
