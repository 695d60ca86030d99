"""Loading the C++/CUDA extension `rembert_fast._C` (the fused embedding op).

Placeholder until the CUDA extension issue lands: reports the extension as unavailable.
"""

from __future__ import annotations

from types import ModuleType


def load() -> ModuleType | None:
    """The extension module, or None where it cannot be had (see `status()`)."""
    return None


def status() -> tuple[bool, str]:
    """(available, reason)."""
    return False, "the CUDA extension is not built in this version"
