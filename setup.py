"""Build script: the Python package always; the CUDA extension `rembert_fast._C` only where it can be built.

Set REMBERT_FAST_BUILD_CUDA=1 to require the extension (the build fails if it cannot be made) or 0
to skip it. Without the variable it is built when torch has CUDA and nvcc is found, and skipped
otherwise or when building it fails in any way (torch's nvcc/compiler version checks included), with a
message saying why (it is then compiled on first GPU use, or the eager op is used): the package itself
always installs.

pip builds in an isolated environment without torch unless told `--no-build-isolation`; there the
extension is skipped (REMBERT_FAST_BUILD_CUDA=1 says so and fails). The C++/CUDA sources are shipped
inside the package (`rembert_fast/csrc/`) either way, so the first-use compilation also works from a wheel.
Architectures: TORCH_CUDA_ARCH_LIST when set, else sm_80 and sm_90 plus compute_90 PTX for newer GPUs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
SOURCE_SUFFIXES = (".cu", ".cpp", ".h")
BUILD_ENV = "REMBERT_FAST_BUILD_CUDA"
DEFAULT_GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]
WITHOUT_EXTENSION = ("; rembert_fast installs without it "
                     "(it is compiled on first GPU use, or the eager op is used)")


def _build_mode() -> str:
    """'auto', 'off' or 'on' from $REMBERT_FAST_BUILD_CUDA (unset/empty, 0, 1)."""
    value = os.environ.get(BUILD_ENV, "").strip()
    modes = {"": "auto", "0": "off", "1": "on"}
    if value not in modes:
        raise ValueError(f"{BUILD_ENV}={value!r} is not understood; use 1 (build), 0 (skip) or unset")
    return modes[value]


def _cannot_build_reason() -> str | None:
    """Why the CUDA extension cannot be built in this environment, or None when it can."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as err:
        return (f"torch is not importable at build time ({err}); "
                "install torch first and build with `pip install --no-build-isolation`")
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    _package_extension_module().use_cuda_toolkit()  # an nvcc wrapper on PATH misleads torch's guess
    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    nvcc = Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"
    if not nvcc.exists():
        return f"nvcc not found at {nvcc}"
    if not (Path(cpp_extension.CUDA_HOME) / "include" / "cuda_runtime.h").is_file():
        return (f"CUDA_HOME={cpp_extension.CUDA_HOME} has no include/cuda_runtime.h; "
                "set CUDA_HOME to the toolkit's root")
    return None


def _package_extension_module():
    """rembert_fast/extension.py loaded by path: its toolkit lookup, without importing the package."""
    path = ROOT / "rembert_fast" / "extension.py"
    spec = importlib.util.spec_from_file_location("_rembert_fast_extension", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sources() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in CSRC.iterdir() if p.suffix in (".cu", ".cpp"))


def get_extensions() -> list:
    """[CUDAExtension('rembert_fast._C')] where it can (or must) be built, else []."""
    mode = _build_mode()
    if mode == "off":
        return []
    reason = _cannot_build_reason()
    if reason is not None:
        if mode == "on":
            raise RuntimeError(f"{BUILD_ENV}=1 but the CUDA extension cannot be built: {reason}")
        print(f"rembert_fast: skipping the CUDA extension ({reason}); it is compiled on first GPU use")
        return []
    from torch.utils.cpp_extension import CUDAExtension

    # torch adds flags for TORCH_CUDA_ARCH_LIST itself unless -gencode is already present.
    gencode = [] if os.environ.get("TORCH_CUDA_ARCH_LIST") else DEFAULT_GENCODE
    return [
        CUDAExtension(
            name="rembert_fast._C",
            sources=_sources(),
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", *gencode]},  # torch picks the C++ standard
            optional=mode == "auto",  # setuptools then warns about a failed compile and goes on
        )
    ]


class BuildPyWithSources(build_py):
    """build_py that also copies csrc/ into the built package, so a wheel can compile on first use."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads csrc/ from the checkout
            return
        target = Path(self.build_lib) / "rembert_fast" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        for source in CSRC.iterdir():
            if source.suffix in SOURCE_SUFFIXES:
                shutil.copy2(source, target / source.name)


def get_cmdclass(extensions: list) -> dict:
    cmdclass: dict = {"build_py": BuildPyWithSources}
    if extensions:
        from setuptools.errors import CompileError
        from torch.utils.cpp_extension import BuildExtension

        class BuildExtensionReportingCompileErrors(BuildExtension.with_options(use_ninja=True)):
            """torch's BuildExtension that, for an optional extension, turns any failure to build it into
            "install without it, and say why": its compile failures (RuntimeError from ninja) are raised
            as the CompileError setuptools tolerates, and a failure before any compile (torch's CUDA and
            compiler version checks in build_extensions: RuntimeError, OSError, ValueError) drops it."""

            def build_extensions(self) -> None:
                try:
                    super().build_extensions()
                except Exception as err:
                    if not all(ext.optional for ext in self.extensions):
                        raise
                    names = ", ".join(ext.name for ext in self.extensions)
                    print(f"rembert_fast: building without the CUDA extension {names} "
                          f"({type(err).__name__}: {err}){WITHOUT_EXTENSION}")
                    self.extensions = []  # nothing built: nothing for the install to copy

            def build_extension(self, ext) -> None:
                try:
                    super().build_extension(ext)
                except RuntimeError as err:
                    hint = WITHOUT_EXTENSION if ext.optional else ""
                    raise CompileError(f"{err}{hint}") from err

        cmdclass["build_ext"] = BuildExtensionReportingCompileErrors
    return cmdclass


if __name__ == "__main__":
    extensions = get_extensions()
    setup(ext_modules=extensions, cmdclass=get_cmdclass(extensions))
