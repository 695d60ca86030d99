"""First-use timing: the input each candidate is timed on, the timer, and the device it all runs on.

What a first use times must stand for the calls its choice serves: attention on uneven sequence lengths
(a packed batch's, a CUDA-graph bucket's), device time per call without the host's launch latency, on
the tensors' GPU, and without drawing from the user's random streams. The device is stood in for where
CPU cannot show it: a fake CUDA timeline (host clock, device queue, events) and a fake second GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import auto_tuning

from rembert_fast.ops import candidates, competitors, dispatch, measure, probe, tune, tuning
from rembert_fast.ops.call_class import CallClass


# ------------------------------------------------------------------------------------ the timing input
@pytest.mark.parametrize("tokens,seqlen", [(64, 16), (512, 128), (32768, 512), (2048, 2048), (96, 1)])
def test_attention_is_timed_on_uneven_lengths_up_to_the_bucket(monkeypatch, tokens, seqlen):
    """Packed batches have sequences of many lengths: so has the timing input, the longest `seqlen`, all
    of them filling the token bucket (one sequence where the bucket holds just one)."""
    seen = []
    monkeypatch.setattr(competitors, "attention_sdpa_padded", lambda *args: seen.append(args))
    call = CallClass("attention", (False, True), (2, 8), torch.float32, tokens, seqlen)
    candidates.calls(call, torch.device("cpu"), ("sdpa_padded",))["sdpa_padded"]()
    q, _, _, cu, _, max_q, _, _ = seen[0]
    lengths = (cu[1:] - cu[:-1]).tolist()
    assert q.shape[0] == sum(lengths) == tokens
    assert max(lengths) == max_q == seqlen and min(lengths) >= 1
    if seqlen > 1 and tokens > seqlen:
        assert len(set(lengths)) > 1, lengths


@pytest.mark.parametrize("causal", [False, True])
def test_the_padded_sdpa_competitor_is_timed_on_the_branch_packed_calls_take(monkeypatch, causal):
    """A batch of equal full-length sequences lets `attention_sdpa_padded` skip its scatter and mask; a
    packed batch never does. The timing input must take the masked branch, and its result be right."""
    masks = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: masks.append(k.get("attn_mask")) or real_sdpa(*a, **k))
    call = CallClass("attention", (causal, True), (2, 8), torch.float32, 64, 16)
    out = candidates.calls(call, torch.device("cpu"), ("sdpa_padded",))["sdpa_padded"]()
    assert len(masks) == 1 and masks[0] is not None
    # The same input through the per-sequence reference (a different algorithm): the same answer.
    seen = []
    monkeypatch.setattr(competitors, "attention_sdpa_padded", lambda *args: seen.append(args))
    candidates.calls(call, torch.device("cpu"), ("sdpa_padded",))["sdpa_padded"]()
    q, k, v, cu, _, _, _, _ = seen[0]
    from rembert_fast.ops import reference

    torch.testing.assert_close(out, reference.attention_per_sequence(q, k, v, cu, cu, causal=causal))


@pytest.mark.parametrize("op", ["embed", "attention", "attention_padded", "linear_bias_act",
                                "linear_residual_layer_norm"])
def test_timing_inputs_leave_the_users_random_stream_untouched(op):
    """A first use inside a training run must not change what the run draws next."""
    shapes = tune.Shapes(hidden=32, intermediate=64, heads=2, embedding=16)
    classes = [c for c in tune.call_classes(shapes, (64,), (16,), torch.float32) if c.op == op]
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    for call in classes:
        candidates.calls(call, torch.device("cpu"), ("eager",))["eager"]()
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------- the timer
class _FakeGpu:
    """A CUDA timeline: the host's clock, the time the device's queue drains, and a launch cost on the
    host per kernel. A kernel queued at host time h starts when the device is free and h has passed."""

    SPIN_MS_PER_CYCLE = 1 / 1.5e6  # the fake GPU runs at 1.5 GHz

    def __init__(self) -> None:
        self.host_ms = 0.0
        self.free_at_ms = 0.0

    def launch(self, host_ms: float, device_ms: float) -> None:
        self.host_ms += host_ms
        self.free_at_ms = max(self.free_at_ms, self.host_ms) + device_ms

    def synchronize(self, device=None) -> None:
        self.host_ms = max(self.host_ms, self.free_at_ms)

    def install(self, monkeypatch) -> None:
        gpu = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                self.at_ms = None

            def record(self, stream=None) -> None:
                gpu.launch(0.001, 0.0)
                self.at_ms = gpu.free_at_ms

            def synchronize(self) -> None:
                gpu.host_ms = max(gpu.host_ms, self.at_ms)

            def elapsed_time(self, end: Event) -> float:
                return end.at_ms - self.at_ms

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", self.synchronize)
        monkeypatch.setattr(torch.cuda, "_sleep",
                            lambda cycles: self.launch(0.005, cycles * self.SPIN_MS_PER_CYCLE), raising=False)
        monkeypatch.setattr(measure, "_host_seconds", lambda: self.host_ms / 1e3)


def test_the_timer_counts_device_time_not_the_hosts_launch_latency(monkeypatch):
    """A Triton kernel costs the host ~40 us to launch and the device 5 us to run; eager's two ATen
    kernels cost 5 us each to launch and 8 us each to run. Under a CUDA graph or a busy stream the fused
    kernel is three times faster; one call timed alone after a synchronize says the opposite."""
    gpu = _FakeGpu()
    gpu.install(monkeypatch)

    def fused():
        gpu.launch(0.040, 0.005)

    def eager():
        gpu.launch(0.005, 0.008)
        gpu.launch(0.005, 0.008)

    timer = measure.median_timer(torch.device("cuda"))
    ms = {"triton": timer("triton", fused) * 1e3, "eager": timer("eager", eager) * 1e3}
    assert ms["triton"] == pytest.approx(0.005, rel=1e-6)
    assert ms["eager"] == pytest.approx(0.016, rel=1e-6)
    assert min(ms, key=ms.__getitem__) == "triton"


def test_a_run_of_calls_is_divided_by_its_length_and_needs_one_call():
    clock = iter([0.0, 0.012])
    measure_calls = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(measure, "_host_seconds", lambda: next(clock))
        device_ms, host_ms = measure.time_calls(lambda: measure_calls.append(1), torch.device("cpu"), 4)
    assert len(measure_calls) == 4 and device_ms == host_ms == pytest.approx(3.0)
    with pytest.raises(ValueError, match="calls must be at least 1, got 0"):
        measure.time_calls(lambda: None, torch.device("cpu"), 0)


# ------------------------------------------------------------------------------- the tensors' device
def test_probes_and_timing_run_on_the_tensors_gpu_not_the_current_one(monkeypatch, tmp_path):
    """A model on cuda:1 while cuda:0 is current: the probe, the events and the cache are cuda:1's."""
    auto_tuning(monkeypatch, tmp_path)
    current = [0]

    @contextlib.contextmanager
    def on(device):
        held, current[0] = current[0], torch.device(device).index
        try:
            yield
        finally:
            current[0] = held

    for name, value in (("device", on), ("current_device", lambda: current[0]),
                        ("is_available", lambda: True), ("is_current_stream_capturing", lambda: False),
                        ("get_device_name", lambda index=None: f"Fake GPU {index}"),
                        ("get_device_capability", lambda index=None: (9, index))):
        monkeypatch.setattr(torch.cuda, name, value)
    probed, timed = [], []
    monkeypatch.setattr(probe, "run_probe",
                        lambda op, device, dtype, *c: probed.append((op, device, current[0])))
    monkeypatch.setattr(candidates, "calls", lambda call, device, names: {n: (lambda: None) for n in names})

    def timer(name, fn):
        timed.append((name, current[0]))
        return {"eager": 2e-3, "triton": 1e-3}[name]

    try:
        with measure.use_timer(timer):
            choice = dispatch.choose("layer_norm", (False, False), (64,), torch.device("cuda", 1),
                                     torch.float16, 64, ())
    finally:
        tuning.reset()
    assert choice == "triton"
    assert probed == [("layer_norm", torch.device("cuda", 1), 1)]
    assert timed == [("eager", 1), ("triton", 1)]
    assert current == [0]
    assert (tmp_path / "tune-fake-gpu-1.json").is_file() and not (tmp_path / "tune-fake-gpu-0.json").exists()
