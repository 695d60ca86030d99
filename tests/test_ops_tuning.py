"""Self-checking dispatch: a fused path is probed against eager before first use, the verdict is kept in a
JSON cache, and no probe runs inside a capture or a trace."""

import json
import multiprocessing
import warnings

import pytest
import torch
from conftest import needs_triton

from rembert_fast import ops
from rembert_fast.cli import main
from rembert_fast.kernels import activation as act_kernel
from rembert_fast.kernels import layer_norm as ln_kernel
from rembert_fast.ops import dispatch, probe, timing, tuning

pytestmark = needs_triton


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """`auto` dispatch on the interpreter, a private cache dir, no decision or verdict held."""
    monkeypatch.setenv("REMBERT_FAST_BACKEND", "auto")
    monkeypatch.setenv("REMBERT_FAST_CACHE", str(tmp_path))
    monkeypatch.delenv("REMBERT_FAST_TUNE", raising=False)
    monkeypatch.setattr(dispatch, "_decisions", {})
    tuning.reset()
    yield tmp_path
    tuning.reset()


def _ln_args():
    x = torch.randn(4, 48)
    return x, torch.randn(48), torch.randn(48), 1e-12


def test_correct_kernels_pass_their_probe_and_are_used(fresh, monkeypatch):
    calls = []
    real = ln_kernel.layer_norm
    monkeypatch.setattr(ln_kernel, "layer_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = _ln_args()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ops.layer_norm(*args)
    assert len(calls) == 3  # the probe (two variants), then the call itself
    torch.testing.assert_close(out, ops.layer_norm_ref(*args), rtol=1e-5, atol=1e-5)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for op in probe.CASES:
            assert probe.run_probe(op, torch.device("cpu"), dtype) is None, (op, dtype)


def test_a_wrong_kernel_is_caught_and_never_used(fresh, monkeypatch):
    monkeypatch.setattr(ln_kernel, "layer_norm", lambda x, *a, **k: torch.zeros_like(x) + 0.5)
    args = _ln_args()
    with pytest.warns(RuntimeWarning, match=r"fused layer_norm disabled for cpu-interpreter.*float32.*max "
                                            r"error") as record:
        out = ops.layer_norm(*args)
        again = ops.layer_norm(*args)
    assert len([w for w in record if "disabled" in str(w.message)]) == 1
    assert torch.equal(out, ops.layer_norm_ref(*args)) and torch.equal(again, out)
    assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "eager"
    saved = json.loads((fresh / "tune-cpu-interpreter.json").read_text())
    assert "max error" in saved["verdicts"]["layer_norm|float32"]


def test_a_kernel_wrong_for_one_activation_only_is_caught(fresh, monkeypatch):
    real = act_kernel.bias_act
    monkeypatch.setattr(act_kernel, "bias_act",
                        lambda x, b, act, **k: real(x, b, "relu" if act == "selu" else act, **k))
    with pytest.warns(RuntimeWarning, match="fused bias_act disabled"):
        assert dispatch.backend_for("bias_act", torch.device("cpu"), torch.float16) == "eager"


def test_a_raising_kernel_falls_back_with_one_warning(fresh, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("triton compile failed: out of resources")

    monkeypatch.setattr(act_kernel, "bias_act", boom)
    x, b = torch.randn(3, 40), torch.randn(40)
    with pytest.warns(RuntimeWarning, match="fused bias_act disabled.*out of resources") as record:
        out = ops.bias_act(x, b, "gelu")
        ops.bias_act(x, b, "gelu")
    assert len(record) == 1
    torch.testing.assert_close(out, ops.bias_act_ref(x, b, "gelu"))


def test_the_verdict_is_remembered_across_processes(fresh, monkeypatch):
    real = ln_kernel.layer_norm
    monkeypatch.setattr(ln_kernel, "layer_norm", lambda x, *a, **k: x * 0)
    with pytest.warns(RuntimeWarning):
        ops.layer_norm(*_ln_args())
    monkeypatch.setattr(ln_kernel, "layer_norm", real)  # right again, but the cache says not: no probe
    monkeypatch.setattr(dispatch, "_decisions", {})
    tuning.reset()
    probes = []
    monkeypatch.setattr(probe, "run_probe", lambda *a: probes.append(a))
    assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "eager"
    assert probes == []
    monkeypatch.setenv("REMBERT_FAST_TUNE", "force")  # ignore the cache: probe again
    monkeypatch.setattr(dispatch, "_decisions", {})
    tuning.reset()
    assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "triton"
    assert len(probes) == 1


def test_off_trusts_the_fused_path_and_an_explicit_backend_is_never_probed(fresh, monkeypatch):
    probes = []
    monkeypatch.setattr(probe, "run_probe", lambda *a: probes.append(a) or "wrong")
    monkeypatch.setenv("REMBERT_FAST_TUNE", "off")
    assert dispatch.backend_for("bias_act", torch.device("cpu"), torch.float32) == "triton"
    monkeypatch.setenv("REMBERT_FAST_TUNE", "on")
    with ops.use_backend("triton"):
        assert dispatch.backend_for("bias_act", torch.device("cpu"), torch.float16) == "triton"
    assert probes == []
    monkeypatch.setenv("REMBERT_FAST_TUNE", "sometimes")
    with pytest.raises(ValueError, match="REMBERT_FAST_TUNE='sometimes'"):
        dispatch.backend_for("bias_act", torch.device("cpu"), torch.bfloat16)


FOREIGN = '{"key": {"gpu": "NVIDIA H100"}, "verdicts": {"layer_norm|float32": "x"}}'


@pytest.mark.parametrize("content", ["{not json", '{"key": {"gpu": "cpu-interp', "[]", FOREIGN])
def test_a_corrupt_truncated_or_foreign_cache_is_ignored_and_rewritten(fresh, content):
    path = fresh / "tune-cpu-interpreter.json"
    path.write_text(content)
    with pytest.warns(RuntimeWarning, match="tuning cache .* (corrupt|another GPU)") as record:
        assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "triton"
    assert len(record) == 1
    saved = json.loads(path.read_text())
    assert saved["key"] == tuning.device_key("cpu") and saved["verdicts"] == {"layer_norm|float32": None}


def _write_many(directory, worker):
    key = tuning.device_key("cpu")
    path = tuning.cache_path("cpu")
    for i in range(20):
        tuning.write_cache(path, key, {f"op{worker}-{i}|float32": None if i % 2 else "bad"})


def test_concurrent_writers_leave_a_valid_cache(fresh):
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_write_many, args=(fresh, w)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    saved = json.loads((fresh / "tune-cpu-interpreter.json").read_text())
    assert len(saved["verdicts"]) == 40 and saved["key"] == tuning.device_key("cpu")
    assert not list(fresh.glob("*.tmp"))


def test_no_probe_during_a_capture(fresh, monkeypatch):
    probes = []
    monkeypatch.setattr(probe, "run_probe", lambda *a: probes.append(a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "eager"
    assert probes == [] and dispatch._decisions == {}  # not remembered: asked again after the capture
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "triton"
    assert len(probes) == 1
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)  # decided: kept
    assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "triton"


def test_no_probe_under_torch_compile(fresh, monkeypatch):
    probes = []
    monkeypatch.setattr(probe, "run_probe", lambda *a: probes.append(a))
    torch._dynamo.reset()
    x, b = torch.randn(3, 40), torch.randn(40)
    out = torch.compile(lambda x, b: ops.bias_act(x, b, "gelu"), backend="eager", fullgraph=True)(x, b)
    assert probes == [] and dispatch._decisions == {}  # traced eagerly, nothing decided
    torch.testing.assert_close(out, ops.bias_act_ref(x, b, "gelu"))
    torch._dynamo.reset()
    assert dispatch.backend_for("bias_act", x.device, x.dtype) == "triton" and len(probes) == 1


# ----------------------------------------------------------------------------------------- measure, choose
TINY = timing.Shapes(hidden=32, intermediate=48, heads=2)


def _fake_timer(eager_s, triton_s):
    """Calls each candidate once (so it must run) and reports eager_s / triton_s by call order."""
    calls = []

    def timer(fn):
        fn()
        calls.append(1)
        return eager_s if len(calls) % 2 else triton_s  # candidates come eager first, then triton

    return timer


def test_the_fastest_correct_candidate_is_chosen(fresh):
    rows = timing.tune(torch.device("cpu"), torch.float32, TINY, (4, 8), timer=_fake_timer(2e-3, 1e-3))
    assert {(r.op, r.tokens) for r in rows} == {(op, t) for op in probe.CASES for t in (4, 8)}
    assert all(r.choice == "triton" and r.ms == {"eager": 2.0, "triton": 1.0} for r in rows)
    assert dispatch.backend_for("bias_act", torch.device("cpu"), torch.float32) == "triton"
    table = timing.format_table(rows, "cpu-interpreter float32")
    assert table.count("\n") == len(rows) and "triton ms" in table


def test_a_slower_fused_path_loses_to_eager(fresh, monkeypatch):
    probes = []
    rows = timing.tune(torch.device("cpu"), torch.float32, TINY, (4,), timer=_fake_timer(1e-3, 3e-3))
    assert all(r.choice == "eager" for r in rows)
    monkeypatch.setattr(probe, "run_probe", lambda *a: probes.append(a))
    assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "eager"
    assert probes == []  # the tuned verdict is used, not probed again
    assert "slower than eager" in tuning.describe()["disabled"]["layer_norm|float32"]


def test_a_wrong_kernel_is_not_timed(fresh, monkeypatch):
    monkeypatch.setattr(act_kernel, "bias_act", lambda x, *a, **k: x)
    rows = timing.tune(torch.device("cpu"), torch.float32, TINY, (4,), timer=_fake_timer(9.0, 1e-9))
    bias = [r for r in rows if r.op == "bias_act"][0]
    assert bias.choice == "eager" and "triton" not in bias.ms and "max error" in bias.probe_error


def test_the_tune_command_prints_the_table_and_fills_the_cache(fresh, tmp_path, capsys):
    model = tmp_path / "config.json"
    model.write_text(json.dumps({"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 2}))
    assert main(["tune", "--model", str(model), "--shapes", "4"]) == 0
    out = capsys.readouterr().out
    assert all(op in out for op in probe.CASES) and "cpu-interpreter" in out
    saved = json.loads((fresh / "tune-cpu-interpreter.json").read_text())
    assert set(saved["verdicts"]) == {f"{op}|float32" for op in probe.CASES}
    assert main(["tune", "--shapes", "0"]) == 2
    assert "positive" in capsys.readouterr().err
