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

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from bandwidth import CUDA, DEVICE, copy_of, device_name, measure, median_seconds, print_table

from rembert_fast import ops

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


def check_agreement(impl: str, inputs: dict[str, torch.Tensor]) -> None:
    """A wrong answer's speed is worthless: `impl` must agree with eager within bf16 rounding."""
    if impl in ("eager", "copy"):
        return
    error = (build(impl, inputs)().float() - build("eager", inputs)().float()).abs().max().item()
    if error > 0.1:
        raise AssertionError(f"{impl} differs from eager by {error:.3g}")


# ----------------------------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[0]}xN{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_bias_act_bandwidth(benchmark, impl: str, shape: tuple[int, int]) -> None:
    inputs = make_inputs(*shape)
    check_agreement(impl, inputs)
    fn = build(impl, inputs)

    def run() -> None:
        fn()
        if CUDA:
            torch.cuda.synchronize()

    seconds = median_seconds(fn)
    benchmark.group = f"bias_act gelu T={shape[0]} N={shape[1]} {str(DTYPE).removeprefix('torch.')} {DEVICE}"
    benchmark.extra_info.update(tokens=shape[0], n=shape[1], dtype=str(DTYPE), device=device_name(),
                                bytes=bytes_moved(*shape), median_us=seconds * 1e6,
                                gbps=bytes_moved(*shape) / seconds / 1e9)
    # pytest-benchmark's own timing is wall time per call including a host sync; median_us / gbps in
    # extra_info are GPU time from median_seconds, the figures the table reports.
    benchmark.pedantic(run, rounds=20, warmup_rounds=3, iterations=1)


# ----------------------------------------------------------------------------------------- table
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = []
    for tokens, n in SHAPES:
        inputs = make_inputs(tokens, n)
        for impl in IMPLS:
            check_agreement(impl, inputs)
        impls = {impl: build(impl, inputs) for impl in IMPLS}
        for row in measure(impls, bytes_moved(tokens, n)):
            rows.append({"shape": f"T={tokens} N={n}", "tokens": tokens, "n": n, **row})
    header = (f"bias_act(x, bias, 'gelu'): device {device_name()}, torch {torch.__version__}, "
              f"dtype {str(DTYPE).removeprefix('torch.')}, median after warm-up")
    print_table(header, rows)
    if args.json:
        meta = {"device": device_name(), "torch": torch.__version__, "dtype": str(DTYPE),
                "op": "bias_act gelu"}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
