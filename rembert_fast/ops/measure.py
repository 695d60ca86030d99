"""Measuring candidates: the one timer type, the default timer, and each candidate's time on a call class.

A `Timer` is `timer(name, fn) -> seconds per call` for the candidate `name`, given as a no-argument call.
The default (`median_timer`) is the median of a few calls after one warm-up: CUDA events on CUDA (only
the device's time counts), `time.perf_counter` elsewhere. A first use times only on CUDA or with a timer
injected by `use_timer` (tests drive the choice with a fake one on CPU); an explicit `rembert-fast tune`
times wherever it runs.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from rembert_fast.ops import candidates
from rembert_fast.ops.call_class import CallClass

Timer = Callable[[str, Callable[[], object]], float]  # (candidate name, one call) -> seconds per call

_injected: Timer | None = None


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """One call's time in ms (CUDA events on CUDA, so only the device's time counts; perf_counter else)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def median_timer(device: torch.device, repeats: int = 5) -> Timer:
    """Median of `repeats` timed calls after one warm-up: CUDA events on CUDA, perf_counter elsewhere."""

    def timer(name: str, fn: Callable[[], object]) -> float:
        fn()
        return statistics.median(time_call(fn, device) / 1e3 for _ in range(repeats))

    return timer


@contextlib.contextmanager
def use_timer(timer: Timer | None) -> Iterator[None]:
    """Time candidates with `timer(name, fn) -> seconds` inside the block (on any device)."""
    global _injected
    previous, _injected = _injected, timer
    try:
        yield
    finally:
        _injected = previous


def active_timer(device: torch.device) -> Timer | None:
    """The timer a first use times with here: the injected one, the median timer on CUDA, else None."""
    if _injected is not None:
        return _injected
    return median_timer(device) if device.type == "cuda" else None


def measure(call: CallClass, device: torch.device, names: tuple[str, ...], timer: Timer) -> dict[str, float]:
    """Each candidate's ms on one input of the call class's bucket shape; a candidate that raises is left
    out (it cannot be chosen). Eager raising (the input does not fit in memory) propagates."""
    ms: dict[str, float] = {}
    with torch.no_grad():
        for name, fn in candidates.calls(call, device, names).items():
            try:
                ms[name] = timer(name, fn) * 1e3
            except Exception:  # a launch that fails on this shape: it cannot be chosen; eager stays
                if name == "eager":
                    raise
    return ms
