"""Self-checking dispatch: probe a fused path before its first use and remember the verdict on disk.

`fused_ok(op, device_type, dtype, candidate=None)` is asked by the dispatch before it picks a fused
backend (or a competitor, `candidate`) on `auto`. The first time for a key (the GPU's name and
capability, or "cpu-interpreter"; the dtype; the op), it runs `probe.run_probe`; a mismatch, compile
error or launch error disables that path for the key with one warning naming op, key and error, and the
eager path serves it. The per-bucket choices the dispatch measures (`rembert_fast.ops.measure`) are kept
beside the verdicts (`held_choice`, `record_choice`), each under its `CallClass.name`. Both persist
in a JSON cache, one file per GPU, stamped with the GPU, CUDA/driver, torch and triton versions and a
hash of the kernel sources; a file that cannot be read (bad bytes, truncated, a directory in its
place, permission denied), is not the cache's layout or is stamped otherwise is ignored with one warning
and rewritten (temp file + os.replace, under an fcntl lock): never an exception.

`$REMBERT_FAST_TUNE`: `on` (default), `off` (no probe; fused paths trusted), `force` (ignore the cache,
probe again once per process). `$REMBERT_FAST_CACHE`: the cache directory (default
`$XDG_CACHE_HOME/rembert_fast`, else `~/.cache/rembert_fast`). Never probes inside a CUDA-graph capture
or a dynamo trace: there a verdict already made is used, else eager.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from rembert_fast import kernels
from rembert_fast.kernels._launch import interpreting
from rembert_fast.ops import probe
from rembert_fast.ops.call_class import verdict_name

MODES = ("off", "on", "force")
_lock = threading.Lock()
_verdicts: dict[str, str | None] = {}  # "op|dtype" -> None (fused ok) or the reason it is disabled
_choices: dict[str, dict[str, Any]] = {}  # CallClass.name -> {"choice": name, "ms": {name: ms}}
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


_DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")  # the version Linux's NVIDIA driver reports


@functools.lru_cache(maxsize=1)  # a process keeps the driver it started with
def _driver_version() -> str | None:
    """The installed NVIDIA driver's version ("550.54.15"), so that a driver update re-checks every path:
    from the kernel module's /proc file, else NVML (what nvidia-smi reads), else the CUDA API version the
    driver supports ("cuda-api 12040", which changes only with a major driver update), else None."""
    try:
        found = re.search(r"Kernel Module\b.*?\s(\d+(?:\.\d+)+)\s", _DRIVER_VERSION_FILE.read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    try:
        import ctypes

        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        text = ctypes.create_string_buffer(96)
        if nvml.nvmlInit_v2() == 0 and nvml.nvmlSystemGetDriverVersion(text, len(text)) == 0:
            return text.value.decode()
    except (OSError, AttributeError):
        pass
    try:
        return f"cuda-api {torch._C._cuda_getDriverVersion()}"
    except Exception:
        return None


_sources_hash: str | None = None


def kernel_sources_hash() -> str:
    """sha256 (first 16 hex digits) of the kernel sources, kernels/*.py, in name order."""
    global _sources_hash
    if _sources_hash is None:
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


def _read_tables(path: Path, key: dict[str, Any]) -> tuple[dict[str, str | None], dict[str, dict[str, Any]]]:
    """(verdicts, choices) in `path` if it holds this key's; empty, with one warning, for a file that
    cannot be read (a directory in its place, permission denied), is not UTF-8 JSON of the cache's
    layout (bad bytes, truncated, nested past the parser's depth) or is stamped for another key. Never
    raises: the caller rewrites the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, {}
    except OSError as error:
        warnings.warn(f"rembert_fast: tuning cache {path} cannot be read ({error}); ignoring it and "
                      "rewriting it", RuntimeWarning, stacklevel=3)
        return {}, {}
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("verdicts"), dict):
            raise ValueError("no 'verdicts' table")
        verdicts = {str(k): (None if v is None else str(v)) for k, v in data["verdicts"].items()}
        choices = data.get("choices", {})
        if not isinstance(choices, dict) or not all(
                isinstance(c, dict) and isinstance(c.get("choice"), str) and isinstance(c.get("ms"), dict)
                for c in choices.values()):
            raise ValueError("a malformed 'choices' table")
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; json raises RecursionError past its depth
    except (ValueError, TypeError, AttributeError, RecursionError) as error:
        warnings.warn(f"rembert_fast: tuning cache {path} is corrupt ({type(error).__name__}: "
                      f"{str(error)[:200]}); ignoring it and rewriting it", RuntimeWarning, stacklevel=3)
        return {}, {}
    if data.get("key") != key:
        warnings.warn(f"rembert_fast: tuning cache {path} is for another GPU, driver or kernel version "
                      f"({data.get('key')}); ignoring it and rewriting it", RuntimeWarning, stacklevel=3)
        return {}, {}
    return verdicts, choices


def write_cache(path: Path, key: dict[str, Any], verdicts: dict[str, str | None],
                choices: dict[str, dict[str, Any]] | None = None) -> None:
    """Merge `verdicts` and `choices` into `path` (this key's entries kept) atomically, under an exclusive
    lock."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bad file was warned about when read
            held_verdicts, held_choices = _read_tables(path, key)
        merged = {**held_verdicts, **verdicts}
        merged_choices = {**held_choices, **(choices or {})}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, "verdicts": merged, "choices": merged_choices}, f, indent=1,
                          sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            if path.is_dir() and not path.is_symlink():
                # A directory where the cache file belongs (warned about when read) would make the
                # replace fail on every write: the file's name is rembert_fast's, so it goes.
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def probing_forbidden() -> bool:
    """Whether no probe or timing may run now: inside a dynamo trace or a CUDA-graph capture."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _load(device_type: str) -> tuple[Path, dict[str, Any]]:
    global _loaded_for
    key = device_key(device_type)
    path = cache_path(device_type)
    if _loaded_for != str(path):
        _verdicts.clear()
        _choices.clear()
        if mode() != "force":
            held_verdicts, held_choices = _read_tables(path, key)
            _verdicts.update(held_verdicts)
            _choices.update(held_choices)
        _loaded_for = str(path)
    return path, key


def fused_ok(op: str, device_type: str, dtype: torch.dtype, candidate: str | None = None) -> bool | None:
    """Whether `op`'s fused path (or its competitor `candidate`) may run for this device and dtype: True,
    False (disabled, warned once), or None where no verdict exists and none may be made now (a capture
    or a trace: run eager, ask again later). With $REMBERT_FAST_TUNE=off always True."""
    if mode() == "off":
        return True
    name = verdict_name(op, dtype, candidate)
    with _lock:
        path, key = _load(device_type)
        if name in _verdicts:
            return _verdicts[name] is None
        if probing_forbidden():
            return None
        device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else \
            torch.device("cpu")
        reason = probe.run_probe(op, device, dtype, *([candidate] if candidate else []))
        _verdicts[name] = reason
        if reason is not None:
            what = op if candidate is None else f"{op} ({candidate})"
            warnings.warn(f"rembert_fast: fused {what} disabled for {key['gpu']} "
                          f"(capability {key['capability']}), {dtype}: {reason}; running it eagerly",
                          RuntimeWarning, stacklevel=3)
        try:
            write_cache(path, key, {name: reason})
        except OSError as error:
            warnings.warn(f"rembert_fast: tuning cache {path} cannot be written ({error})",
                          RuntimeWarning, stacklevel=3)
        return reason is None


def held_choice(device_type: str, name: str) -> dict[str, Any] | None:
    """The choice held for call class `name` (in memory, else in this device's cache file), or None."""
    with _lock:
        _load(device_type)
        return _choices.get(name)


def record_choice(device_type: str, name: str, choice: str, ms: dict[str, float]) -> None:
    """Hold and persist the choice for call class `name`: the candidate chosen and each one's ms.
    A cache that cannot be written warns once per call; the choice is held in memory all the same."""
    made = {"choice": choice, "ms": ms}
    with _lock:
        path, key = _load(device_type)
        _choices[name] = made
        try:
            write_cache(path, key, {}, {name: made})
        except OSError as error:
            warnings.warn(f"rembert_fast: tuning cache {path} cannot be written ({error})",
                          RuntimeWarning, stacklevel=3)


def describe() -> dict[str, Any]:
    """What `doctor` shows: the mode, this device's cache file and the verdicts it holds (None where no
    fused path runs here: plain CPU, or triton not importable)."""
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
        held, choices = _read_tables(path, key)
    disabled = {name: why for name, why in held.items() if why is not None}
    return {"mode": tune_mode, "cache": str(path), "verdicts": len(held), "disabled": disabled,
            "choices": {name: made["choice"] for name, made in sorted(choices.items())}}


def choices() -> dict[str, dict[str, Any]]:
    """The per-bucket choices this process holds: call class -> {"choice": name, "ms": {name: ms}}."""
    return dict(_choices)


def verdicts() -> dict[str, str | None]:
    """The verdicts this process holds: "op|dtype" -> None (fused path in use) or why it is disabled."""
    return dict(_verdicts)


def reset() -> None:
    """Forget the verdicts held in memory (the cache file is read again on the next question)."""
    global _loaded_for
    with _lock:
        _verdicts.clear()
        _choices.clear()
        _loaded_for = None
