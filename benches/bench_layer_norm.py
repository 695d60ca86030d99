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
def test_layer_norm_bandwidth(benchmark, impl: str, shape: tuple[int, int]) -> None:
    inputs = make_inputs(*shape)
    check_agreement(impl, inputs)
    fn = build(impl, inputs)

    def run() -> None:
        fn()
        if CUDA:
            torch.cuda.synchronize()

    seconds = median_seconds(fn)
    benchmark.group = f"layer_norm T={shape[0]} N={shape[1]} {str(DTYPE).removeprefix('torch.')} {DEVICE}"
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
    header = (f"layer_norm(x + x_bias + residual): device {device_name()}, torch {torch.__version__}, "
              f"dtype {str(DTYPE).removeprefix('torch.')}, median after warm-up")
    print_table(header, rows)
    if args.json:
        meta = {"device": device_name(), "torch": torch.__version__, "dtype": str(DTYPE),
                "op": "layer_norm"}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
