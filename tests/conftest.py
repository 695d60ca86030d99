"""Test setup shared by every test file.

Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before any
kernel module is imported (triton reads it when `@triton.jit` decorates). Tests run on the eager
backend unless they ask for another (`use_backend("triton")`), so model tests stay fast on CPU. The
probe-before-use of `auto` is off (tests count kernel calls and must not write the user's cache);
tests/test_ops_tuning.py turns it on with a private cache directory.

Test files import the shared pieces from here (`from conftest import DEVICE, ...`): the device the
kernels run on, the skip mark for tests that need Triton, and the accuracy rule for reduced precision.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("REMBERT_FAST_BACKEND", "eager")
os.environ.setdefault("REMBERT_FAST_TUNE", "off")

import pytest  # noqa: E402

from rembert_fast import ops  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU, else the Triton interpreter on CPU
needs_triton = pytest.mark.skipif(not ops.triton_status()[0],
                                  reason="needs Triton (CUDA, or TRITON_INTERPRET=1 on CPU)")


def assert_within_twice_eager(
    out: torch.Tensor,  # the fused result, in a reduced precision
    truth: torch.Tensor,  # the float64 (or fp32) reference on the same inputs
    eager: torch.Tensor,  # eager PyTorch on the same inputs in out's dtype
    floor: float | None = None,  # default: half an ulp of out's dtype at the largest |truth|
    what: str = "",
) -> float:
    """The reduced-precision rule: the fused result's max error against the reference is at most twice
    eager PyTorch's in the same dtype, plus a floor. The default floor is the one error a correct
    kernel cannot avoid, rounding its exact result to the output dtype once; without it, where eager
    happens to be exact, twice zero would demand more than correct rounding. Returns the error."""
    err = (out.double() - truth.double()).abs().max().item()
    eager_err = (eager.double() - truth.double()).abs().max().item()
    if floor is None:
        floor = 0.5 * torch.finfo(out.dtype).eps * truth.abs().max().item()
    assert err <= 2 * eager_err + floor, \
        f"{what} {out.dtype}: error {err:.3g}, eager {eager_err:.3g}, floor {floor:.3g}"
    return err


def auto_tuning(monkeypatch, cache_dir) -> None:
    """`auto` dispatch with the probe-before-use on, a private tuning cache in `cache_dir`, and no
    decision, verdict or choice held (all restored when the test ends)."""
    from rembert_fast.ops import dispatch, tuning

    monkeypatch.setenv("REMBERT_FAST_BACKEND", "auto")
    monkeypatch.setenv("REMBERT_FAST_CACHE", str(cache_dir))
    monkeypatch.delenv("REMBERT_FAST_TUNE", raising=False)
    monkeypatch.setattr(dispatch, "_decisions", {})
    monkeypatch.setattr(dispatch, "_choices", {})
    tuning.reset()


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
