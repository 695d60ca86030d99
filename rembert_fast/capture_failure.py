"""What a failed CUDA-graph capture leaves behind in the process, and whether capturing may go on.

In torch releases before 2.12, `CUDAGraph::capture_end` raises on a failed capture before it calls the
caching allocator's `endAllocateToPool` (fixed by pytorch/pytorch#180395). The allocator then believes
a capture is still under way for the rest of the process: every later `torch.cuda.graph(...)` (which
empties the cache first), `torch.cuda.empty_cache()` and the allocator's own free-and-retry on an out of
memory fail with `INTERNAL ASSERT FAILED ... captures_underway.empty()`. torch offers no supported way
to reset that state, so on those releases the first failed capture turns capturing off for the whole
process, with one warning; graphs captured before it still replay. On a fixed torch a failed capture
concerns only the runner it happened in.
"""

from __future__ import annotations

import warnings

import torch
from torch.torch_version import TorchVersion

FIXED_IN = "2.12"
TORCH_VERSION = TorchVersion(torch.__version__)

_disabled_reason: str | None = None  # why capturing is off for this process, once it is


def allocator_recovers() -> bool:
    """Whether this torch leaves the caching allocator usable after a failed capture (a pre-release
    of FIXED_IN counts as before the fix)."""
    return TORCH_VERSION >= FIXED_IN


def disabled_reason() -> str | None:
    """Why CUDA-graph capture is off for this process, or None while it may be tried."""
    return _disabled_reason


def record_failure(error: str) -> str | None:
    """Note that a capture failed with `error` (its text). On a torch whose allocator cannot recover,
    turn capturing off for the process and warn once (RuntimeWarning); return why it is off, or None
    when only the failing runner is concerned."""
    global _disabled_reason
    if allocator_recovers():
        return None
    if _disabled_reason is None:
        _disabled_reason = (
            f"a CUDA graph capture failed ({error}) under torch {TORCH_VERSION}, whose "
            "CUDAGraph::capture_end raises before endAllocateToPool and leaves the caching allocator "
            f"believing a capture is under way (pytorch/pytorch#180395, fixed in torch {FIXED_IN}): CUDA "
            "graph capture is off for the rest of this process (torch.cuda.empty_cache() would fail the "
            f"'captures_underway.empty()' assert); upgrade to torch >= {FIXED_IN} or restart the process "
            "to capture again"
        )
        warnings.warn(f"rembert_fast: {_disabled_reason}", RuntimeWarning, stacklevel=3)
    return _disabled_reason
