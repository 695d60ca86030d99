"""Measure before choosing: which candidate serves one call class, decided once, remembered on disk.

`decide(op, variant, width, bucket, device, dtype, names)` answers for a call class the dispatch has
not met yet (`dispatch.choose` keeps the answer for every later call): the choice held in the tuning
cache if there is one; else, where timing is allowed, each candidate in `names` (the eager composition
always one, the others probed already) is timed on a random input of the bucket's shape and the fastest
is kept, in memory and in the cache beside the probe verdicts. A candidate that raises while timed is
left out; where the timing itself fails (the bucket's inputs do not fit in memory), one warning, and
the op-level choice serves the class for this process, not remembered on disk.

Timing runs only on CUDA (CUDA events: a warm-up, then the median of a few calls) or with a timer
injected by `use_timer` (tests drive the choice with a fake one on CPU). Under the Triton interpreter
with no injected timer nothing is timed: the interpreter is a correctness tool, so the op's fused path
serves where its probe passed. With $REMBERT_FAST_TUNE=off nothing is timed either. Inside a dynamo trace
or a CUDA-graph capture nothing is timed: a choice already held is used, else None (the caller falls
back to the probe verdict and asks again later).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rembert_fast.ops import candidates, tuning

Timer = Callable[[str, Callable[[], object]], float]  # (candidate name, one call) -> seconds per call

_injected: Timer | None = None


@contextlib.contextmanager
def use_timer(timer: Timer | None) -> Iterator[None]:
    """Time candidates with `timer(name, fn) -> seconds` inside the block (on any device)."""
    global _injected
    previous, _injected = _injected, timer
    try:
        yield
    finally:
        _injected = previous


def default_timer(device: torch.device, repeats: int = 5) -> Timer:
    """Median of `repeats` timed calls after one warm-up; CUDA events on CUDA."""
    from rembert_fast.ops.timing import default_timer as median_timer

    measure = median_timer(device, repeats)
    return lambda name, fn: measure(fn)


def active_timer(device: torch.device) -> Timer | None:
    """The timer a first use times with here: the injected one, CUDA events on CUDA, else None."""
    if _injected is not None:
        return _injected
    return default_timer(device) if device.type == "cuda" else None


def measure(op: str, variant: tuple, width: tuple, bucket: tuple[int, int], device: torch.device,
            dtype: torch.dtype, names: tuple[str, ...], timer: Timer) -> dict[str, float]:
    """Each candidate's ms on one input of the bucket's shape; a candidate that raises is left out."""
    ms: dict[str, float] = {}
    with torch.no_grad():
        for name, fn in candidates.calls(op, variant, width, bucket, device, dtype, names).items():
            try:
                ms[name] = timer(name, fn) * 1e3
            except Exception:  # a launch that fails on this shape: it cannot be chosen; eager stays
                if name == "eager":
                    raise
    return ms


def decide(op: str, variant: tuple, width: tuple, bucket: tuple[int, int], device: torch.device,
           dtype: torch.dtype, names: tuple[str, ...], fallback: str) -> str | None:
    """The candidate (one of `names`) that serves this call class; `fallback` where nothing may be timed
    here; None inside a trace or a capture when no choice is held (not to be remembered)."""
    if tuning.mode() == "off" or bucket[0] == 0:  # off, or an empty call: nothing worth timing
        return fallback
    name = candidates.entry(op, variant, dtype, width, bucket)
    held: dict[str, Any] | None = tuning.held_choice(device.type, name)
    if held is not None and held["choice"] in names:
        return held["choice"]
    if tuning.probing_forbidden():
        return None
    timer = active_timer(device)
    if timer is None:
        return fallback
    try:
        ms = measure(op, variant, width, bucket, device, dtype, names, timer)
    except Exception as error:  # the inputs or eager itself fail at this size (out of memory): not chosen
        warnings.warn(f"rembert_fast: timing {name} failed ({type(error).__name__}: {error}); "
                      f"{fallback} serves it in this process", RuntimeWarning, stacklevel=4)
        return fallback
    choice = min(ms, key=ms.__getitem__)
    tuning.record_choice(device.type, name, choice, ms)
    return choice
