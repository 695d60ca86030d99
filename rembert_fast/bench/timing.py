"""Timing for the benchmarks: per-call wall or device time, the median of a single op, peak memory.

A model forward is timed per call (CUDA events on GPU, so only the device's time counts;
`perf_counter` on CPU). A single op is timed by `kernel_ms`: on CUDA `triton.testing.do_bench`
(median, L2 cleared before every call, the host's launch latency hidden behind that clear, so the
figure is device time); on CPU the median of wall times after warm-up.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from rembert_fast.ops.measure import time_call


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> list[float]:
    """Per-call times in ms of `iters` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    return [time_call(fn, device) for _ in range(iters)]


def peak_activation_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Memory allocated above what was live before one call (activations + outputs), in MiB; CUDA only."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def kernel_ms(fn: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> float:
    """Median ms of one call of a single op. On CUDA `triton.testing.do_bench`: it clears L2 before each
    call, and that clear keeps the GPU busy while the host launches the op, so the figure is device
    time. Events around one lone call (`time_ms`) would also count the host's launch latency, tens of
    microseconds for a Triton launch: more than a LayerNorm over a few thousand rows takes."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return statistics.median(time_ms(fn, warmup, iters, device))
