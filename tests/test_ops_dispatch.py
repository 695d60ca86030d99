"""Backend resolution: `dispatch.backend_for` decides once per (op, device type, dtype, request), and a
`use_backend` block (entered, left, or active in another thread) or a new $REMBERT_FAST_BACKEND
selects another decision at once. Autograd is decided per call."""

import threading

import pytest
import torch
from conftest import needs_triton

from rembert_fast import ops
from rembert_fast.ops import dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def decisions(monkeypatch):
    """Count the decisions actually taken (not served from the cache), on an empty cache."""
    monkeypatch.setattr(dispatch, "_decisions", {})
    monkeypatch.setattr(dispatch, "_choices", {})
    taken = []
    real = dispatch._decide

    def counting(op, device_type, requested):
        taken.append((op, device_type, requested))
        return real(op, device_type, requested)

    monkeypatch.setattr(dispatch, "_decide", counting)
    return taken


def _layer_norm(x):
    n = x.shape[-1]
    return ops.layer_norm(x, torch.ones(n, dtype=x.dtype), torch.zeros(n, dtype=x.dtype), 1e-12)


def test_decided_once_per_op_device_dtype_and_request(decisions):
    x = torch.randn(3, 8)
    with ops.use_backend("eager"):
        for _ in range(5):
            _layer_norm(x)
        _layer_norm(x.half())  # another dtype: another decision
        ops.bias_act(x, None, "relu")
    assert decisions == [("layer_norm", "cpu", "eager"), ("layer_norm", "cpu", "eager"),
                         ("bias_act[relu]", "cpu", "eager")]  # bias_act: decided per activation


@needs_triton
def test_use_backend_entered_and_left_switches_at_once(decisions, monkeypatch):
    monkeypatch.setenv("REMBERT_FAST_BACKEND", "eager")
    assert dispatch.backend_for("layer_norm", DEVICE, torch.float32) == "eager"
    with ops.use_backend("triton"):
        assert dispatch.backend_for("layer_norm", DEVICE, torch.float32) == "triton"
        with ops.use_backend("eager"):
            assert dispatch.backend_for("layer_norm", DEVICE, torch.float32) == "eager"
        assert dispatch.backend_for("layer_norm", DEVICE, torch.float32) == "triton"
    assert dispatch.backend_for("layer_norm", DEVICE, torch.float32) == "eager"
    assert len(decisions) == 2  # eager and triton, each decided once


@needs_triton
def test_environment_change_is_seen_on_the_next_call(decisions, monkeypatch):
    monkeypatch.setenv("REMBERT_FAST_BACKEND", "eager")
    assert dispatch.backend_for("bias_act", DEVICE, torch.float32) == "eager"
    monkeypatch.setenv("REMBERT_FAST_BACKEND", " Triton ")
    assert dispatch.backend_for("bias_act", DEVICE, torch.float32) == "triton"
    monkeypatch.setenv("REMBERT_FAST_BACKEND", "bogus")
    for _ in range(2):  # a bad value is refused every time, never cached as a decision
        with pytest.raises(ValueError, match="REMBERT_FAST_BACKEND='bogus' is not one of"):
            dispatch.backend_for("bias_act", DEVICE, torch.float32)
    monkeypatch.delenv("REMBERT_FAST_BACKEND")
    assert dispatch.requested_backend() == "auto"


@needs_triton
def test_a_block_in_another_thread_does_not_leak(monkeypatch):
    monkeypatch.setenv("REMBERT_FAST_BACKEND", "eager")
    inside, seen = threading.Event(), []

    def other():
        with ops.use_backend("triton"):
            seen.append(dispatch.backend_for("layer_norm", DEVICE, torch.float32))
            inside.set()
            release.wait(10)

    release = threading.Event()
    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    try:
        assert dispatch.backend_for("layer_norm", DEVICE, torch.float32) == "eager"
    finally:
        release.set()
        thread.join(10)
    assert seen == ["triton"]


def use_triton(op, device, dtype, tensors):
    """Whether this call of `op` runs its Triton kernel: never under autograd, else the op's decision."""
    return not dispatch.needs_autograd(tensors) and dispatch.backend_for(op, device, dtype) == "triton"


@needs_triton
def test_autograd_runs_eagerly_per_call_with_the_triton_decision_cached():
    x = torch.randn(4, 8, device=DEVICE)
    w = torch.randn(8, device=DEVICE, requires_grad=True)
    with ops.use_backend("triton"):
        assert use_triton("layer_norm", x.device, x.dtype, (x, w.detach()))
        assert not use_triton("layer_norm", x.device, x.dtype, (x, w))
        with torch.no_grad():
            assert use_triton("layer_norm", x.device, x.dtype, (x, w))


def test_refusals_name_the_reason_and_are_not_cached(decisions):
    meta = torch.device("meta")
    for _ in range(2):
        with ops.use_backend("triton"), pytest.raises(RuntimeError, match="triton does not run on meta"):
            dispatch.backend_for("layer_norm", meta, torch.float32)
        with ops.use_backend("cuda"), pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
            dispatch.backend_for("embed", meta, torch.float32)
    with pytest.raises(ValueError, match="op 'softmax' is not one of"):
        dispatch.backend_for("softmax", DEVICE, torch.float32)
    with ops.use_backend("auto"):
        assert dispatch.backend_for("layer_norm", meta, torch.float32) == "eager"  # auto never refuses
