"""Backend resolution for the op API: which backend runs an op for given tensors.

Backends: ``triton`` (the kernels in ``rembert_fast.kernels``; CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), ``cuda`` (the compiled extension ``rembert_fast._C``; ``embed`` on CUDA),
``eager`` (plain PyTorch, ``rembert_fast.ops.reference``). The request is ``use_backend(...)`` if
active, else ``$REMBERT_FAST_BACKEND``, else ``auto``. A backend asked for explicitly that cannot run
raises ``RuntimeError`` with the reason; ``auto`` never raises for availability. Under autograd (grad
enabled and an input that requires grad) every op runs eagerly: the kernels have no backward.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any

import torch

BACKENDS = ("auto", "eager", "triton", "cuda")

_backend_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("rembert_fast_backend",
                                                                               default=None)


def requested_backend() -> str:
    """The backend asked for: `use_backend(...)` if active, else $REMBERT_FAST_BACKEND, else auto."""
    name = _backend_override.get() or os.environ.get("REMBERT_FAST_BACKEND", "auto") or "auto"
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"REMBERT_FAST_BACKEND={name!r} is not one of {BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend `name` ("auto", "eager", "triton" or "cuda")."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {BACKENDS}")
    token = _backend_override.set(name)
    try:
        yield
    finally:
        _backend_override.reset(token)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_status() -> tuple[bool, str]:
    """(available, reason) for the Triton backend in this process."""
    try:
        import triton  # noqa: F401
    except Exception as err:  # an ImportError, or a broken install raising anything
        return False, f"triton cannot be imported: {err}"
    if torch.cuda.is_available():
        return True, "triton on CUDA"
    if interpreting():
        return True, "triton interpreter on CPU (TRITON_INTERPRET=1)"
    return False, "no CUDA device and TRITON_INTERPRET is not set"


def needs_autograd(tensors: tuple[Any, ...]) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )


def use_triton(device: torch.device, tensors: tuple[Any, ...]) -> bool:
    """Whether this call runs the Triton kernel; raises if triton was asked for and cannot run."""
    requested = requested_backend()
    if requested == "eager" or needs_autograd(tensors):
        return False
    if device.type == "cuda":
        runnable, reason = triton_status()
    elif device.type == "cpu" and interpreting():
        runnable, reason = triton_status()
    else:
        runnable, reason = False, f"triton does not run on {device.type} tensors without TRITON_INTERPRET=1"
    if requested == "triton" and not runnable:
        raise RuntimeError(f"backend 'triton' was requested but cannot run: {reason}")
    return runnable


def gemm_takes_bias(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether a Linear feeding layer_norm(x_bias=...) or bias_act should add its bias in the GEMM.

    True where that op runs eagerly: `F.linear` with a bias is one addmm, while a bias handed to the
    eager op is an extra pass over the output (about 3% of a full-width layer on CPU). False where the
    Triton kernel runs: it adds the bias in the pass it makes anyway.
    """
    return not use_triton(x.device, (x, *params))


def extension_takes_embed(
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    type_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor | None,
) -> bool:
    """Whether the extension's kernel reads these as they are: contiguous tables and LN parameters, the
    LN parameters in the tables' dtype (fp32 LN parameters with half tables, strided views or a missing
    LN bias run eagerly)."""
    tensors = (word_weight, position_weight, type_weight, ln_weight, ln_bias)
    return ln_weight.dtype == word_weight.dtype and all(t is not None and t.is_contiguous() for t in tensors)


def backend_info() -> dict[str, Any]:
    """What is available in this process and why not: versions, devices, backends, the extension."""
    from rembert_fast import extension

    triton_ok, triton_reason = triton_status()
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    ext_ok, ext_reason = extension.status()
    try:
        requested = requested_backend()
    except ValueError as error:  # a bad $REMBERT_FAST_BACKEND: what a diagnosis should show, not crash on
        requested = f"invalid: {error}"
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "requested_backend": requested,
        "triton_interpret": interpreting(),
        "backends": {
            "eager": {"available": True, "reason": "plain PyTorch, always available"},
            "triton": {"available": triton_ok, "reason": triton_reason},
            "cuda": {"available": ext_ok, "reason": ext_reason},
        },
    }
