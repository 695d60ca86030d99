"""extension.status(): what `rembert-fast doctor` reports for the CUDA extension, decided without a GPU.

A prebuilt `rembert_fast._C` is available only when it imports: one built against another torch is
found by the import system but fails to load (undefined symbols), and must be reported as such, with
what `load()` would do instead. CUDA's presence is stood in for, so these run on any machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import rembert_fast
from rembert_fast import extension


@pytest.fixture
def cuda_present(monkeypatch):
    monkeypatch.setattr(extension, "_loaded", None)
    monkeypatch.setattr(extension, "_no_cuda_reason", lambda: None)
    monkeypatch.delitem(sys.modules, "rembert_fast._C", raising=False)


def _prebuilt_module(monkeypatch, tmp_path, body: str) -> None:
    """A `rembert_fast._C` the import system finds, made of `body`."""
    (tmp_path / "_C.py").write_text(body)
    monkeypatch.setattr(rembert_fast, "__path__", [*rembert_fast.__path__, str(tmp_path)])


def test_a_prebuilt_module_that_fails_to_import_is_not_available(monkeypatch, tmp_path, cuda_present):
    symbol = "undefined symbol: _ZN3c1017RegisterOperatorsD1Ev"
    _prebuilt_module(monkeypatch, tmp_path, f"raise ImportError({symbol!r})\n")
    monkeypatch.setattr(extension, "_jit_blocker", lambda: (None, "nvcc was not found"))
    available, reason = extension.status()
    assert not available
    assert reason == f"rembert_fast._C failed to import: {symbol}; nvcc was not found"


def test_a_broken_prebuilt_module_names_the_first_use_build_instead(monkeypatch, tmp_path, cuda_present):
    _prebuilt_module(monkeypatch, tmp_path, "raise ImportError('undefined symbol: x')\n")
    monkeypatch.setattr(extension, "_jit_blocker", lambda: (tmp_path, None))
    monkeypatch.setattr(extension, "cache_dir", lambda directory: tmp_path / "cache")
    available, reason = extension.status()
    assert available and reason.startswith("rembert_fast._C failed to import: undefined symbol: x; ")
    assert "not compiled yet" in reason


def test_a_prebuilt_module_that_imports_is_available(monkeypatch, tmp_path, cuda_present):
    _prebuilt_module(monkeypatch, tmp_path, "def embed_forward(*args):\n    raise AssertionError\n")
    assert extension.status() == (True, "prebuilt rembert_fast._C")


@pytest.fixture
def jit_ready(monkeypatch, tmp_path, cuda_present):
    """A first-use build that can be attempted: a toolkit with headers, ninja, the sources, an arch list
    (no device to read it from), a private cache; torch's builder replaced by the test's."""
    from torch.utils import cpp_extension

    toolkit = tmp_path / "cuda"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    monkeypatch.setattr(extension, "cuda_toolkit_root", lambda: str(toolkit))
    monkeypatch.setattr(extension, "use_cuda_toolkit", lambda: str(toolkit))
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setenv("REMBERT_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.delenv("REMBERT_FAST_BUILD_CUDA", raising=False)
    builds = []

    def build(outcome):
        def load(name, sources, build_directory, **kwargs):
            builds.append(build_directory)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        monkeypatch.setattr(cpp_extension, "load", load)

    return build, builds


def _new_process(monkeypatch):
    monkeypatch.setattr(extension, "_loaded", None)


def test_a_failed_build_is_not_tried_again_by_later_processes(monkeypatch, jit_ready):
    """A compile error costs a minute: the next processes (a test worker, a benchmark) report it instead of
    compiling again, until REMBERT_FAST_BUILD_CUDA=1 asks for another try."""
    build, builds = jit_ready
    build(RuntimeError("Error building extension 'rembert_fast_C': nvcc fatal: unsupported gpu architecture"))
    assert extension.load() is None
    assert "nvcc fatal: unsupported gpu architecture" in extension.status()[1] and len(builds) == 1
    for _ in range(2):
        _new_process(monkeypatch)
        assert extension.status()[0] is False
        assert extension.load() is None
        reason = extension.status()[1]
        assert reason.startswith("an earlier build of the extension failed (compiling the CUDA extension in ")
        assert "nvcc fatal" in reason and "REMBERT_FAST_BUILD_CUDA=1 tries again" in reason
    assert len(builds) == 1
    module = object()
    build(module)
    monkeypatch.setenv("REMBERT_FAST_BUILD_CUDA", "1")
    _new_process(monkeypatch)
    assert extension.load() is module and len(builds) == 2
    monkeypatch.delenv("REMBERT_FAST_BUILD_CUDA")
    _new_process(monkeypatch)  # the record went with the successful build
    assert extension.load() is module and len(builds) == 3


def test_build_switch_off_means_no_first_use_build_either(monkeypatch, jit_ready):
    build, builds = jit_ready
    build(object())
    monkeypatch.setenv("REMBERT_FAST_BUILD_CUDA", "0")
    assert extension.status() == (False, "REMBERT_FAST_BUILD_CUDA=0: the extension is not compiled on first "
                                         "use either")
    assert extension.load() is None and builds == []
    monkeypatch.setenv("REMBERT_FAST_BUILD_CUDA", "yes")
    _new_process(monkeypatch)
    with pytest.raises(ValueError, match="REMBERT_FAST_BUILD_CUDA='yes' is not understood"):
        extension.load()


def test_a_lock_left_by_a_killed_build_does_not_stall_the_next(monkeypatch, jit_ready):
    """torch's builder waits for its lock file while it exists; one killed mid-build leaves it behind."""
    from torch.utils.file_baton import FileBaton

    build, builds = jit_ready
    module = object()
    build_dir = extension.cache_dir(extension.source_dir())
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")  # what a build killed by its time limit leaves

    def load_as_torch_does(name, sources, build_directory, **kwargs):
        baton = FileBaton(str(Path(build_directory) / "lock"))
        if not baton.try_acquire():
            pytest.fail("torch would wait here for a lock no process holds")
        baton.release()
        builds.append(build_directory)
        return module

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", load_as_torch_does)
    assert extension.load() is module and builds == [str(build_dir)]


def test_an_unwritable_build_directory_gives_a_reason_not_a_crash(monkeypatch, jit_ready, tmp_path):
    build, builds = jit_ready
    build(object())
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    assert extension.load() is None and builds == []
    assert "build directory" in extension.status()[1] and "cannot be written" in extension.status()[1]
