"""Benchmark: the LayerNorm(x + x_bias + residual) backward, in GB/s.

Implementations measured in the same run, on the same tensors and output gradient:
- ``triton``: ``kernels.layer_norm.layer_norm_backward`` (dx, d weight, d bias, d x_bias; GPU only);
- ``eager``: ``torch.autograd.grad`` through ``ops.layer_norm_ref`` (its graph built once, outside the
  timing: the backward alone);
- ``copy``: a device-to-device copy of the same number of bytes, the bandwidth yardstick (GPU only).

Bytes per call = 4 x T x N x dtype size (dy, x and residual read, dx written; dx is also d residual)
+ the (N,) parameters and gradients. Shapes on a GPU: T in {4096, 32768} x N in {256, 1152} (RemBERT's
embedding and hidden widths, where Liger-Kernel's LayerNorm backward loses to PyTorch's near 1024),
bf16. Without a GPU only the eager row runs, at T=256, N=1152, fp32, so CI runs the file in seconds.

    python -m pytest benches/bench_layer_norm_backward.py --benchmark-columns=median,min,max,rounds
    python benches/bench_layer_norm_backward.py [--json benches/results/layer_norm_backward.json]
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch

from rembert_fast import ops
from rembert_fast.bench.harness import CUDA, DEVICE, OpBench, copy_of

DTYPE = torch.bfloat16 if CUDA else torch.float32
SHAPES = [(t, n) for t in (4096, 32768) for n in (256, 1152)] if CUDA else [(256, 1152)]
IMPLS = ("triton", "eager", "copy") if CUDA else ("eager",)
EPS = 1e-12
_PARAMS = ("weight", "bias", "x_bias")


def make_inputs(tokens: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(tokens * n + 1)
    rows = {name: torch.randn(tokens, n, generator=g, device=DEVICE).to(DTYPE)
            for name in ("x", "residual", "dy")}
    params = {name: torch.randn(n, generator=g, device=DEVICE).to(DTYPE) for name in _PARAMS}
    params["weight"] += 1.0
    return {**rows, **params}


def bytes_moved(tokens: int, n: int) -> int:
    return (4 * tokens * n + 6 * n) * DTYPE.itemsize


def build(impl: str, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
    x, res, dy = inputs["x"], inputs["residual"], inputs["dy"]
    w, b, xb = (inputs[name] for name in _PARAMS)
    if impl == "triton":
        from rembert_fast.kernels import layer_norm as kernel

        return lambda: kernel.layer_norm_backward(dy, x, w, b, EPS, res, xb)[0]
    if impl == "eager":
        leaves = [t.detach().requires_grad_() for t in (x, w, b, res, xb)]
        out = ops.layer_norm_ref(leaves[0], leaves[1], leaves[2], EPS, residual=leaves[3], x_bias=leaves[4])
        return lambda: torch.autograd.grad(out, leaves, dy, retain_graph=True)[0]
    if impl == "copy":
        return copy_of(bytes_moved(*x.shape))
    raise ValueError(f"unknown implementation {impl!r}")


BENCH = OpBench(name="layer_norm_backward", title="layer_norm(x + x_bias + residual) backward",
                dtype=DTYPE, make_inputs=make_inputs, build=build, bytes_moved=bytes_moved)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[0]}xN{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_layer_norm_backward_bandwidth(benchmark, impl: str, shape: tuple[int, int]) -> None:
    BENCH.run_pytest(benchmark, impl, shape)


if __name__ == "__main__":
    sys.exit(BENCH.main(SHAPES, IMPLS, __doc__.splitlines()[0]))
