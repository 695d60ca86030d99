"""Measuring candidates: the one timer type, the default timer, and each candidate's time on a call class.

A `Timer` is `timer(name, fn) -> seconds per call` for the candidate `name`, given as a no-argument call.
The default (`median_timer`) is, after one warm-up, the median of a few samples, each the time per call
of a run of calls back to back (as many as fill about `_SAMPLE_MS`). On CUDA a sample is timed by two
events behind a device-side wait long enough for the host to queue every call of the run first, so the
device runs them back to back and the figure is device time only: the host's launch latency (tens of
microseconds a Triton launch, more than a small kernel takes) counts for no candidate, as under a CUDA
graph or a busy stream. Elsewhere `time.perf_counter`. Events, the wait and the calls run on the
tensors' device (`on_device`), whichever device is current. A first use times only on CUDA or with a
timer injected by `use_timer` (tests drive the choice with a fake one on CPU); an explicit
`rembert-fast tune` times wherever it runs.
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


_SAMPLE_MS = 1.0  # the device time one sample of `median_timer` aims at: a run of calls at least this long
_MAX_RUN = 32  # the most calls in one sample
_MAX_WAIT_MS = 50.0  # the longest device-side wait before a sample (a call that syncs needs none)
_SPIN_CYCLES_PER_MS = 2_000_000  # `torch.cuda._sleep` cycles per ms at 2 GHz, above any GPU's clock: a
# wait of n cycles lasts at least n / 2e6 ms
_host_seconds = time.perf_counter  # the host clock (a test stands a fake device timeline in)


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """`device` made current inside the block where it is a CUDA device with an index (events, streams
    and `torch.cuda.current_device()` then refer to it); nothing elsewhere."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """One call's time in ms (CUDA events on CUDA, so only the device's time counts; perf_counter else).
    A lone call between events also counts the host's launch latency: right for a model forward, which
    the benchmarks time per call; `time_calls` is for an op."""
    if device.type == "cuda":
        with on_device(device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    t0 = _host_seconds()
    fn()
    return (_host_seconds() - t0) * 1e3


def time_calls(fn: Callable[[], object], device: torch.device, calls: int, wait_ms: float = 0.0
               ) -> tuple[float, float]:
    """(device ms per call, host ms per call) over `calls` calls of `fn` back to back. On CUDA the start
    event is queued behind a device-side wait of `wait_ms`: where that covers the host's time to queue
    the calls, the device runs them back to back and the first figure excludes every launch latency.
    Elsewhere both figures are perf_counter's. ValueError for calls < 1."""
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    if device.type != "cuda":
        t0 = _host_seconds()
        for _ in range(calls):
            fn()
        per_call = (_host_seconds() - t0) * 1e3 / calls
        return per_call, per_call
    with on_device(device):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if wait_ms > 0 and hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(int(wait_ms * _SPIN_CYCLES_PER_MS))
        start.record()
        t0 = _host_seconds()
        for _ in range(calls):
            fn()
        host_ms = (_host_seconds() - t0) * 1e3
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls, host_ms / calls


def median_timer(device: torch.device, repeats: int = 5) -> Timer:
    """The median over `repeats` samples of the time per call, after one warm-up call and one sizing
    sample; each sample a run of calls back to back (as many as fill `_SAMPLE_MS`, at most `_MAX_RUN`),
    on CUDA behind a wait twice the host's measured time to queue them (device time only)."""

    def timer(name: str, fn: Callable[[], object]) -> float:
        with on_device(device):
            fn()
            device_ms, host_ms = time_calls(fn, device, 1, wait_ms=_SAMPLE_MS)
            calls = max(1, min(_MAX_RUN, int(_SAMPLE_MS / max(device_ms, 1e-6))))
            samples = []
            for _ in range(repeats):
                wait_ms = min(2 * host_ms * calls + 0.05, _MAX_WAIT_MS)
                device_ms, host_ms = time_calls(fn, device, calls, wait_ms)
                samples.append(device_ms)
            return statistics.median(samples) / 1e3

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
    with torch.no_grad(), on_device(device):
        for name, fn in candidates.calls(call, device, names).items():
            try:
                ms[name] = timer(name, fn) * 1e3
            except Exception:  # a launch that fails on this shape: it cannot be chosen; eager stays
                if name == "eager":
                    raise
    return ms
