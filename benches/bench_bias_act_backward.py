"""Benchmark: the bias + GELU backward (dx = dy * gelu'(x + bias), d bias), in GB/s.

Implementations measured in the same run, on the same tensors and output gradient:
- ``triton``: ``kernels.activation.bias_act_backward`` (GPU only);
- ``eager``: ``torch.autograd.grad`` through ``ops.bias_act_ref`` (graph built once, outside the timing);
- ``copy``: a device-to-device copy of the same number of bytes, the bandwidth yardstick (GPU only).

Bytes per call = 3 x T x N x dtype size (dy and x read, dx written) + 2 x N (bias, its gradient).
Shapes on a GPU: T in {4096, 32768} x N in {1664, 4608} (RemBERT's MLM-head and FFN widths), bf16.
Without a GPU only the eager row runs, at T=256, N=1152, fp32, so CI runs the file in seconds.

    python -m pytest benches/bench_bias_act_backward.py --benchmark-columns=median,min,max,rounds
    python benches/bench_bias_act_backward.py [--json benches/results/bias_act_backward.json]
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch

from rembert_fast import ops
from rembert_fast.bench.harness import CUDA, DEVICE, OpBench, copy_of

DTYPE = torch.bfloat16 if CUDA else torch.float32
SHAPES = [(t, n) for t in (4096, 32768) for n in (1664, 4608)] if CUDA else [(256, 1152)]
IMPLS = ("triton", "eager", "copy") if CUDA else ("eager",)
ACTIVATION = "gelu"


def make_inputs(tokens: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(tokens * n + 2)
    return {
        "x": torch.randn(tokens, n, generator=g, device=DEVICE).to(DTYPE),
        "dy": torch.randn(tokens, n, generator=g, device=DEVICE).to(DTYPE),
        "bias": torch.randn(n, generator=g, device=DEVICE).to(DTYPE),
    }


def bytes_moved(tokens: int, n: int) -> int:
    return (3 * tokens * n + 2 * n) * DTYPE.itemsize


def build(impl: str, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
    x, dy, b = inputs["x"], inputs["dy"], inputs["bias"]
    if impl == "triton":
        from rembert_fast.kernels import activation as kernel

        return lambda: kernel.bias_act_backward(dy, x, b, ACTIVATION)[0]
    if impl == "eager":
        leaves = [x.detach().requires_grad_(), b.detach().requires_grad_()]
        out = ops.bias_act_ref(leaves[0], leaves[1], ACTIVATION)
        return lambda: torch.autograd.grad(out, leaves, dy, retain_graph=True)[0]
    if impl == "copy":
        return copy_of(bytes_moved(*x.shape))
    raise ValueError(f"unknown implementation {impl!r}")


BENCH = OpBench(name="bias_act_backward gelu", title="bias_act(x, bias, 'gelu') backward",
                dtype=DTYPE, make_inputs=make_inputs, build=build, bytes_moved=bytes_moved)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[0]}xN{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_bias_act_backward_bandwidth(benchmark, impl: str, shape: tuple[int, int]) -> None:
    BENCH.run_pytest(benchmark, impl, shape)


if __name__ == "__main__":
    sys.exit(BENCH.main(SHAPES, IMPLS, __doc__.splitlines()[0]))
