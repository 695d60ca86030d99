"""Self-checking dispatch: a fused path is probed against eager before first use, the verdict is kept in a
JSON cache, and no probe runs inside a capture or a trace."""

import json
import multiprocessing
import pathlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import auto_tuning, needs_triton

from rembert_fast import ops
from rembert_fast.cli import format_tune_table, main
from rembert_fast.kernels import activation as act_kernel
from rembert_fast.kernels import layer_norm as ln_kernel
from rembert_fast.ops import dispatch, measure, probe, tune, tuning

pytestmark = needs_triton


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """`auto` dispatch on the interpreter, a private cache dir, no decision or verdict held."""
    auto_tuning(monkeypatch, tmp_path)
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
        for op in set(probe.CASES) - {"embed"}:  # the extension is CUDA's (its probe: test_embed.py)
            assert probe.run_probe(op, torch.device("cpu"), dtype) is None, (op, dtype)
        assert probe.run_probe("attention", torch.device("cpu"), dtype, "sdpa_padded") is None


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


def test_an_activation_is_probed_on_its_own_and_only_where_it_is_used(fresh, monkeypatch):
    real = act_kernel.bias_act
    launched = []

    def wrong_for_selu(x, b, act, **k):
        launched.append(act)
        return real(x, b, "relu" if act == "selu" else act, **k)

    monkeypatch.setattr(act_kernel, "bias_act", wrong_for_selu)
    x, b = torch.randn(3, 40), torch.randn(40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gelu's probe passes: no warning
        out = ops.bias_act(x, b, "gelu")
    assert set(launched) == {"gelu"}  # no other activation compiled or run for gelu's verdict
    torch.testing.assert_close(out, ops.bias_act_ref(x, b, "gelu"), rtol=1e-5, atol=1e-5)
    assert tuning.verdicts() == {"bias_act[gelu]|float32": None}
    with pytest.warns(RuntimeWarning, match=r"fused bias_act\[selu\] disabled"):
        out = ops.bias_act(x, b, "selu")
    torch.testing.assert_close(out, ops.bias_act_ref(x, b, "selu"))  # the wrong kernel never serves
    assert ops.bias_act(x, b, "gelu") is not None and launched.count("gelu") >= 3  # gelu still fused
    saved = json.loads((fresh / "tune-cpu-interpreter.json").read_text())["verdicts"]
    assert saved["bias_act[gelu]|float32"] is None and "max error" in saved["bias_act[selu]|float32"]
    with pytest.raises(ValueError, match="'swish'"):
        probe.run_probe("bias_act[swish]", torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="takes no activation"):
        probe.run_probe("layer_norm[gelu]", torch.device("cpu"), torch.float32)


def test_a_raising_kernel_falls_back_with_one_warning(fresh, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("triton compile failed: out of resources")

    monkeypatch.setattr(act_kernel, "bias_act", boom)
    x, b = torch.randn(3, 40), torch.randn(40)
    with pytest.warns(RuntimeWarning, match=r"fused bias_act\[gelu\] disabled.*out of resources") as record:
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
    dispatch.forget()
    tuning.reset()
    probes = []
    monkeypatch.setattr(probe, "run_probe", lambda *a: probes.append(a))
    assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "eager"
    assert probes == []
    monkeypatch.setenv("REMBERT_FAST_TUNE", "force")  # ignore the cache: probe again
    dispatch.forget()
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


def _permission_denied(path, monkeypatch):
    # Tests run as root, whom no mode bit stops: refuse the read where the cache opens the file.
    path.write_text(FOREIGN)
    opened = pathlib.Path.open

    def refusing_open(self, mode="r", *args, **kwargs):
        if self == path and "r" in mode:
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refusing_open)


UNREADABLE = {
    "bad bytes": lambda path, _: path.write_bytes(b'{"key": {"gpu": "cpu-interpreter\xff\xfe"}}'),
    "a directory": lambda path, _: (path.mkdir(), (path / "left-over").write_text("x")),
    "permission denied": _permission_denied,
    "not json": lambda path, _: path.write_text("{not json"),
    "not a table": lambda path, _: path.write_text("[]"),
    "truncated": lambda path, _: path.write_text('{"key": {"gpu": "cpu-interpreter"}, "verdicts": {"la'),
    "foreign": lambda path, _: path.write_text(FOREIGN),
    "nested too deep": lambda path, _: path.write_text("[" * 100_000),
}


@pytest.mark.parametrize("make", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_unreadable_cache_warns_once_and_is_rewritten(fresh, monkeypatch, make):
    path = fresh / "tune-cpu-interpreter.json"
    with monkeypatch.context() as patch, pytest.warns(RuntimeWarning, match="tuning cache") as record:
        make(path, patch)
        assert dispatch.backend_for("layer_norm", torch.device("cpu"), torch.float32) == "triton"
        tuning.describe()  # what `rembert-fast doctor` reads: no exception either
    assert len(record) == 1, [str(w.message) for w in record]
    saved = json.loads(path.read_text())
    assert saved["key"] == tuning.device_key("cpu") and saved["verdicts"] == {"layer_norm|float32": None}
    assert tuning.describe()["verdicts"] == 1


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
def _timer(ms_by_name, calls=None):
    """A fake timer: runs each candidate once (so it must run) and reports its ms from `ms_by_name`."""

    def timer(name, fn):
        fn()
        if calls is not None:
            calls.append(name)
        return ms_by_name[name] / 1e3

    return timer


def test_first_use_times_each_bucket_once_and_the_fastest_serves(fresh, monkeypatch):
    served = []
    real = ln_kernel.layer_norm
    monkeypatch.setattr(ln_kernel, "layer_norm", lambda *a, **k: served.append(a[0].shape) or real(*a, **k))
    timed = []
    w, b = torch.randn(48), torch.randn(48)
    small, large = torch.randn(5, 48), torch.randn(300, 48)  # buckets of 8 and 512 rows
    with measure.use_timer(_timer({"eager": 2.0, "triton": 1.0}, timed)):
        out = ops.layer_norm(small, w, b, 1e-12)
        for _ in range(3):
            ops.layer_norm(torch.randn(7, 48), w, b, 1e-12)  # the same bucket: decided, no timing
    assert timed == ["eager", "triton"]
    with measure.use_timer(_timer({"eager": 1.0, "triton": 3.0}, timed)):
        big = ops.layer_norm(large, w, b, 1e-12)  # another bucket, where eager wins
    assert timed == ["eager", "triton"] * 2
    assert [s for s in served if s[0] in (5, 7)] == [(5, 48)] + [(7, 48)] * 3  # triton served bucket 8
    assert (300, 48) not in served  # eager served bucket 512
    torch.testing.assert_close(out, ops.layer_norm_ref(small, w, b, 1e-12), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(big, ops.layer_norm_ref(large, w, b, 1e-12), rtol=1e-5, atol=1e-5)
    saved = json.loads((fresh / "tune-cpu-interpreter.json").read_text())["choices"]
    assert saved["layer_norm:False:False|float32|48|t8"] == {"choice": "triton", "ms": {"eager": 2.0,
                                                                                      "triton": 1.0}}
    assert saved["layer_norm:False:False|float32|48|t512"]["choice"] == "eager"


def test_a_choice_is_remembered_across_processes_and_tune_off_times_nothing(fresh, monkeypatch):
    x, b = torch.randn(6, 40), torch.randn(40)
    with measure.use_timer(_timer({"eager": 1.0, "triton": 5.0})):
        ops.bias_act(x, b, "gelu")
    dispatch.forget()  # a new process: nothing in memory, the cache file holds the choice
    tuning.reset()
    monkeypatch.setattr(measure, "measure", lambda *a: pytest.fail("timed again"))
    with measure.use_timer(_timer({})):
        assert dispatch.choose("bias_act", ("gelu", True), (40,), x.device, x.dtype, 6, (x, b)) == "eager"
        monkeypatch.setenv("REMBERT_FAST_TUNE", "off")  # no probe, no timing: the fused path
        dispatch.forget()
        assert dispatch.choose("bias_act", ("gelu", True), (40,), x.device, x.dtype, 6, (x, b)) == "triton"


def test_the_interpreter_without_a_timer_is_never_timed(fresh, monkeypatch):
    monkeypatch.setattr(measure, "measure", lambda *a: pytest.fail("timed on the interpreter"))
    x, b = torch.randn(6, 40), torch.randn(40)
    torch.testing.assert_close(ops.bias_act(x, b, "relu"), ops.bias_act_ref(x, b, "relu"))
    assert dispatch.choose("bias_act", ("relu", True), (40,), x.device, x.dtype, 6, (x, b)) == "triton"
    assert "choices" not in json.loads((fresh / "tune-cpu-interpreter.json").read_text()) or \
        json.loads((fresh / "tune-cpu-interpreter.json").read_text())["choices"] == {}


def _packed_qkv(lengths, heads=2, dim=64):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return [torch.randn(sum(lengths), heads, dim) for _ in range(3)] + [cu, max(lengths)]


@pytest.mark.parametrize("winner", ["sdpa_padded", "triton", "eager"])
def test_the_attention_competitor_that_wins_serves_the_call(fresh, monkeypatch, winner):
    from rembert_fast.ops import competitors

    served = []
    real = competitors.attention_sdpa_padded
    monkeypatch.setattr(competitors, "attention_sdpa_padded", lambda *a: served.append(1) or real(*a))
    ms = {"eager": 3.0, "triton": 2.0, "sdpa_padded": 1.0}
    ms[winner] = 0.5
    q, k, v, cu, longest = _packed_qkv([5, 9, 2])
    timed = []
    with measure.use_timer(_timer(ms, timed)):
        out = ops.attention(q, k, v, cu, cu, longest, longest, causal=True)
    assert sorted(timed) == ["eager", "sdpa_padded", "triton"]  # torch_varlen: CUDA only
    ref = ops.attention_ref(q, k, v, cu, cu, longest, longest, causal=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    before = len(served)
    ops.attention(q, k, v, cu, cu, longest, longest, causal=True)
    assert (len(served) - before == 1) == (winner == "sdpa_padded")
    saved = json.loads((fresh / "tune-cpu-interpreter.json").read_text())
    assert saved["choices"]["attention:True:True|float32|2x64|t16s16"]["choice"] == winner
    assert saved["verdicts"]["attention.sdpa_padded|float32"] is None


def test_a_wrong_competitor_is_caught_by_its_probe_and_never_timed(fresh, monkeypatch):
    from rembert_fast.ops import competitors

    monkeypatch.setattr(competitors, "attention_sdpa_padded", lambda q, *a: torch.zeros_like(q))
    monkeypatch.setitem(probe.COMPETITORS, ("attention", "sdpa_padded"), competitors.attention_sdpa_padded)
    q, k, v, cu, longest = _packed_qkv([4, 7])
    timed = []
    with pytest.warns(RuntimeWarning, match=r"fused attention \(sdpa_padded\) disabled.*max error"):
        with measure.use_timer(_timer({"eager": 2.0, "triton": 3.0, "sdpa_padded": 0.0}, timed)):
            out = ops.attention(q, k, v, cu, cu, longest, longest)
    assert sorted(timed) == ["eager", "triton"]
    ref = ops.attention_ref(q, k, v, cu, cu, longest, longest)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_no_timing_inside_a_capture_a_held_choice_is_used(fresh, monkeypatch):
    x, b = torch.randn(6, 40), torch.randn(40)
    key = ("bias_act", ("gelu", True), (40,), x.device, x.dtype, 6, (x, b))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with measure.use_timer(_timer({})), pytest.MonkeyPatch.context() as m:
        m.setattr(measure, "measure", lambda *a: pytest.fail("timed inside a capture"))
        assert dispatch.choose(*key) == "eager"  # no verdict, no choice: eager, not remembered
        assert dispatch._choices == {}
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with measure.use_timer(_timer({"eager": 4.0, "triton": 1.0})):
        assert dispatch.choose(*key) == "triton"
    dispatch.forget()  # decided before the capture, held in the cache: the capture uses it
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(measure, "measure", lambda *a: pytest.fail("timed inside a capture"))
    assert dispatch.choose(*key) == "triton"


TINY = tune.Shapes(hidden=32, intermediate=48, heads=2, embedding=16)


def test_tune_prefills_the_choices_first_use_would_make(fresh, monkeypatch):
    ms = {"eager": 2.0, "triton": 1.0, "sdpa_padded": 1.5}
    rows = tune.tune(torch.device("cpu"), torch.float32, TINY, (5, 16), (8,), timer=_timer(ms))
    ops_met = {r.op for r in rows}
    assert ops_met == {"embed", "attention", "attention_padded", "linear_residual_layer_norm",
                       "linear_bias_act"}
    assert {(r.tokens, r.seqlen) for r in rows if r.op == "attention"} == {(8, 8), (16, 8)}
    embed = [r for r in rows if r.op == "embed"][0]
    assert embed.choice == "eager" and embed.ms.keys() == {"eager"} and "extension" in embed.probe_error
    attention = [r for r in rows if r.op == "attention"][0]
    assert attention.ms == ms and attention.choice == "triton" and "torch_varlen" in attention.probe_error
    # A first use of a tuned class is served from the table, without timing.
    monkeypatch.setattr(measure, "measure", lambda *a: pytest.fail("timed again"))
    x, w, b = torch.randn(10, 32), torch.randn(48, 32), torch.randn(48)
    with measure.use_timer(_timer({})):
        out = ops.linear_bias_act(x, w, b, "gelu")
    assert dispatch.choices_made() == {"cpu auto linear_bias_act:gelu|float32|32x48|t16": "triton"}
    torch.testing.assert_close(out, ops.bias_act_ref(x @ w.T + b, None, "gelu"), rtol=1e-5, atol=1e-5)
    table = format_tune_table(rows, "cpu-interpreter float32")
    assert table.count("\n") == len(rows) and "eager=2.000" in table


def test_the_tune_command_prints_the_table_writes_json_and_fills_the_cache(fresh, tmp_path, capsys):
    model = tmp_path / "config.json"
    model.write_text(json.dumps({"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 2,
                                 "input_embedding_size": 16}))
    out_json = tmp_path / "table.json"
    assert main(["tune", "--model", str(model), "--shapes", "4", "--seqlens", "4",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "linear_bias_act" in out and "cpu-interpreter" in out and "t4 s4" in out
    saved = json.loads((fresh / "tune-cpu-interpreter.json").read_text())
    table = json.loads(out_json.read_text())
    assert {r["entry"] for r in table["rows"]} == set(saved["choices"])
    assert table["key"] == tuning.device_key("cpu") and table["dtype"] == "float32"
    assert main(["tune", "--shapes", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["tune", "--seqlens", "a"]) == 2
    assert "--seqlens 'a'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_probe_passes_on_this_gpu(dtype):
    """Every fused path and competitor that can run here agrees with eager on this machine's GPU."""
    from rembert_fast import extension
    from rembert_fast.ops import candidates

    device = torch.device("cuda", torch.cuda.current_device())
    failed = {}
    for op in probe.CASES:
        if op == "embed" and extension.load() is None:
            continue  # no extension built: embed runs eagerly (doctor says why)
        failed[op] = probe.run_probe(op, device, dtype)
    for (op, name) in probe.COMPETITORS:
        width = (probe._HEADS, probe._HEAD_DIM)
        if candidates.extra_status(op, name, (False, True), width, "cuda", dtype) is None:
            failed[f"{op}.{name}"] = probe.run_probe(op, device, dtype, name)
    assert {op: why for op, why in failed.items() if why is not None} == {}


def test_doctor_shows_the_per_bucket_choices_and_disabled_paths(fresh, monkeypatch, capsys):
    monkeypatch.setattr(act_kernel, "bias_act", lambda x, *a, **k: x)  # wrong: disabled by its probe
    x, b = torch.randn(6, 40), torch.randn(40)
    with measure.use_timer(_timer({"eager": 2.0, "triton": 1.0})), pytest.warns(RuntimeWarning):
        ops.layer_norm(x, b, b, 1e-12)
        ops.bias_act(x, b, "gelu")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "1 per-bucket choices" in out and "layer_norm:False:False|float32|40|t8 -> triton" in out
    assert "disabled bias_act[gelu]|float32: max error" in out


def test_the_gemm_epilogue_compositions_are_probed_and_a_wrong_one_never_serves(fresh, monkeypatch):
    real = ln_kernel.layer_norm
    # Wrong only where the GEMM's bias comes in as x_bias: the fused composition of the GEMM ops.
    monkeypatch.setattr(ln_kernel, "layer_norm", lambda x, w, b, eps, res=None, xb=None, **k:
                        real(x, w, b, eps, res, None if xb is None else 2 * xb, **k))
    x, w, bias = torch.randn(5, 24), torch.randn(40, 24) / 5, torch.randn(40)
    res, lw, lb = torch.randn(5, 40), torch.randn(40), torch.randn(40)
    with pytest.warns(RuntimeWarning, match="fused linear_residual_layer_norm disabled.*max error"):
        out = ops.linear_residual_layer_norm(x, w, bias, res, lw, lb, 1e-12)
    ref = ops.layer_norm_ref(x @ w.T + bias, lw, lb, 1e-12, residual=res)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert probe.run_probe("linear_bias_act", torch.device("cpu"), torch.float16) is None


def test_a_timing_that_fails_warns_once_and_the_probe_verdict_serves(fresh):
    def out_of_memory(name, fn):
        raise RuntimeError("CUDA out of memory")

    x, b = torch.randn(6, 40), torch.randn(40)
    with measure.use_timer(out_of_memory), \
            pytest.warns(RuntimeWarning, match="timing bias_act.*out of memory") as record:
        out = ops.bias_act(x, b, "gelu")
        ops.bias_act(x, b, "gelu")  # held for this process: not timed again
    assert len([w for w in record if "timing" in str(w.message)]) == 1
    torch.testing.assert_close(out, ops.bias_act_ref(x, b, "gelu"))
    assert dispatch.choices_made() == {"cpu auto bias_act:gelu:True|float32|40|t8": "triton"}
    assert tuning.choices() == {}  # nothing remembered on disk


def test_an_empty_call_is_not_timed(fresh, monkeypatch):
    monkeypatch.setattr(measure, "measure", lambda *a: pytest.fail("an empty call was timed"))
    q = torch.randn(0, 2, 64)
    cu = torch.zeros(3, dtype=torch.int32)
    with measure.use_timer(_timer({})), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.attention(q, q, q, cu, cu, 0, 0).shape == (0, 2, 64)


def test_a_kernel_wrong_for_one_activation_disables_the_gemm_composition_too(fresh, monkeypatch):
    real = act_kernel.bias_act
    monkeypatch.setattr(act_kernel, "bias_act",
                        lambda x, b, act, **k: real(x, b, "relu" if act == "selu" else act, **k))
    x, w, b = torch.randn(5, 24), torch.randn(40, 24) / 5, torch.randn(40)
    with pytest.warns(RuntimeWarning, match=r"fused linear_bias_act\[selu\] disabled"):
        out = ops.linear_bias_act(x, w, b, "selu")
    torch.testing.assert_close(out, ops.bias_act_ref(x @ w.T + b, None, "selu"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["linear_bias_act", "linear_residual_layer_norm"])
def test_under_autocast_the_epilogue_is_probed_in_the_dtype_it_runs_in(fresh, monkeypatch, op):
    kernel, name = (act_kernel, "bias_act") if op == "linear_bias_act" else (ln_kernel, "layer_norm")
    real = getattr(kernel, name)
    # Right in float32, wrong in bfloat16: the GEMM under bf16 autocast hands the epilogue bf16.
    monkeypatch.setattr(kernel, name, lambda y, *a, **k: real(y, *a, **k) * (1.5 if y.dtype ==
                                                                            torch.bfloat16 else 1.0))
    x, w, b = torch.randn(5, 24), torch.randn(40, 24) / 5, torch.randn(40)
    res, lw, lb = torch.randn(5, 40), torch.randn(40), torch.randn(40)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.warns(RuntimeWarning,
                                                                   match="bfloat16.*running it eagerly"):
        if op == "linear_bias_act":
            out = ops.linear_bias_act(x, w, b, "gelu")
            expected = ops.bias_act_ref(F.linear(x, w, b), None, "gelu")
        else:
            out = ops.linear_residual_layer_norm(x, w, b, res.bfloat16(), lw, lb, 1e-12)
            expected = ops.layer_norm_ref(F.linear(x, w, b), lw, lb, 1e-12, residual=res.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)  # the bf16-wrong kernel never served


@pytest.mark.parametrize("launcher,op", [("attention_varlen", "attention"),
                                         ("attention_padded", "attention_padded")])
def test_an_attention_kernel_wrong_when_causal_only_is_caught(fresh, monkeypatch, launcher, op):
    from rembert_fast.kernels import attention as attention_kernel

    real = getattr(attention_kernel, launcher)
    positional = 7 if op == "attention" else 4  # where `causal` sits in the launcher's arguments

    def ignores_causal(*args, **kwargs):
        return real(*args[:positional], **kwargs)

    monkeypatch.setattr(attention_kernel, launcher, ignores_causal)
    assert "max error" in probe.run_probe(op, torch.device("cpu"), torch.float32)


def test_tune_covers_every_call_class_of_a_model_forward(fresh, monkeypatch):
    import rembert_fast

    config = rembert_fast.RemBertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, input_embedding_size=16,
                                        intermediate_size=48, max_position_embeddings=64)
    model = rembert_fast.RemBertModel(config).eval()
    ids = torch.randint(3, 50, (3, 12))
    mask = (torch.arange(12)[None, :] < torch.tensor([12, 7, 5])[:, None]).long()  # 24 real tokens
    rows = tune.tune(torch.device("cpu"), torch.float32, tune.shapes_of_config(config), (24,), (12,),
                       timer=_timer({"eager": 2.0, "triton": 1.0, "sdpa_padded": 3.0}))
    assert {r.entry for r in rows} <= set(tuning.choices())
    monkeypatch.setattr(measure, "measure", lambda *a: pytest.fail("a class tune did not prefill"))
    with torch.no_grad(), measure.use_timer(_timer({})):
        model(input_ids=ids, attention_mask=mask)
    met = dispatch.choices_made()
    assert {"embed", "attention", "linear_bias_act", "linear_residual_layer_norm"} <= {
        name.split()[2].split("|")[0].split(":")[0] for name in met}


def test_the_cache_stamp_holds_the_driver_version_and_a_driver_update_probes_again(monkeypatch, tmp_path):
    """The stamp's "driver" is the installed driver's version, not the CUDA API level it supports (which a
    driver update within one CUDA major leaves alone): a cache made under another driver is not trusted."""
    version_file = tmp_path / "version"
    monkeypatch.setattr(tuning, "_DRIVER_VERSION_FILE", version_file)
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 12040, raising=False)
    for name, value in (("current_device", lambda: 0), ("get_device_name", lambda index=None: "Fake GPU"),
                        ("get_device_capability", lambda index=None: (9, 0))):
        monkeypatch.setattr(torch.cuda, name, value)
    keys = []
    try:
        for line in ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 2024",
                     "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  "
                     "(dvs-builder@U16)  Thu Jan 23 22:50:36 UTC 2025"):
            version_file.write_text(line + "\nGCC version:  gcc version 12.3.0\n")
            tuning._driver_version.cache_clear()
            keys.append(tuning.device_key("cuda"))
    finally:
        tuning._driver_version.cache_clear()
    assert [key["driver"] for key in keys] == ["550.54.15", "570.86.15"]
    path = tmp_path / "tune-fake-gpu.json"
    tuning.write_cache(path, keys[0], {"layer_norm|float16": None})
    with pytest.warns(RuntimeWarning, match="for another GPU, driver or kernel version"):
        assert tuning._read_tables(path, keys[1]) == ({}, {})


def test_the_probe_reference_is_full_fp32_whatever_the_user_set(monkeypatch):
    """A user who allowed TF32 matmuls still gets a full-precision reference (TF32's error is what the
    rule allows a half-precision kernel), and keeps their setting."""
    seen = []

    def ref(x, w):
        seen.append((x.dtype, torch.get_float32_matmul_precision()))
        return x @ w

    monkeypatch.setitem(probe.CASES, "layer_norm", lambda gen: (
        (torch.randn(8, 16, generator=gen), torch.randn(16, 4, generator=gen)), lambda x, w: x @ w, ref))
    held = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        assert probe.run_probe("layer_norm", torch.device("cpu"), torch.bfloat16) is None
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(held)
    assert seen[0] == (torch.float32, "highest")
    assert all(precision == "high" for _, precision in seen[1:])


def _wrong_past_the_first_layer_norm_program(real):
    def kernel(x, *args, **kwargs):
        out = real(x, *args, **kwargs)
        rows = ln_kernel.launch_config(x.shape[-1], x.element_size())[1]
        out.view(-1, x.shape[-1])[rows:] *= 1.04  # every program but the first
        return out

    return kernel


def _wrong_past_the_first_column_block(real):
    def kernel(x, *args, **kwargs):
        out = real(x, *args, **kwargs)
        out[..., act_kernel.launch_config(x.shape[-1])[1]:] += 0.04
        return out

    return kernel


def _query_tile() -> int:
    from rembert_fast.kernels import attention as attention_kernel

    return attention_kernel.INTERPRETER_CONFIG.kwargs["BLOCK_M"]


def _wrong_past_the_first_query_tile_varlen(real):
    def kernel(q, k, v, cu_seqlens_q, *args, **kwargs):
        out = real(q, k, v, cu_seqlens_q, *args, **kwargs)
        for start, end in zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist(), strict=True):
            out[start + _query_tile():end] *= 1.04
        return out

    return kernel


def _wrong_past_the_first_query_tile_padded(real):
    def kernel(*args, **kwargs):
        out = real(*args, **kwargs)
        out[:, _query_tile():] *= 1.04
        return out

    return kernel


WRONG_IN_A_LATER_TILE = {
    "layer_norm rows": ("layer_norm", "layer_norm", "layer_norm", _wrong_past_the_first_layer_norm_program),
    "linear+layer_norm rows": ("layer_norm", "layer_norm", "linear_residual_layer_norm",
                               _wrong_past_the_first_layer_norm_program),
    "bias_act columns": ("activation", "bias_act", "bias_act[gelu]", _wrong_past_the_first_column_block),
    "linear+bias_act columns": ("activation", "bias_act", "linear_bias_act[gelu]",
                                _wrong_past_the_first_column_block),
    "attention query tiles": ("attention", "attention_varlen", "attention",
                              _wrong_past_the_first_query_tile_varlen),
    "padded attention query tiles": ("attention", "attention_padded", "attention_padded",
                                     _wrong_past_the_first_query_tile_padded),
}


@pytest.mark.parametrize("module,launcher,op,wrong", WRONG_IN_A_LATER_TILE.values(),
                         ids=WRONG_IN_A_LATER_TILE.keys())
def test_a_kernel_wrong_only_in_a_later_tile_fails_its_probe(fresh, monkeypatch, module, launcher, op, wrong):
    # The probe's input spans two programs or more along every tiled dimension (architecture: dispatch),
    # so a kernel right in its first tile and wrong after it never serves.
    import importlib

    kernels = importlib.import_module(f"rembert_fast.kernels.{module}")
    monkeypatch.setattr(kernels, launcher, wrong(getattr(kernels, launcher)))
    assert "max error" in (probe.run_probe(op, torch.device("cpu"), torch.float32) or "passed")
