"""The repository root shadows no installed package: Python run from a checkout imports the real ones.

`python -m pytest`, `python -c` and a REPL started in the repository root put that root first on
`sys.path`, so a top-level folder or module there wins over an installed package of the same name.
transformers 5 imports Hugging Face's `kernels` package; the Triton sources therefore live in
`rembert_fast/kernels/` (architecture: Layers). The wheel and the sdist carry them there.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_IMPORTED = {"build", "dist", "out"}  # build and bench outputs, ignored by git

RESOLVE_KERNELS = """
import importlib.util, json, sys
spec = importlib.util.find_spec("kernels")
if spec is None:
    print(json.dumps(None))
    sys.exit(0)
import kernels
print(json.dumps({"file": getattr(kernels, "__file__", None),
                  "path": [str(p) for p in getattr(kernels, "__path__", [])]}))
if importlib.util.find_spec("transformers") is not None:
    import transformers.activations  # imports Hugging Face's kernels (its hub_kernels integration)
"""


def _under_root(path: str | None) -> bool:
    """Whether `path` is the checkout's own file (a virtual environment inside the checkout is not)."""
    if path is None or not Path(path).resolve().is_relative_to(ROOT):
        return False
    return "site-packages" not in Path(path).resolve().relative_to(ROOT).parts


def test_kernels_imported_from_the_repository_root_is_never_the_project_folder():
    proc = subprocess.run([sys.executable, "-c", RESOLVE_KERNELS], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[0])
    if found is None:  # Hugging Face's kernels is not installed: a clean ImportError, no namespace package
        return
    assert not _under_root(found["file"]), found
    assert not any(_under_root(p) for p in found["path"]), found


def _importable_top_level_names() -> list[str]:
    names = []
    for entry in ROOT.iterdir():
        skipped = entry.name in NOT_IMPORTED or entry.name.endswith(".egg-info")
        if skipped or entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            names.append(entry.name)  # a folder imports as a (namespace) package, __init__.py or not
        elif entry.suffix == ".py":
            names.append(entry.stem)
    return names


def test_no_top_level_name_is_a_name_an_installed_distribution_provides():
    provided = importlib.metadata.packages_distributions()
    clashes = {name: provided[name] for name in _importable_top_level_names()
               if name in provided and name != "rembert_fast"}
    assert clashes == {}, f"top-level names of the repository shadow installed packages: {clashes}"


@pytest.mark.slow
def test_the_wheel_carries_the_kernels_inside_the_package(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "REMBERT_FAST_BUILD_CUDA": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("rembert_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    kernel_sources = {Path(p).name for p in (ROOT / "rembert_fast" / "kernels").glob("*.py")}
    assert {Path(n).name for n in names if n.startswith("rembert_fast/kernels/")} >= kernel_sources
    assert not [n for n in names if n.split("/")[0] == "kernels"]
    assert {f"rembert_fast/csrc/{p.name}" for p in (ROOT / "csrc").iterdir()} <= set(names)
