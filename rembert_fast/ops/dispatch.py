"""The one place a backend is chosen for an op call (architecture: dispatch).

Backends: ``triton`` (the kernels in ``rembert_fast.kernels``; CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), ``cuda`` (the compiled extension ``rembert_fast._C``; ``embed`` on CUDA),
``eager`` (plain PyTorch, ``rembert_fast.ops.reference``). The request is ``use_backend(...)`` if
active, else ``$REMBERT_FAST_BACKEND``, else ``auto``. A backend asked for explicitly that cannot run
raises ``RuntimeError`` with the reason; ``auto`` never raises for availability. Under autograd (grad
enabled and an input that requires grad) the ops of TRAINABLE_OPS run their differentiable custom ops
(forward and backward kernels, `rembert_fast.ops.library`) when ``triton`` is requested explicitly;
everything else, and every op on ``auto``, runs eagerly in training.

Two levels: `backend_for(op, device, dtype)` is the op-level decision (availability, the probe verdict,
a trace-time constant under torch.compile); `choose(op, variant, width, device, dtype, tokens, ...)` is
what each op asks per call, the candidate for its call class, made once at first use and then a dict
lookup. A first use on `auto` runs the pipeline, each step in its own module:

    call class (`call_class.CallClass`) -> candidates (`candidates.names`, from `registry.OPS`)
      -> check (`tuning.fused_ok`: the probe verdict, `probe.run_probe` at first need)
      -> measure (`measure.measure`, where timing is allowed) -> choose the fastest
      -> cache (`tuning.record_choice`: in memory and in the JSON cache)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rembert_fast import extension
from rembert_fast.kernels._launch import interpreting
from rembert_fast.ops import candidates, measure, tuning
from rembert_fast.ops.call_class import CallClass, probed_name, verdict_name
from rembert_fast.ops.registry import EXTENSION_OPS, TRAINABLE_OPS, TRITON_OPS

BACKENDS = ("auto", "eager", "triton", "cuda")


def _constant_under_compile(fn: Callable[..., str]) -> Callable[..., str]:
    """`torch.compiler.assume_constant_result`: dynamo calls `fn` while tracing and keeps its answer
    as a constant of the graph. The same mark, set without importing torch._dynamo (which the public
    decorator does, a cost every process that imports the ops would pay)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn

_backend_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("rembert_fast_backend",
                                                                               default=None)


def _parse_request(raw: str | None) -> str:
    name = (raw or "auto").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"REMBERT_FAST_BACKEND={name!r} is not one of {BACKENDS}")
    return name


_env_request: tuple[str | None, str] = (None, "auto")  # ($REMBERT_FAST_BACKEND as last read, its parse)

# Dynamo cannot trace ContextVar.get, so code torch.compile traces reads this mirror instead: the name of
# the innermost use_backend block open now (in any thread), guarded by dynamo (a change retraces).
_open_blocks: list[tuple[object, str]] = []
_traced_override: str | None = None


@_constant_under_compile  # under torch.compile: read at trace time, a constant of the graph
def _request(override: str | None) -> str:
    global _env_request
    if override is not None:
        return override
    raw = os.environ.get("REMBERT_FAST_BACKEND")
    if raw != _env_request[0]:
        _env_request = (raw, _parse_request(raw))
    return _env_request[1]


def requested_backend() -> str:
    """The backend asked for: `use_backend(...)` if active, else $REMBERT_FAST_BACKEND, else auto.

    ValueError names a $REMBERT_FAST_BACKEND that is not one of BACKENDS."""
    if torch.compiler.is_compiling():
        return _request(_traced_override)
    return _request(_backend_override.get())


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the block on backend `name` ("auto", "eager", "triton" or "cuda").

    The block holds for the thread (or async task) that opened it. Code compiled by torch.compile
    takes the backend of the innermost block open when it runs, and is retraced when that changes."""
    global _traced_override
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {BACKENDS}")
    token = _backend_override.set(name)
    block = (object(), name)
    _open_blocks.append(block)
    _traced_override = name
    try:
        yield
    finally:
        _backend_override.reset(token)
        _open_blocks.remove(block)
        _traced_override = _open_blocks[-1][1] if _open_blocks else None


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


def needs_autograd(tensors: tuple[torch.Tensor | None, ...]) -> bool:
    """Whether a call must run eagerly for autograd: grad enabled and an input that requires grad."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


# backend_for's decisions: (op, device type, dtype, request) -> backend. A request is a name, so a
# use_backend block (entered or left, in any thread) or a new $REMBERT_FAST_BACKEND selects another entry.
_decisions: dict[tuple[str, str, torch.dtype, str], str] = {}


def _triton_runnable(device_type: str) -> tuple[bool, str]:
    if device_type == "cuda" or (device_type == "cpu" and interpreting()):
        return triton_status()
    return False, f"triton does not run on {device_type} tensors without TRITON_INTERPRET=1"


def _decide(op: str, device_type: str, requested: str) -> str:
    if op in EXTENSION_OPS:
        if device_type == "cuda" and requested in ("auto", "cuda"):
            if extension.load() is not None:
                return "cuda"
            if requested == "cuda":
                raise RuntimeError(f"backend 'cuda' was requested but the extension is unavailable: "
                                   f"{extension.status()[1]}")
        elif requested == "cuda":
            raise RuntimeError(f"backend 'cuda' runs on CUDA tensors only; these are on {device_type}")
        return "eager"
    if op.partition("[")[0] not in TRITON_OPS:  # "bias_act[gelu]": one activation of bias_act
        raise ValueError(f"op {op!r} is not one of {TRITON_OPS + EXTENSION_OPS}")
    if requested == "eager":
        return "eager"
    runnable, reason = _triton_runnable(device_type)
    if requested == "triton" and not runnable:
        raise RuntimeError(f"backend 'triton' was requested but cannot run: {reason}")
    return "triton" if runnable else "eager"


@_constant_under_compile  # under torch.compile: decided at trace time, a constant of the graph
def _decision(op: str, device_type: str, dtype: torch.dtype, requested: str) -> str:
    key = (op, device_type, dtype, requested)
    backend = _decisions.get(key)
    if backend is None:
        backend = _decide(op, device_type, requested)
        if backend != "eager" and requested == "auto":  # an explicit request is trusted, never probed
            verdict = tuning.fused_ok(op, device_type, dtype)
            if verdict is None:  # inside a capture or a trace, before any probe: eager, ask again later
                return "eager"
            backend = backend if verdict else "eager"
        _decisions[key] = backend
    return backend


def backend_for(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs `op` on tensors of this device and dtype: "triton", "cuda" or "eager".

    The one place a backend is chosen. Decided once per (op, device type, dtype, requested backend)
    and cached; on `auto` a fused path is first probed against eager (`rembert_fast.ops.tuning`) and
    serves only if it agrees. What depends on the call's tensors (autograd, a width or head_dim a
    kernel cannot take, weights the extension cannot read) is decided by the op. RuntimeError with
    the reason where a backend asked for explicitly cannot run; ValueError for a bad
    $REMBERT_FAST_BACKEND or $REMBERT_FAST_TUNE. Under torch.compile the decision is made at trace
    time; a use_backend block entered or left retraces.
    """
    requested = requested_backend()
    if torch.compiler.is_compiling():
        return _decision(op, device.type, dtype, requested)
    with measure.on_device(device):  # a probe at first need runs on the tensors' GPU, not the current one
        return _decision(op, device.type, dtype, requested)


# choose's decisions: (op, variant, width, device type, dtype, request, token bucket, seqlen bucket) ->
# the candidate serving that call class (`rembert_fast.ops.candidates`); a bucket is held as the bit
# length of n - 1 (the power of two 1 << bits), -1 for 0.
_choices: dict[tuple, str] = {}


def _from_bits(bits: int) -> int:
    """The bucket a key's bit length stands for: 1 << bits, or 0 for -1."""
    return 1 << bits if bits >= 0 else 0


def choose(
    op: str,
    variant: tuple,  # what changes the work but not the shapes (activation, causal, optional inputs)
    width: tuple,  # the call's fixed dimensions (hidden width; heads and head_dim; GEMM in and out)
    device: torch.device,
    dtype: torch.dtype,
    tokens: int,  # the call's row count (rounded up to a power of two: the bucket)
    tensors: tuple[torch.Tensor | None, ...],  # the inputs autograd may need
    seqlen: int = 0,  # attention: the longest sequence (bucketed likewise); 0 elsewhere
) -> str:
    """The candidate that serves this call: "eager", "triton", "cuda" or an attention competitor.

    Under autograd `training_choice`. While torch.compile traces, the op-level `backend_for` (a trace-time
    constant that never reads a size). Else decided once per call class and kept (a dict lookup on
    every later call): on `auto` the probed candidates are timed at first use on a bucket-shaped
    input and the fastest kept (the pipeline above); an explicit request is served as asked.
    Raises as backend_for."""
    if needs_autograd(tensors):
        return training_choice(op, device, dtype)
    if torch.compiler.is_compiling():
        return backend_for(probed_name(op, variant), device, dtype)
    # The buckets as bit lengths (pow2(n) == 1 << bits; -1 for 0): no call on the hot path.
    key = (op, variant, width, device.type, dtype, _request(_backend_override.get()),
           (tokens - 1).bit_length() if tokens else -1, (seqlen - 1).bit_length() if seqlen else -1)
    made = _choices.get(key)
    if made is not None:
        return made
    with measure.on_device(device):  # probes and timing on the tensors' GPU, not the current one
        return _choose_first(key, device)


def training_choice(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The candidate for a call that autograd records: "triton" where triton is requested explicitly
    and `op` is trainable (`registry.TRAINABLE_OPS`), else "eager" (on `auto` a fused backward serves
    nowhere yet: it has not been checked against eager autograd on this device). Raises as backend_for."""
    if op in TRAINABLE_OPS and requested_backend() == "triton":
        return backend_for(op, device, dtype)
    return "eager"


def _choose_first(key: tuple, device: torch.device) -> str:
    op, variant, width, device_type, dtype, requested, token_bits, seqlen_bits = key
    call = CallClass(op, variant, width, dtype, _from_bits(token_bits), _from_bits(seqlen_bits))
    base = _decision(call.probed, device_type, dtype, requested)
    forbidden = tuning.probing_forbidden()
    if requested != "auto" or (device_type == "cpu" and not interpreting()):
        if not forbidden:
            _choices[key] = base
        return base
    names, _ = candidate_names(call, device_type, base)
    choice = base if len(names) == 1 else _measure_and_choose(call, device, names, fallback=base)
    if choice is None or forbidden:  # inside a trace or capture: the probe verdict, asked again later
        return choice or base
    _choices[key] = choice
    return choice


def candidate_names(call: CallClass, device_type: str, base: str) -> tuple[tuple[str, ...], list[str]]:
    """(the candidates that may serve `call`, why each competitor left out is): eager always, the op's
    fused path where the op-level decision `base` chose it, each competitor that can run here and passed
    its probe (probed now unless inside a trace or capture)."""

    def probed(candidate: str) -> str | None:
        if tuning.fused_ok(call.op, device_type, call.dtype, candidate):
            return None
        return tuning.verdicts().get(verdict_name(call.op, call.dtype, candidate)) or "not probed yet"

    return candidates.names(call, device_type, base, probed)


def _measure_and_choose(call: CallClass, device: torch.device, names: tuple[str, ...],
                        fallback: str) -> str | None:
    """The candidate (one of `names`) serving `call`: the choice held in the tuning cache; else, where
    timing is allowed, the fastest measured now (and cached); `fallback` where nothing may be timed here
    or the timing itself fails (one warning; not cached); None inside a trace or a capture when no choice
    is held (the caller does not remember it)."""
    if tuning.mode() == "off" or call.tokens == 0:  # off, or an empty call: nothing worth timing
        return fallback
    held = tuning.held_choice(device.type, call.name)
    if held is not None and held["choice"] in names:
        return held["choice"]
    if tuning.probing_forbidden():
        return None
    timer = measure.active_timer(device)
    if timer is None:
        return fallback
    try:
        ms = measure.measure(call, device, names, timer)
    except Exception as error:  # the inputs or eager itself fail at this size (out of memory): not chosen
        warnings.warn(f"rembert_fast: timing {call.name} failed ({type(error).__name__}: {error}); "
                      f"{fallback} serves it in this process", RuntimeWarning, stacklevel=4)
        return fallback
    return choose_fastest(call, device.type, ms)


def choose_fastest(call: CallClass, device_type: str, ms: dict[str, float]) -> str:
    """The candidate with the least ms, recorded as `call`'s choice in the tuning cache."""
    choice = min(ms, key=ms.__getitem__)
    tuning.record_choice(device_type, call.name, choice, ms)
    return choice


def unavailable_reason(op: str, device_type: str) -> str:
    """Why `op`'s fused path cannot run on this device type in this process (for tables and doctor)."""
    if op in EXTENSION_OPS:
        if device_type != "cuda":
            return f"the extension runs on CUDA tensors only, not {device_type}"
        return f"the extension is unavailable: {extension.status()[1]}"
    return _triton_runnable(device_type)[1]


def choices_made() -> dict[str, str]:
    """The candidate serving each call class met in this process: "device request entry" -> name, the
    entry as the tuning cache names it (e.g. "cuda auto attention:False:True|bfloat16|18x64|t512s128")."""
    return {f"{device_type} {requested} "
            f"{CallClass(op, variant, width, dtype, _from_bits(tokens), _from_bits(seqlen)).name}": name
            for (op, variant, width, device_type, dtype, requested, tokens, seqlen), name
            in list(_choices.items())}


def forget() -> None:
    """Drop every decision held in this process (made again, from the tuning cache, on the next call)."""
    _decisions.clear()
    _choices.clear()


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
        "tuning": tuning.describe(),
    }
