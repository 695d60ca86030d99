"""setup.py: a failure to build the optional CUDA extension installs the package without it, saying why.

torch's `BuildExtension.build_extensions` checks nvcc against torch's CUDA (`_check_cuda_version`)
before any compile; that check's RuntimeError, like a compile failure, must not fail the install of
the Python package when the extension is optional (REMBERT_FAST_BUILD_CUDA unset), and must fail it
when the extension is required (REMBERT_FAST_BUILD_CUDA=1). The build runs here against a stand-in
for the check, so no CUDA toolkit is needed.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension
from setuptools import Distribution, Extension

ROOT = Path(__file__).resolve().parents[1]
MISMATCH = "The detected CUDA version (13.0) mismatches the version that was used to compile PyTorch (12.8)"


def _build_ext(tmp_path: Path, optional: bool):
    """setup.py's build_ext command, finalised for one extension made of csrc/'s sources."""
    setup = runpy.run_path(str(ROOT / "setup.py"), run_name="setup_probe")  # defines, runs nothing
    sources = [str(p) for p in sorted((ROOT / "csrc").iterdir()) if p.suffix in (".cu", ".cpp")]
    extensions = [Extension("rembert_fast._C", sources=sources, optional=optional)]
    dist = Distribution({"name": "rembert_fast", "ext_modules": extensions,
                         "cmdclass": setup["get_cmdclass"](extensions)})
    command = dist.get_command_obj("build_ext")
    command.build_lib, command.build_temp = str(tmp_path / "lib"), str(tmp_path / "temp")
    command.ensure_finalized()
    return command


@pytest.fixture
def cuda_version_mismatch(monkeypatch):
    def check(compiler_name, compiler_version):
        raise RuntimeError(MISMATCH)

    monkeypatch.setattr(cpp_extension, "_check_cuda_version", check)


def test_a_failed_cuda_version_check_builds_without_the_optional_extension(tmp_path, capsys,
                                                                             cuda_version_mismatch):
    command = _build_ext(tmp_path, optional=True)
    command.run()
    out = capsys.readouterr().out
    assert "building without the CUDA extension rembert_fast._C (RuntimeError: " in out
    assert MISMATCH in out and "installs without it" in out
    assert command.get_outputs() == [] and not (tmp_path / "lib").exists()


def test_a_failed_cuda_version_check_fails_a_required_extension(tmp_path, cuda_version_mismatch):
    command = _build_ext(tmp_path, optional=False)
    with pytest.raises(RuntimeError, match="mismatches the version"):
        command.run()


def test_the_torch_floor_has_every_api_the_package_calls():
    """torch.nonzero_static runs on CUDA from torch 2.6 (unpad_input calls it on the model's device);
    torch.library.custom_op and register_fake need 2.4. The declared floor must exclude older torch."""
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [torch_requirement] = [Requirement(d) for d in dependencies if Requirement(d).name == "torch"]
    assert not torch_requirement.specifier.contains("2.5.1")
    assert torch_requirement.specifier.contains("2.6.0")
