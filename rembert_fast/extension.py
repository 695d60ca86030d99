"""Loading the C++/CUDA extension `rembert_fast._C` (the fused embedding op) and calling it.

Where the module comes from, first hit wins:
1. ``rembert_fast._C`` compiled by setup.py (``pip install --no-build-isolation .`` where torch has CUDA
   and nvcc is found);
2. a just-in-time build with ``torch.utils.cpp_extension.load`` (ninja + nvcc) on first GPU use, into
   ``$REMBERT_FAST_CACHE`` (default ``~/.cache/rembert_fast``) under a directory named after the torch
   and CUDA versions, the GPU architectures, the Python ABI and a hash of the sources, so a rebuilt
   torch or an edited kernel never loads a stale binary, and later processes load it without compiling;
3. nothing: ``ops.embed`` takes the eager path and ``status()`` says why.

``$REMBERT_FAST_BUILD_CUDA`` (the install's switch) holds here too: ``0`` means no first-use build
either (an install that fell back without the extension exports it, so no later process spends a minute
on the same compile error), ``1`` tries a build again where an earlier one failed. A failed build is
recorded in its build directory (``build-failed.txt``): later processes, which would fail the same way,
skip it and report the recorded error; new sources, another torch or GPU architecture build afresh.
Builds into one directory are serialised by an ``fcntl`` lock, which the kernel releases when its
holder dies; torch's own lock file that a killed build left behind is removed before building, so no
process waits on it.

The sources are found in the package (``rembert_fast/csrc``, where a wheel ships them) or beside it
(``csrc/`` of a source checkout or an editable install). Both builds compile with the toolkit of
`cuda_toolkit_root()`: torch's CUDA_HOME, or the one nvcc names where torch's guess has no headers.
`load()` caches its result and reason for the process; `status()` reports without building anything.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

SOURCES = ("embed_kernel.cu", "embed_binding.cpp")
HEADERS = ("embed_kernel.h",)
JIT_NAME = "rembert_fast_C"  # the module name of the JIT build (its TORCH_EXTENSION_NAME)
BUILD_ENV = "REMBERT_FAST_BUILD_CUDA"  # 0: no first-use build; 1: build even after a recorded failure
FAILED_BUILD = "build-failed.txt"  # in a build directory: why its last build failed

_logger = logging.getLogger("rembert_fast")
_lock = threading.Lock()
_loaded: tuple[ModuleType | None, str] | None = None  # load()'s result and reason, once known


def source_dir() -> Path | None:
    """The directory holding the extension's sources: the package's csrc/ (wheel) or the checkout's."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if all((candidate / name).is_file() for name in SOURCES + HEADERS):
            return candidate
    return None


def _source_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode())
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()[:16]


def _arch_tag() -> str:
    """The GPU architectures a JIT build targets: TORCH_CUDA_ARCH_LIST, else every visible device's."""
    requested = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if requested:
        return "arch" + "".join(c if c.isalnum() else "_" for c in requested)
    capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return "sm" + "-".join(f"{major}{minor}" for major, minor in sorted(capabilities))


def cache_dir(directory: Path) -> Path:
    """Where the JIT build of the sources in `directory` goes (needs a CUDA device for the arch tag)."""
    root = os.environ.get("REMBERT_FAST_CACHE")
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "rembert_fast")
    tag = (f"torch{torch.__version__}-cuda{torch.version.cuda}-{_arch_tag()}-"
           f"{sys.implementation.cache_tag}-{_source_hash(directory)}")
    return Path(root).expanduser() / tag


def _no_cuda_reason() -> str | None:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def _prebuilt() -> tuple[ModuleType | None, str | None]:
    """(module, None) if setup.py built rembert_fast._C; (None, why) if it exists but fails to import."""
    try:
        return importlib.import_module("rembert_fast._C"), None
    except ModuleNotFoundError as err:
        if err.name == "rembert_fast._C":
            return None, None
        return None, f"rembert_fast._C failed to import: {err}"
    except ImportError as err:  # built against another torch: undefined symbols and the like
        return None, f"rembert_fast._C failed to import: {err}"


def _has_cuda_headers(root: Path) -> bool:
    return (root / "include" / "cuda_runtime.h").is_file()


@functools.lru_cache(maxsize=1)
def _nvcc_toolkit_root() -> Path | None:
    """The toolkit the nvcc on PATH belongs to, as nvcc itself names it (`nvcc --dryrun` prints TOP=)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    top = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    return Path(top.group(1).strip()).resolve() if top else None


def cuda_toolkit_root() -> str | None:
    """The CUDA toolkit to compile with: torch's CUDA_HOME, corrected where it holds no CUDA headers.

    torch.utils.cpp_extension takes $CUDA_HOME or $CUDA_PATH, else the directory above the bin/ of the
    nvcc on PATH. An nvcc that is a wrapper script outside the toolkit (/usr/local/bin/nvcc running
    /usr/local/cuda-13.0/bin/nvcc) turns that guess into /usr/local, and every compile then fails on a
    missing cuda_runtime.h; nvcc itself knows its toolkit, so it is asked. An explicit $CUDA_HOME or
    $CUDA_PATH is kept as given. None where torch has no CUDA or no toolkit is found.
    """
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None or explicit or _has_cuda_headers(Path(home)):
        return home
    root = _nvcc_toolkit_root()
    return str(root) if root is not None and _has_cuda_headers(root) else home


def use_cuda_toolkit() -> str | None:
    """Point torch's extension builder at `cuda_toolkit_root()` and return it.

    torch reads the toolkit from its module global CUDA_HOME (set at import) whenever it builds, so the
    correction is made there; $CUDA_HOME is set too, for the compiler processes and later imports.
    """
    from torch.utils import cpp_extension

    root = cuda_toolkit_root()
    if root is not None and root != cpp_extension.CUDA_HOME:
        _logger.info("rembert_fast: compiling with the CUDA toolkit in %s (torch guessed %s)", root,
                     cpp_extension.CUDA_HOME)
        cpp_extension.CUDA_HOME = root
        os.environ["CUDA_HOME"] = root
    return root


def build_mode() -> str:
    """"auto", "off" or "on" from $REMBERT_FAST_BUILD_CUDA (unset or empty, 0, 1), as setup.py reads it.
    ValueError names any other value."""
    value = os.environ.get(BUILD_ENV, "").strip()
    modes = {"": "auto", "0": "off", "1": "on"}
    if value not in modes:
        raise ValueError(f"{BUILD_ENV}={value!r} is not understood; use 1 (build), 0 (skip) or unset")
    return modes[value]


def recorded_failure(build_dir: Path) -> str | None:
    """Why the last build into `build_dir` failed, where one failed and $REMBERT_FAST_BUILD_CUDA is not 1
    (a reason naming the record and how to try again), else None."""
    record = build_dir / FAILED_BUILD
    if build_mode() == "on" or not record.is_file():
        return None
    try:
        said = record.read_text(errors="replace").strip().splitlines()
    except OSError:
        said = []
    return (f"an earlier build of the extension failed ({said[0] if said else 'no reason recorded'}); "
            f"not compiled again: {BUILD_ENV}=1 tries again (or delete {record})")


def _jit_blocker() -> tuple[Path | None, str | None]:
    """(sources, None) when a JIT build can be attempted, else (None, why not)."""
    from torch.utils import cpp_extension

    if build_mode() == "off":
        return None, f"{BUILD_ENV}=0: the extension is not compiled on first use either"
    home = cuda_toolkit_root()
    if home is None:
        return None, "no CUDA toolkit found to compile the extension (set CUDA_HOME or put nvcc on PATH)"
    if not _has_cuda_headers(Path(home)):
        return None, f"CUDA_HOME={home} has no include/cuda_runtime.h; set CUDA_HOME to the toolkit's root"
    if not cpp_extension.is_ninja_available():
        return None, "ninja is not installed, so the extension cannot be compiled (pip install ninja)"
    directory = source_dir()
    if directory is None:
        return None, f"the extension's sources {SOURCES + HEADERS} are not installed beside {__file__}"
    failed = recorded_failure(cache_dir(directory))
    if failed is not None:
        return None, failed
    return directory, None


def _build() -> tuple[ModuleType | None, str]:
    reason = _no_cuda_reason()
    if reason is not None:
        return None, reason
    module, prebuilt_error = _prebuilt()
    if module is not None:
        return module, "prebuilt rembert_fast._C"
    directory, reason = _jit_blocker()
    if directory is None:
        return None, reason if prebuilt_error is None else f"{prebuilt_error}; {reason}"
    return compile_jit(directory)


def compile_jit(directory: Path) -> tuple[ModuleType | None, str]:
    """JIT-compile the sources in `directory` into `cache_dir(directory)` and import the module.

    (module, where from) or (None, why not). Needs no GPU where $TORCH_CUDA_ARCH_LIST names the
    architectures; `load()` calls it only when a device is visible and no prebuilt module imports.
    Waits while another process builds into the same directory, then loads its build, or returns the
    failure it recorded; records its own failure for the next processes (`recorded_failure`).
    """
    import fcntl

    from torch.utils import cpp_extension

    use_cuda_toolkit()
    build_dir = cache_dir(directory)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        lock = open(build_dir / "rembert_fast.lock", "a")  # held, and closed, by the block below
    except OSError as err:
        return None, f"the extension's build directory {build_dir} cannot be written: {err}"
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
        failed = recorded_failure(build_dir)
        if failed is not None:  # the build this process waited for failed
            return None, failed
        # Every builder holds the lock above first, so torch's own lock file is a killed build's: left
        # there, torch would wait for it forever.
        (build_dir / "lock").unlink(missing_ok=True)
        _logger.warning("rembert_fast: compiling the CUDA extension into %s (once; about a minute)",
                        build_dir)
        try:
            module = cpp_extension.load(
                name=JIT_NAME,
                sources=[str(directory / name) for name in SOURCES],
                extra_include_paths=[str(directory)],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                build_directory=str(build_dir),
                verbose=False,
            )
        except Exception as err:  # a compiler or linker failure surfaces as any of several types
            reason = f"compiling the CUDA extension in {build_dir} failed: {type(err).__name__}: {err}"
            with contextlib.suppress(OSError):  # unrecorded, the next process tries again
                (build_dir / FAILED_BUILD).write_text(reason + "\n")
            return None, reason
        with contextlib.suppress(OSError):
            (build_dir / FAILED_BUILD).unlink(missing_ok=True)
    return module, f"JIT-compiled extension from {build_dir}"


def load() -> ModuleType | None:
    """The extension module, or None where it cannot be had (`status()` says why). Cached per process."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _build()
        return _loaded[0]


def status() -> tuple[bool, str]:
    """(available, reason) without compiling: `load()`'s outcome once known, else what it would do (a
    prebuilt `rembert_fast._C` counts as available only once it imports)."""
    if _loaded is not None:
        return _loaded[0] is not None, _loaded[1]
    reason = _no_cuda_reason()
    if reason is not None:
        return False, reason
    # Imported, not only found: a module built against another torch fails only here (undefined symbols).
    module, prebuilt_error = _prebuilt()
    if module is not None:
        return True, "prebuilt rembert_fast._C"
    not_prebuilt = "" if prebuilt_error is None else f"{prebuilt_error}; "
    directory, reason = _jit_blocker()
    if directory is None:
        return False, f"{not_prebuilt}{reason}"
    build_dir = cache_dir(directory)
    if any(build_dir.glob(f"{JIT_NAME}*.so")):
        return True, f"{not_prebuilt}JIT-compiled extension cached in {build_dir} (not loaded yet)"
    return True, f"{not_prebuilt}not compiled yet: built with nvcc on first GPU use into {build_dir}"


def embed(
    module: ModuleType,  # what load() returned
    input_ids: torch.Tensor,  # (...) int64/int32, CUDA
    position_ids: torch.Tensor,  # (...) int64/int32
    token_type_ids: torch.Tensor,  # (...) int64/int32
    word_weight: torch.Tensor,  # (vocab, E) contiguous; every weight in one dtype
    position_weight: torch.Tensor,  # (max_positions, E) contiguous
    type_weight: torch.Tensor,  # (type_vocab, E) contiguous
    ln_weight: torch.Tensor,  # (E,)
    ln_bias: torch.Tensor,  # (E,)
    eps: float,
    proj_weight: torch.Tensor | None = None,  # (hidden, E)
    proj_bias: torch.Tensor | None = None,  # (hidden,)
    *,
    check_ids: bool = True,  # False: no host sync; bad ids then give zero rows instead of ValueError
) -> torch.Tensor:
    """`ops.embed` on the extension: (..., E or hidden) in the weights' dtype.

    Ids are validated in the kernel; with `check_ids` (the default) an out-of-range id raises ValueError
    naming it, at the cost of one 8-byte device-to-host copy that waits for the kernel. Callers that
    validated the ids already (or capture CUDA graphs) pass check_ids=False to keep the call asynchronous.
    """
    return module.embed(input_ids, position_ids, token_type_ids, word_weight, position_weight, type_weight,
                        ln_weight, ln_bias, float(eps), proj_weight, proj_bias, check_ids)
