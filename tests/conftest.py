"""Test setup shared by every test file.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before any
kernel module is imported (triton reads it when `@triton.jit` decorates). Tests run on the eager
backend unless they ask for another (`use_backend("triton")`), so model tests stay fast on CPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("REMBERT_FAST_BACKEND", "eager")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


_SUMMARY_LINES = pytest.StashKey[list]()


@pytest.fixture
def report_in_summary(request):
    """Append lines to a section printed at the end of the run (CI's log shows the smoke benchmark)."""
    lines = request.config.stash.setdefault(_SUMMARY_LINES, [])
    return lines.append


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(_SUMMARY_LINES, [])
    if lines:
        terminalreporter.write_sep("-", "CPU smoke benchmark (reported, not asserted)")
        for line in lines:
            terminalreporter.write_line(line)
