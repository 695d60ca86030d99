"""Benchmark: fused LayerNorm(x + x_bias + residual), ``ops.layer_norm``, in GB/s.

Implementations measured in the same run, on the same tensors:
- ``triton``: ``ops.layer_norm`` on the triton backend (GPU only);
- ``eager``: ``ops.layer_norm_ref``: two adds and ``F.layer_norm``;
- ``compiled``: ``torch.compile`` of that eager reference (GPU only);
- ``copy``: a device-to-device copy of the same number of bytes, the bandwidth yardstick (GPU only).

Bytes per call = 3 x T x N x dtype size (x and residual read, y written) + 3 x N (x_bias, weight,
bias). Shapes on a GPU: T in {4096, 32768} tokens x N in {1152, 1664, 4608}, bf16 (RemBERT's hidden,
MLM-head and FFN widths). Without a GPU only the eager path runs, at T=256, N=1152, fp32, so CI
exercises the file in a few seconds.

    python -m pytest benches/bench_layer_norm.py --benchmark-columns=median,min,max,rounds
    python benches/bench_layer_norm.py [--json benches/results/layer_norm.json]   # table with ratios
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch

from rembert_fast import ops
from rembert_fast.bench.harness import CUDA, DEVICE, OpBench, copy_of

DTYPE = torch.bfloat16 if CUDA else torch.float32
SHAPES = [(t, n) for t in (4096, 32768) for n in (1152, 1664, 4608)] if CUDA else [(256, 1152)]
IMPLS = ("triton", "eager", "compiled", "copy") if CUDA else ("eager",)
EPS = 1e-12
_compiled_ref = torch.compile(ops.layer_norm_ref, dynamic=False) if CUDA else None


def make_inputs(tokens: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(tokens * n)
    return {
        "x": torch.randn(tokens, n, generator=g, device=DEVICE).to(DTYPE),
        "weight": (1 + 0.1 * torch.randn(n, generator=g, device=DEVICE)).to(DTYPE),
        "bias": torch.randn(n, generator=g, device=DEVICE).to(DTYPE),
        "residual": torch.randn(tokens, n, generator=g, device=DEVICE).to(DTYPE),
        "x_bias": torch.randn(n, generator=g, device=DEVICE).to(DTYPE),
    }


def bytes_moved(tokens: int, n: int) -> int:
    return (3 * tokens * n + 3 * n) * DTYPE.itemsize


def build(impl: str, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
    x, w, b, res, xb = (inputs[k] for k in ("x", "weight", "bias", "residual", "x_bias"))
    if impl == "triton":
        def triton_ln() -> torch.Tensor:
            with ops.use_backend("triton"):
                return ops.layer_norm(x, w, b, EPS, residual=res, x_bias=xb)

        return triton_ln
    if impl == "eager":
        return lambda: ops.layer_norm_ref(x, w, b, EPS, residual=res, x_bias=xb)
    if impl == "compiled":
        return lambda: _compiled_ref(x, w, b, EPS, residual=res, x_bias=xb)
    if impl == "copy":
        return copy_of(bytes_moved(*x.shape))
    raise ValueError(f"unknown implementation {impl!r}")


BENCH = OpBench(name="layer_norm", title="layer_norm(x + x_bias + residual)",
                dtype=DTYPE, make_inputs=make_inputs, build=build, bytes_moved=bytes_moved)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[0]}xN{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_layer_norm_bandwidth(benchmark, impl: str, shape: tuple[int, int]) -> None:
    BENCH.run_pytest(benchmark, impl, shape)


if __name__ == "__main__":
    sys.exit(BENCH.main(SHAPES, IMPLS, __doc__.splitlines()[0]))
