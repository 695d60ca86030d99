"""The layers of docs/architecture.md are import-linter contracts (pyproject.toml, `[tool.importlinter]`)
that CI checks with `lint-imports`: they hold for this tree, and an import that breaks one (at module
level or inside a function) makes `lint-imports` fail, naming it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parent.parent


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """`lint-imports` run on the copy of the package in `tree`, with the project's contracts."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                               "sys.exit(lint_imports_command())", "--no-cache"],
        cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the package's sources and the contracts, to add forbidden imports to."""
    copy = tmp_path_factory.mktemp("contracts")
    shutil.copytree(ROOT / "rembert_fast", copy / "rembert_fast",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "csrc"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_tree_keeps_every_contract(tree):
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("kernels/layer_norm.py", "from rembert_fast import ops",
     "rembert_fast.kernels.layer_norm -> rembert_fast.ops"),
    # inside a function: still an import the contracts see
    ("ops/dispatch.py", "def _late():\n    from rembert_fast import packed\n",
     "rembert_fast.ops.dispatch -> rembert_fast.packed"),
    ("tokenization/base.py", "from rembert_fast import configuration",
     "rembert_fast.tokenization.base -> rembert_fast.configuration"),
    ("inference/engine.py", "def _late():\n    from rembert_fast.integrations import ray\n",
     "rembert_fast.inference.engine -> rembert_fast.integrations.ray"),
    ("packed.py", "from rembert_fast import modeling", "rembert_fast.packed -> rembert_fast.modeling"),
    ("hub.py", "def _late():\n    from rembert_fast import checkpoint\n",
     "rembert_fast.hub -> rembert_fast.checkpoint"),
    ("ops/registry.py", "def _late():\n    from rembert_fast.ops import dispatch\n",
     "No cycles are allowed in rembert_fast.ops"),  # a cycle inside ops/
])
def test_a_forbidden_import_breaks_lint_imports(tree, module, line, broken):
    path = tree / "rembert_fast" / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}\n")
    try:
        result = _lint(tree)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout, result.stdout
