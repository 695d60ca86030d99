"""extension.status(): what `rembert-fast doctor` reports for the CUDA extension, decided without a GPU.

A prebuilt `rembert_fast._C` is available only when it imports: one built against another torch is
found by the import system but fails to load (undefined symbols), and must be reported as such, with
what `load()` would do instead. CUDA's presence is stood in for, so these run on any machine.
"""

from __future__ import annotations

import sys

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
