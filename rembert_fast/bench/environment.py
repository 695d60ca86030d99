"""What a benchmark record says it ran on: commit, versions, driver, device name and properties."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from rembert_fast import __version__


def git_commit() -> str | None:
    """$REMBERT_FAST_COMMIT when set (a lent GPU machine's copy of the tree has no .git), else git's HEAD."""
    if os.environ.get("REMBERT_FAST_COMMIT"):
        return os.environ["REMBERT_FAST_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"rembert_fast": __version__, "torch": torch.__version__,
                                       "python": platform.python_version(), "cuda": torch.version.cuda}
    for name in ("triton", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    versions["driver"] = _driver_version() if torch.cuda.is_available() else None
    return versions


def _driver_version() -> str | None:
    """The NVIDIA driver's version from nvidia-smi (torch does not expose it), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def device_properties(device: torch.device) -> dict[str, Any] | None:
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return {"multi_processor_count": props.multi_processor_count, "total_memory_gb": props.total_memory / 1e9,
            "capability": f"{props.major}.{props.minor}"}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"
