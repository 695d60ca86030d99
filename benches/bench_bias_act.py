"""Benchmark: fused bias + GELU, ``ops.bias_act(x, bias, "gelu")`` (exact erf), in GB/s.

Implementations measured in the same run, on the same tensors:
- ``triton``: ``ops.bias_act`` on the triton backend (GPU only);
- ``eager``: ``ops.bias_act_ref``: an add and ``F.gelu``;
- ``compiled``: ``torch.compile`` of that eager reference (GPU only);
- ``copy``: a device-to-device copy of the same number of bytes, the bandwidth yardstick (GPU only).

Bytes per call = 2 x T x N x dtype size (x read, y written) + N (bias). Shapes on a GPU: T in
{4096, 32768} tokens x N in {1152, 1664, 4608}, bf16 (4608 is RemBERT's FFN, where the model calls
it; 1664 its MLM head). Without a GPU only the eager path runs, at T=256, N=1152, fp32, so CI
exercises the file in a few seconds.

    python -m pytest benches/bench_bias_act.py --benchmark-columns=median,min,max,rounds
    python benches/bench_bias_act.py [--json benches/results/bias_act.json]   # table with ratios
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
ACTIVATION = "gelu"
_compiled_ref = torch.compile(ops.bias_act_ref, dynamic=False) if CUDA else None


def make_inputs(tokens: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(tokens * n)
    return {
        "x": torch.randn(tokens, n, generator=g, device=DEVICE).to(DTYPE),
        "bias": torch.randn(n, generator=g, device=DEVICE).to(DTYPE),
    }


def bytes_moved(tokens: int, n: int) -> int:
    return (2 * tokens * n + n) * DTYPE.itemsize


def build(impl: str, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
    x, b = inputs["x"], inputs["bias"]
    if impl == "triton":
        def triton_bias_act() -> torch.Tensor:
            with ops.use_backend("triton"):
                return ops.bias_act(x, b, ACTIVATION)

        return triton_bias_act
    if impl == "eager":
        return lambda: ops.bias_act_ref(x, b, ACTIVATION)
    if impl == "compiled":
        return lambda: _compiled_ref(x, b, ACTIVATION)
    if impl == "copy":
        return copy_of(bytes_moved(*x.shape))
    raise ValueError(f"unknown implementation {impl!r}")


BENCH = OpBench(name="bias_act gelu", title="bias_act(x, bias, 'gelu')",
                dtype=DTYPE, make_inputs=make_inputs, build=build, bytes_moved=bytes_moved)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[0]}xN{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_bias_act_bandwidth(benchmark, impl: str, shape: tuple[int, int]) -> None:
    BENCH.run_pytest(benchmark, impl, shape)


if __name__ == "__main__":
    sys.exit(BENCH.main(SHAPES, IMPLS, __doc__.splitlines()[0]))
