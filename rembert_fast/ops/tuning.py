"""Self-checking dispatch: probe a fused path before its first use and remember the verdict on disk.

`fused_ok(op, device_type, dtype)` is asked by the dispatch before it picks a fused (Triton) backend on
`auto`. The first time for a key (the GPU's name and capability, or "cpu-interpreter"; the dtype; the
op), it runs `probe.run_probe`; a mismatch, compile error or launch error disables that path for the key
with one warning naming op, key and error, and the eager path serves it. Verdicts persist in a JSON
cache, one file per GPU, stamped with the GPU, CUDA/driver, torch and triton versions and a hash of the
kernel sources; a file that is corrupt, truncated or stamped otherwise is ignored with one warning and
rewritten (temp file + os.replace, under an fcntl lock).

`$REMBERT_FAST_TUNE`: `on` (default), `off` (no probe; fused paths trusted), `force` (ignore the cache,
probe again once per process). `$REMBERT_FAST_CACHE`: the cache directory (default
`$XDG_CACHE_HOME/rembert_fast`, else `~/.cache/rembert_fast`). Never probes inside a CUDA-graph capture
or a dynamo trace: there a verdict already made is used, else eager.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

MODES = ("off", "on", "force")
_lock = threading.Lock()
_verdicts: dict[str, str | None] = {}  # "op|dtype" -> None (fused ok) or the reason it is disabled
_loaded_for: str | None = None  # the cache file the verdicts were loaded from


def mode() -> str:
    """$REMBERT_FAST_TUNE, lower-cased; ValueError names a value that is not one of MODES."""
    name = (os.environ.get("REMBERT_FAST_TUNE") or "on").strip().lower()
    if name not in MODES:
        raise ValueError(f"REMBERT_FAST_TUNE={name!r} is not one of {MODES}")
    return name


def device_key(device_type: str) -> dict[str, Any]:
    """What a verdict holds for: the GPU and software stack (or the CPU interpreter), the kernels' hash."""
    import triton

    key: dict[str, Any] = {"torch": torch.__version__, "triton": triton.__version__,
                           "kernels": kernel_sources_hash()}
    if device_type == "cuda":
        index = torch.cuda.current_device()
        key.update(gpu=torch.cuda.get_device_name(index),
                   capability=list(torch.cuda.get_device_capability(index)),
                   cuda=torch.version.cuda, driver=_driver_version())
    else:
        key.update(gpu="cpu-interpreter", capability=None, cuda=None, driver=None)
    return key


def _driver_version() -> str | None:
    try:
        return str(torch._C._cuda_getDriverVersion())
    except Exception:
        return None


_sources_hash: str | None = None


def kernel_sources_hash() -> str:
    """sha256 (first 16 hex digits) of the kernel sources, kernels/*.py, in name order."""
    global _sources_hash
    if _sources_hash is None:
        from rembert_fast import kernels

        digest = hashlib.sha256()
        for path in sorted(Path(kernels.__file__).parent.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        _sources_hash = digest.hexdigest()[:16]
    return _sources_hash


def cache_path(device_type: str) -> Path:
    """The cache file for this device: <cache dir>/tune-<gpu slug>.json."""
    base = os.environ.get("REMBERT_FAST_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "rembert_fast")
    gpu = device_key(device_type)["gpu"]
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"
    return Path(base) / f"tune-{slug}.json"


def read_cache(path: Path, key: dict[str, Any]) -> dict[str, str | None]:
    """The verdicts in `path` if it holds this key's; {} (with one warning) for a corrupt or foreign file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as error:
        warnings.warn(f"rembert_fast: tuning cache {path} cannot be read ({error}); probing again",
                      RuntimeWarning, stacklevel=2)
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("verdicts"), dict):
            raise ValueError("no 'verdicts' table")
        verdicts = {str(k): (None if v is None else str(v)) for k, v in data["verdicts"].items()}
    except (ValueError, TypeError, AttributeError) as error:
        warnings.warn(f"rembert_fast: tuning cache {path} is corrupt ({error}); ignoring it and "
                      "rewriting it", RuntimeWarning, stacklevel=2)
        return {}
    if data.get("key") != key:
        warnings.warn(f"rembert_fast: tuning cache {path} is for another GPU, driver or kernel version "
                      f"({data.get('key')}); ignoring it and rewriting it", RuntimeWarning, stacklevel=2)
        return {}
    return verdicts


def write_cache(path: Path, key: dict[str, Any], verdicts: dict[str, str | None]) -> None:
    """Merge `verdicts` into `path` (this key's entries kept) atomically, under an exclusive lock."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bad file was warned about when read
            merged = {**read_cache(path, key), **verdicts}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, "verdicts": merged}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _probing_forbidden() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def entry(op: str, dtype: torch.dtype) -> str:
    """The cache's name for a verdict: "op|dtype"."""
    return f"{op}|{str(dtype).removeprefix('torch.')}"


def _load(device_type: str) -> tuple[Path, dict[str, Any]]:
    global _loaded_for
    key = device_key(device_type)
    path = cache_path(device_type)
    if _loaded_for != str(path):
        _verdicts.clear()
        if mode() != "force":
            _verdicts.update(read_cache(path, key))
        _loaded_for = str(path)
    return path, key


def fused_ok(op: str, device_type: str, dtype: torch.dtype) -> bool | None:
    """Whether `op`'s fused path may run for this device and dtype: True, False (disabled, warned once),
    or None where no verdict exists and none may be made now (a capture or a trace: run eager, ask again
    later). With $REMBERT_FAST_TUNE=off always True."""
    if mode() == "off":
        return True
    name = entry(op, dtype)
    with _lock:
        path, key = _load(device_type)
        if name in _verdicts:
            return _verdicts[name] is None
        if _probing_forbidden():
            return None
        from rembert_fast.ops.probe import run_probe

        device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else \
            torch.device("cpu")
        reason = run_probe(op, device, dtype)
        _verdicts[name] = reason
        if reason is not None:
            warnings.warn(f"rembert_fast: fused {op} disabled for {key['gpu']} "
                          f"(capability {key['capability']}), {dtype}: {reason}; running it eagerly",
                          RuntimeWarning, stacklevel=3)
        try:
            write_cache(path, key, {name: reason})
        except OSError as error:
            warnings.warn(f"rembert_fast: tuning cache {path} cannot be written ({error})",
                          RuntimeWarning, stacklevel=3)
        return reason is None


def record(device_type: str, decided: dict[str, str | None]) -> None:
    """Hold and persist verdicts made elsewhere (by `timing.tune`): "op|dtype" -> None or why not."""
    with _lock:
        path, key = _load(device_type)
        _verdicts.update(decided)
        write_cache(path, key, decided)


def describe() -> dict[str, Any]:
    """What `doctor` shows: the mode, this device's cache file and the verdicts it holds (None where no
    fused path runs here: plain CPU, or triton not importable)."""
    from rembert_fast.kernels._launch import interpreting

    device_type = "cuda" if torch.cuda.is_available() else "cpu" if interpreting() else None
    try:
        tune_mode = mode()
    except ValueError as error:
        tune_mode = f"invalid: {error}"
    if device_type is None:
        return {"mode": tune_mode, "cache": None, "verdicts": None}
    try:
        key, path = device_key(device_type), cache_path(device_type)
    except Exception as error:  # triton missing or broken: nothing fused runs, nothing cached
        return {"mode": tune_mode, "cache": None, "verdicts": None, "error": str(error)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        held = read_cache(path, key)
    disabled = {name: why for name, why in held.items() if why is not None}
    return {"mode": tune_mode, "cache": str(path), "verdicts": len(held), "disabled": disabled}


def verdicts() -> dict[str, str | None]:
    """The verdicts this process holds: "op|dtype" -> None (fused path in use) or why it is disabled."""
    return dict(_verdicts)


def reset() -> None:
    """Forget the verdicts held in memory (the cache file is read again on the next question)."""
    global _loaded_for
    with _lock:
        _verdicts.clear()
        _loaded_for = None
