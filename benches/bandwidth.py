"""Bandwidth measurement shared by the memory-bound kernel benchmarks (bench_layer_norm, bench_bias_act).

A memory-bound op is judged by GB/s = (bytes read + bytes written) / median time, against a
device-to-device copy of the same number of bytes measured in the same run: the copy is the
achievable bandwidth of the device, so ``fraction_of_copy`` is how close the op comes to it.

Timing: on CUDA, ``triton.testing.do_bench`` (median, L2 cleared before every call, CPU launch
overhead hidden behind that clear, so the figure is GPU time); on CPU, the median of wall times
after warm-up (only the eager path runs there, so CI exercises the scripts).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
CPU_WARMUP, CPU_ROUNDS = 3, 15


def device_name() -> str:
    return torch.cuda.get_device_name(0) if CUDA else "cpu"


def median_seconds(fn: Callable[[], object]) -> float:
    """Median time of one call of `fn`, after warm-up (see the module docstring for the method)."""
    if CUDA:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    for _ in range(CPU_WARMUP):
        fn()
    times = []
    for _ in range(CPU_ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_of(nbytes: int) -> Callable[[], torch.Tensor]:
    """A device-to-device copy reading nbytes/2 and writing nbytes/2: the yardstick for `nbytes` moved."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def measure(impls: dict[str, Callable[[], object]], nbytes: int) -> list[dict[str, Any]]:
    """One row per implementation: median, GB/s, speed-up over "eager", fraction of "copy" if present."""
    medians = {name: median_seconds(fn) for name, fn in impls.items()}
    return [{
        "impl": name,
        "median_us": seconds * 1e6,
        "GB/s": nbytes / seconds / 1e9,
        "speedup_vs_eager": medians["eager"] / seconds,
        "fraction_of_copy": medians["copy"] / seconds if "copy" in medians else None,
    } for name, seconds in medians.items()]


def print_table(header: str, rows: Sequence[dict[str, Any]]) -> None:
    """Print `rows` (each with "shape" plus the fields of `measure`) under a one-line header."""
    print(header)
    print(f"{'shape':>22} {'impl':>9} {'median us':>10} {'GB/s':>8} {'vs eager':>9} {'of copy':>8}")
    for row in rows:
        of_copy = f"{row['fraction_of_copy']:.0%}" if row["fraction_of_copy"] is not None else "-"
        print(f"{row['shape']:>22} {row['impl']:>9} {row['median_us']:>10.1f} {row['GB/s']:>8.3g} "
              f"{row['speedup_vs_eager']:>8.2f}x {of_copy:>8}")
