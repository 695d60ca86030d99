"""The nvcc gate: the CUDA extension's sources compile on a machine without a GPU.

Every csrc/*.cu file compiles with the machine's nvcc for sm_80 and sm_90, as C++17 and C++20, with
the half/bfloat16 macros torch's extension builds define, so the kernel cannot lean on implicit half
conversions. The binding (csrc/*.cpp) gets a g++ -std=c++20 -fsyntax-only pass (as torch 2.13 builds
it) against torch's headers and CUDA's: the CPU torch wheel ships ATen/ and c10/cuda/ headers but not
the generated c10/cuda/impl/cuda_cmake_macros.h (it only sets the Windows export macro), so the check
defines C10_CUDA_NO_CMAKE_CONFIGURE_FILE when that file is missing. The binding includes only c10/cuda
headers (CUDAGuard, CUDAStream), not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers a
bare CUDA toolkit may lack. Skipped only where nvcc (or g++ for the binding) is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension

CSRC = Path(__file__).resolve().parents[1] / "csrc"
NVCC = shutil.which("nvcc")
# torch's BuildExtension adds these to every nvcc command.
TORCH_NVCC_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


def _cuda_include_dir() -> Path:
    """CUDA's include directory, asked of nvcc itself (it may be a wrapper script outside the toolkit)."""
    dry = subprocess.run([NVCC, "--dryrun", "-c", "-x", "cu", "/dev/null"], capture_output=True, text=True)
    top = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    assert top is not None, f"nvcc --dryrun did not name its toolkit:\n{dry.stderr}"
    root = Path(top.group(1).strip())
    for candidate in (root / "include", *sorted((root / "targets").glob("*/include"))):
        if (candidate / "cuda_runtime.h").is_file():
            return candidate
    raise AssertionError(f"cuda_runtime.h not found under {root}")


def test_there_are_sources() -> None:
    assert sorted(p.name for p in CSRC.glob("*.cu")) == ["embed_kernel.cu"]
    assert sorted(p.name for p in CSRC.glob("*.cpp")) == ["embed_binding.cpp"]


@needs_nvcc
@pytest.mark.parametrize("standard", ["c++17", "c++20"])  # the kernel's floor; torch 2.13 builds C++20
@pytest.mark.parametrize("source", sorted(CSRC.glob("*.cu")), ids=lambda p: p.name)
def test_cu_compiles_for_sm80_and_sm90(source: Path, standard: str, tmp_path: Path) -> None:
    obj = tmp_path / (source.stem + ".o")
    command = [
        NVCC, "-c", f"-std={standard}", "-O3",
        "-gencode", "arch=compute_80,code=sm_80",
        "-gencode", "arch=compute_90,code=sm_90",
        *TORCH_NVCC_DEFINES, f"-I{CSRC}", str(source), "-o", str(obj),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr}"
    assert obj.stat().st_size > 0
    assert "warning" not in proc.stderr.lower(), proc.stderr


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
@pytest.mark.parametrize("source", sorted(CSRC.glob("*.cpp")), ids=lambda p: p.name)
def test_binding_passes_a_syntax_check(source: Path) -> None:
    torch_includes = torch.utils.cpp_extension.include_paths()
    torch_root = Path(torch_includes[0])
    assert (torch_root / "c10" / "cuda" / "CUDAGuard.h").is_file(), "torch ships no c10/cuda headers"
    defines = ["-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    if not (torch_root / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").is_file():
        defines.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    system = [*torch_includes, str(_cuda_include_dir()), sysconfig.get_paths()["include"]]
    command = [
        "g++", "-fsyntax-only", "-std=c++20", "-Wall", "-Wextra", "-Werror", *defines, f"-I{CSRC}",
        *(arg for path in system for arg in ("-isystem", path)), str(source),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stderr}"
