"""`rembert-fast bench` on CPU with a tiny config, and the GPU check script's commands.

Every run here says `--device cpu`: on a GPU machine the default device is CUDA, whose defaults (all
implementations, per-kernel rows, the GEMM peak) are not what these tests describe.

The benchmark's numbers are not asserted (speed is measured in benchmarks, not tests); its JSON
schema, its rows per implementation, its correctness check and its options are.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rembert_fast
import rembert_fast.bench.environment
import rembert_fast.bench.timing
from rembert_fast import bench, cli

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            input_embedding_size=32, output_embedding_size=48, intermediate_size=128,
            max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
E2E_FIELDS = {"kind", "impl", "dtype", "batch", "seq", "lengths", "stream_batches", "real_tokens",
              "padded_tokens", "status", "first_call_s", "first_pass_s", "median_ms", "min_ms", "max_ms",
              "iters", "max_abs_err", "peak_activation_mb",
              "tokens_per_s", "ratio_vs_transformers", "error_bar", "agrees", "model_tflop_per_s",
              "fraction_of_gemm_peak"}


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return path


def run_bench(tiny_config: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    output = tmp_path / "result.json"
    args = cli.build_parser().parse_args(
        ["bench", "--device", "cpu", "--config", str(tiny_config), "--layers", "1", "--batch-sizes", "2",
         "--seq-lens", "16", "--warmup", "0", "--iters", "1", "--no-progress", "--output", str(output),
         *extra])
    code = args.func(args)
    return code, json.loads(output.read_text())


def test_bench_cpu_json_schema_and_rows(tiny_config, tmp_path, capsys):
    impls = "rembert_fast,transformers+optimize,transformers"
    code, result = run_bench(tiny_config, tmp_path, "--impls", impls)
    assert code == 0
    assert result["schema"] == bench.SCHEMA and result["device"] == "cpu" and result["complete"] is True
    assert {"torch", "triton", "transformers", "python", "rembert_fast"} <= set(result["versions"])
    assert result["date"] and "git_commit" in result and result["model"]["num_hidden_layers"] == 1
    # The tests' backend, eager: every call class the model met, each served eagerly.
    ran_on = {name: on for name, on in result["dispatch"]["choices"].items() if name.startswith("cpu eager ")}
    assert {name.split()[2].split("|")[0].split(":")[0] for name in ran_on} >= {
        "embed", "linear_bias_act", "linear_residual_layer_norm"}
    assert set(ran_on.values()) == {"eager"} and result["dispatch"]["tune_mode"] == "off"
    rows = result["rows"]
    cases = {(r["batch"], r["seq"], r["lengths"]) for r in rows}
    assert cases == {(2, 16, "fixed"), (2, 16, "variable")}
    for case in cases:
        impls = {r["impl"] for r in rows if (r["batch"], r["seq"], r["lengths"]) == case}
        assert impls == {"rembert_fast", "transformers+optimize", "transformers"}
    for row in rows:
        assert set(row) == E2E_FIELDS, row
        assert row["status"] == "ok" and row["agrees"] is True and row["max_abs_err"] <= 1e-4
        assert row["median_ms"] > 0 and row["tokens_per_s"] > 0
        if row["lengths"] == "fixed":
            assert row["real_tokens"] == row["padded_tokens"] == 32
        else:
            assert 0 < row["real_tokens"] <= 32
    assert all(r["ratio_vs_transformers"] == 1.0 for r in rows if r["impl"] == "transformers")
    assert result["kernels"] == []  # off on CPU unless --kernels
    table = capsys.readouterr().out
    assert "rembert_fast" in table and "transformers+optimize" in table and str(tmp_path) in table


def test_compiled_rembert_fast_over_a_stream_of_variable_batches(tiny_config, tmp_path, capsys):
    impls = "rembert_fast,rembert_fast+compile,transformers"
    code, result = run_bench(tiny_config, tmp_path, "--impls", impls, "--lengths", "variable,fixed",
                             "--stream", "3")
    assert code == 0 and result["settings"]["stream"] == 3
    rows = {(r["impl"], r["lengths"]): r for r in result["rows"]}
    variable, fixed = rows["rembert_fast+compile", "variable"], rows["rembert_fast+compile", "fixed"]
    assert variable["stream_batches"] == 3 and fixed["stream_batches"] == 1
    assert variable["padded_tokens"] == 3 * 2 * 16 and fixed["real_tokens"] == 32
    # one pass is three batches: the reference's tokens are the same stream's
    assert variable["real_tokens"] == rows["transformers", "variable"]["real_tokens"]
    for row in result["rows"]:
        assert set(row) == E2E_FIELDS, row
        assert row["status"] == "ok" and row["agrees"] is True and row["max_abs_err"] <= 1e-4
    # compilation is reported apart from the timed passes
    assert variable["first_call_s"] > 0 and variable["first_pass_s"] >= 0 and fixed["first_pass_s"] == 0
    assert "rembert_fast+compile" in capsys.readouterr().out


def test_bench_model_dir_loads_the_same_weights_in_both(tmp_path):
    """--model: a head checkpoint saved by transformers, read as the base model by both libraries."""
    transformers = pytest.importorskip("transformers")
    model = transformers.RemBertForSequenceClassification(transformers.RemBertConfig(**TINY))
    model.save_pretrained(tmp_path / "ckpt")
    output = tmp_path / "result.json"
    args = cli.build_parser().parse_args(
        ["bench", "--device", "cpu", "--model", str(tmp_path / "ckpt"), "--shapes", "2x8:variable",
         "--iters", "1", "--no-progress", "--output", str(output)])
    assert args.func(args) == 0
    result = json.loads(output.read_text())
    assert result["model"]["num_hidden_layers"] == 2 and result["model"]["source"] == str(tmp_path / "ckpt")
    assert {r["impl"] for r in result["rows"]} == {"rembert_fast", "transformers"}
    assert all(r["agrees"] and r["max_abs_err"] <= 1e-4 for r in result["rows"])


def test_bench_kernels_rows(tiny_config, tmp_path):
    code, result = run_bench(tiny_config, tmp_path, "--impls", "rembert_fast", "--lengths", "fixed",
                             "--kernels")
    assert code == 0
    ops_run = {r["op"] for r in result["kernels"]}
    assert ops_run == {"layer_norm(+bias+residual)", "bias_act(gelu)", "attention(varlen, d=16)",
                       "embed(gather+LN, id check incl.)"}
    for row in result["kernels"]:
        assert row["status"] == "ok" and row["median_ms"] > 0 and row["eager_median_ms"] > 0
        assert ("gb_per_s" in row) != ("tflop_per_s" in row)


def test_model_flops_match_a_flop_counter():
    """bench.model_flops against torch's FlopCounterMode on transformers' own forward: every matmul of
    a padding-free batch (fixed lengths), and one sequence at a time for unequal lengths."""
    transformers = pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    model = transformers.RemBertModel(transformers.RemBertConfig(**TINY)).eval()

    def counted(batch: int, seqlen: int) -> int:
        ids = torch.randint(1, TINY["vocab_size"], (batch, seqlen))
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        return counter.get_total_flops()

    assert bench.model_flops(model.config, [16, 16, 16]) == counted(3, 16)
    lengths = [5, 16, 9]
    assert bench.model_flops(model.config, lengths) == sum(counted(1, n) for n in lengths)


def test_gemm_peak_and_fraction_per_row(tiny_config, tmp_path, monkeypatch):
    """--gemm-peak (on by default on CUDA): each GEMM's TFLOP/s is 2*m*k*n over its median, the peak is
    the best of them, and every row's model TFLOP/s is divided by that peak."""
    monkeypatch.setattr(bench.timing, "kernel_ms", lambda fn, warmup, iters, device: fn() is None or 0.5)
    code, result = run_bench(tiny_config, tmp_path, "--impls", "rembert_fast,transformers", "--lengths",
                             "fixed", "--gemm-peak")
    assert code == 0
    peak = result["gemm_peak"]["float32"]
    tokens = 2 * 16
    expected = {f"{tokens}x{k}x{n}": 2 * tokens * k * n / 0.5e-3 / 1e12
                for k, n in ((64, 192), (64, 64), (64, 128), (128, 64))}
    assert peak["by_shape"] == pytest.approx(expected)
    assert peak["tflop_per_s"] == pytest.approx(max(expected.values()))
    flops = bench.model_flops(rembert_fast.RemBertConfig(**{**TINY, "num_hidden_layers": 1}), [16, 16])
    for row in result["rows"]:
        assert row["model_tflop_per_s"] == pytest.approx(flops / (row["median_ms"] / 1e3) / 1e12)
        assert row["fraction_of_gemm_peak"] == pytest.approx(row["model_tflop_per_s"] / peak["tflop_per_s"])
    default = run_bench(tiny_config, tmp_path, "--impls", "transformers", "--lengths", "fixed")[1]
    assert default["gemm_peak"] == {} and default["rows"][0]["fraction_of_gemm_peak"] is None


@pytest.mark.parametrize("dies_at", (1, 2))
def test_bench_json_holds_finished_shapes_when_cut_off(tiny_config, tmp_path, monkeypatch, dies_at):
    """A run killed mid-way (a GPU lease's time limit) leaves its metadata and the rows of every shape it
    finished: none when it dies in the first shape, the first shape's when it dies in the second."""
    real, calls = bench.e2e._bench_shape, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == dies_at:
            raise KeyboardInterrupt  # what a timeout's SIGTERM/SIGINT looks like from inside
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.e2e, "_bench_shape", dies)
    output = tmp_path / "result.json"
    args = cli.build_parser().parse_args(
        ["bench", "--device", "cpu", "--config", str(tiny_config), "--layers", "1", "--shapes",
         "2x16:fixed,2x8:fixed", "--impls", "rembert_fast,transformers", "--iters", "1", "--no-progress",
         "--output", str(output)])
    with pytest.raises(KeyboardInterrupt):
        args.func(args)
    partial = json.loads(output.read_text())
    assert partial["complete"] is False and partial["versions"]["torch"] and partial["kernels"] == []
    finished = {(2, 16, "rembert_fast"), (2, 16, "transformers")} if dies_at == 2 else set()
    assert {(r["batch"], r["seq"], r["impl"]) for r in partial["rows"]} == finished
    assert all(r["status"] == "ok" and r["agrees"] for r in partial["rows"])


def test_a_failing_reference_keeps_the_kernel_row():
    """SDPA's flash backend refuses some inputs (fp32 on CUDA): that reference's error is recorded and
    the kernel's own figures are still reported."""
    x = torch.randn(64, 32)

    def refuses() -> None:
        raise RuntimeError("No available kernel. Aborting execution.")

    case = bench.kernels.KernelCase("attention(varlen, d=16)", "1x64x2x16", lambda: x * 2,
                             {"eager": lambda: x * 2, "sdpa_flash": refuses}, None, 1e6)
    row = bench.kernels.time_kernel(case, "float32", 1, 64, torch.device("cpu"), 0, 2)
    assert row["status"] == "ok" and row["median_ms"] > 0 and row["tflop_per_s"] > 0
    assert row["eager_median_ms"] > 0 and "speedup_vs_eager" in row
    assert row["sdpa_flash_error"] == "RuntimeError: No available kernel. Aborting execution."
    assert "sdpa_flash_median_ms" not in row
    assert "attention" in bench.format_kernel_table([row])
    del row["speedup_vs_eager"]  # a failed eager reference leaves no ratio: the table shows "-"
    head, _, line = bench.format_kernel_table([row]).splitlines()
    end = head.index("vs eager") + len("vs eager")
    assert line[end - 9:end].strip() == "-"


def test_summary_of_a_cut_off_record(tiny_config, tmp_path):
    """What gpu_check.sh prints last for each record: peak, completeness, kernel and end-to-end tables."""
    _, result = run_bench(tiny_config, tmp_path, "--impls", "rembert_fast,transformers", "--lengths", "fixed",
                          "--kernels", "--gemm-peak")
    text = bench.summary(result)
    assert text.startswith("GEMM peak float32: ") and "INCOMPLETE" not in text
    assert "layer_norm(+bias+residual)" in text and "of GEMM" in text and "transformers" in text
    result["complete"] = False
    assert "INCOMPLETE" in bench.summary(result)


def test_random_weights_follow_the_seed(tiny_config, tmp_path, monkeypatch):
    """Two runs with one --seed benchmark the same random model (gpu_check's e2e and compile steps are
    separate processes whose errors should be comparable); another seed gives another model."""
    real, weights = bench.e2e.build_masters, []

    def recording(*args, **kwargs):
        hf_model, fast_model = real(*args, **kwargs)
        weights.append(hf_model.encoder.layer[0].intermediate.dense.weight.clone())
        return hf_model, fast_model

    monkeypatch.setattr(bench.e2e, "build_masters", recording)
    for seed in ("3", "3", "4"):
        run_bench(tiny_config, tmp_path, "--impls", "transformers", "--lengths", "fixed", "--seed", seed)
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_commit_from_the_environment_where_there_is_no_git(monkeypatch, tmp_path):
    """A lent GPU machine gets a copy of the working tree without .git: REMBERT_FAST_COMMIT names the
    commit the records were measured at (gpu_check.sh passes it through)."""
    monkeypatch.setenv("REMBERT_FAST_COMMIT", "0123abcd")
    assert bench.environment.git_commit() == "0123abcd"
    monkeypatch.delenv("REMBERT_FAST_COMMIT")
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert bench.environment.git_commit() is None


def test_bench_flags_a_wrong_implementation(tiny_config, tmp_path, monkeypatch):
    """The agreement check can fail: corrupt rembert_fast's output and the row is flagged, exit 1."""
    real = bench.e2e._make_callable

    def corrupted(impl, hf_model, fast_model):
        fn = real(impl, hf_model, fast_model)
        return (lambda ids, mask: fn(ids, mask) + 0.01) if impl == "rembert_fast" else fn

    monkeypatch.setattr(bench.e2e, "_make_callable", corrupted)
    code, result = run_bench(tiny_config, tmp_path, "--lengths", "fixed")
    assert code == 1
    by_impl = {r["impl"]: r for r in result["rows"]}
    assert by_impl["rembert_fast"]["agrees"] is False
    assert by_impl["rembert_fast"]["max_abs_err"] == pytest.approx(0.01, rel=1e-3)
    assert by_impl["transformers"]["agrees"] is True


def test_bench_without_transformers_runs_rembert_fast_alone(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.e2e, "load_transformers", lambda: None)
    code, result = run_bench(tiny_config, tmp_path, "--lengths", "fixed")
    assert code == 0
    assert [r["impl"] for r in result["rows"]] == ["rembert_fast"]
    assert result["rows"][0]["max_abs_err"] is None and result["rows"][0]["ratio_vs_transformers"] is None
    assert any("transformers is not installed" in note for note in result["notes"])
    assert "transformers is not installed" in capsys.readouterr().err


def _bench_usage_error(tiny_config, tmp_path, capsys, *extra: str) -> str:
    """Run `rembert-fast bench` with settings that cannot work: exit 2, one line, nothing written."""
    args = cli.build_parser().parse_args(
        ["bench", "--device", "cpu", "--config", str(tiny_config), "--no-progress", "--iters", "1",
         "--batch-sizes", "2", "--seq-lens", "16", "--output", str(tmp_path / "out" / "result.json"), *extra])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rembert-fast bench: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out" / "result.json").exists()
    return err


def test_bench_plot_without_matplotlib_says_so_before_running(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert "pip install matplotlib" in _bench_usage_error(tiny_config, tmp_path, capsys, "--plot")


def test_bench_argument_errors(tiny_config, tmp_path):
    parser = cli.build_parser()
    assert parser.parse_args(["bench", "--shapes", "64x512:variable,1x128"]).shapes == [
        bench.Shape(64, 512, "variable"), bench.Shape(1, 128, "fixed")]
    for bad in (["--shapes", "64by512"], ["--impls", "onnx"], ["--dtypes", "fp8"], ["--batch-sizes", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", *bad])



def test_bench_settings_that_cannot_work_are_usage_errors(tiny_config, tmp_path, capsys):
    assert "--layers 5 is outside 1..2" in _bench_usage_error(tiny_config, tmp_path, capsys, "--layers", "5")
    assert "exceed max_position_embeddings=64" in _bench_usage_error(tiny_config, tmp_path, capsys,
                                                                     "--seq-lens", "128")
    assert "--threads 0 must be a positive" in _bench_usage_error(tiny_config, tmp_path, capsys,
                                                                  "--threads", "0")
    assert "--stream 0 must be a positive" in _bench_usage_error(tiny_config, tmp_path, capsys,
                                                                 "--stream", "0")
    assert "no implementation left" in _bench_usage_error(tiny_config, tmp_path, capsys,
                                                          "--impls", "rembert_fast+graphs")
    (tmp_path / "a_dir.json").mkdir()
    assert "is a directory" in _bench_usage_error(tiny_config, tmp_path, capsys,
                                                  "--output", str(tmp_path / "a_dir.json"))
    (tmp_path / "a_file").write_text("")
    assert "cannot create its directory" in _bench_usage_error(
        tiny_config, tmp_path, capsys, "--output", str(tmp_path / "a_file" / "x.json"))
    assert not (tmp_path / "a_dir.json.partial").exists()


def test_cpu_defaults_skip_compile_and_graphs():
    args = cli.build_parser().parse_args(["bench"])
    plan = bench.resolve(args, torch.device("cpu"), have_hf=True)
    assert plan["impls"] == ["rembert_fast", "transformers"]
    assert plan["dtypes"] == ["float32"] and plan["layers"] == 2 and plan["kernels"] is False
    compiled = bench.resolve(cli.build_parser().parse_args(["bench", "--compile", "--no-max-autotune"]),
                              torch.device("cpu"), have_hf=True)
    assert compiled["impls"] == ["rembert_fast", "rembert_fast+compile", "transformers", "torch.compile"]
    gpu = bench.resolve(args, torch.device("cuda"), have_hf=True)
    assert gpu["impls"] == list(bench.IMPLS) and gpu["dtypes"] == ["bfloat16", "float16"]
    assert gpu["layers"] is None and gpu["kernels"] is True


def test_graph_status_says_when_a_graphs_row_ran_eagerly():
    """A rembert_fast+graphs row names how its batch ran, so an eager fallback is not read as a graph
    figure: replayed, no bucket fits, a failed capture, or nothing captured."""
    import rembert_fast
    from rembert_fast.cuda_graphs import CudaGraphRunner

    model = rembert_fast.RemBertModel(rembert_fast.RemBertConfig(**TINY)).eval()
    runner = CudaGraphRunner(model, token_buckets=(32,), seqlen_buckets=(16,), batch_buckets=(4,))
    fits = torch.tensor([[1] * 12 + [0] * 4, [1] * 5 + [0] * 11])  # 17 tokens, longest 12, 2 rows
    too_long = torch.ones(2, 20, dtype=torch.long)
    assert bench.graph_status(runner, too_long) == "eager: no bucket fits"
    assert bench.graph_status(runner, fits).startswith("eager: not captured")
    runner.capture_error = "RuntimeError: operation not permitted when stream is capturing"
    assert bench.graph_status(runner, fits) == (
        "eager: capture failed (RuntimeError: operation not permitted when stream is capturing)")
    runner._graphs[(32, 16, 4)] = type("Captured", (), {"graph": object()})()
    assert bench.graph_status(runner, fits) == "replayed"
    row = {"impl": "rembert_fast+graphs", "dtype": "bfloat16", "batch": 2, "seq": 16, "lengths": [12, 5],
           "status": "ok", "real_tokens": 17, "median_ms": 1.0, "tokens_per_s": 17e3,
           "ratio_vs_transformers": 2.0, "peak_activation_mb": 1.0, "max_abs_err": 0.0, "agrees": True,
           "first_call_s": 0.5, "graphs": "eager: no bucket fits"}
    assert bench.format_table([row]).splitlines()[-1] == "  ^ eager: no bucket fits"
    assert "^" not in bench.format_table([{**row, "graphs": "replayed"}])


# ----------------------------------------------------------------------------------------- gpu_check.sh
def _gpu_check_dry_run(tmp_path, **env_vars):
    """{step: argv} that benches/gpu_check.sh would run, and the files its dry run left in OUTDIR."""
    script = ROOT / "benches" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", **env_vars)
    done = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = {}
    for line in done.stdout.splitlines():
        if line.startswith("DRY-RUN "):
            name, command = line[len("DRY-RUN "):].split(":", 1)
            commands[name] = shlex.split(command)
    steps = (tmp_path / "out" / "steps.tsv").read_text().splitlines()
    assert len(steps) == len(commands) + 1 and all("dry-run" in s for s in steps[1:])
    return commands, sorted(p.name for p in (tmp_path / "out").iterdir())


def test_gpu_check_script_commands_exist(tmp_path):
    commands, _ = _gpu_check_dry_run(tmp_path)
    # What the product's choices rest on comes first: the bf16 choices, the GPU-marked tests, the bf16
    # figures (end to end, torch.compile); then the fp16 choices (a cold compile) and the broad kernel
    # tests: a lease cut short still brings the first back.
    # The install is checked at once; the reinstall without the extension runs only when that check
    # fails (the dry run lists it).
    assert list(commands) == ["install", "install_check", "install_without_extension",
                              "install_check_without_extension", "doctor", "tune_bf16", "gpu_tests",
                              "bench_e2e", "bench_compile", "tune_fp16", "kernel_tests", "training_tests",
                              "bench_attention", "bench_layer_norm", "bench_bias_act", "bench_embed",
                              "bench_attention_backward", "bench_layer_norm_backward",
                              "bench_bias_act_backward"]
    assert commands["install"][1:4] == ["-m", "pip", "install"]
    assert commands["install_without_extension"][:2] == ["env", "REMBERT_FAST_BUILD_CUDA=0"]
    assert commands["install_without_extension"][2:] == commands["install"]
    for flag in ("--no-build-isolation", "--no-deps", "--no-index"):  # no network on a lent machine
        assert flag in commands["install"]
    for name, what in (("install_check", "with extension"), ("install_check_without_extension",
                                                             "without extension")):
        assert commands[name][1] == "-c" and commands[name][-1] == what
        assert "import rembert_fast.kernels" in commands[name][2]
    assert "import rembert_fast._C" in commands["install_check"][2]
    assert "-m rembert_fast.cli doctor --json" in commands["doctor"][2]
    parser = cli.build_parser()
    for dtype in ("bf16", "fp16"):  # the dispatch's choices for the benchmarks' buckets, before them
        argv = commands[f"tune_{dtype}"]
        args = parser.parse_args(argv[3:])
        assert argv[1:4] == ["-m", "rembert_fast.cli", "tune"] and args.dtype == dtype
        assert args.config == "default" and Path(args.json).parent.name != "out"
        assert {int(t) for t in args.shapes.split(",")} >= {128, 64 * 512}
    for name in ("bench_e2e", "bench_compile"):
        argv = commands[name]
        assert argv[1:4] == ["-m", "rembert_fast.cli", "bench"]
        args = parser.parse_args(argv[3:])  # every option the script passes exists
        assert args.func is bench.run and args.dtypes == ["bf16"]
        assert Path(args.output).name.startswith("gpu-") and Path(args.output).parent.name == "out"
    assert parser.parse_args(commands["bench_e2e"][3:]).no_compile
    assert "torch.compile" in parser.parse_args(commands["bench_compile"][3:]).impls
    for name in ("gpu_tests", "kernel_tests", "training_tests"):
        argv = commands[name]
        assert argv[1:3] == ["-m", "pytest"]
        # One file that fails to import (say, an API missing from the GPU machine's versions) must not
        # stop every other test from running.
        assert "--continue-on-collection-errors" in argv
        for path in (a for a in argv if a.startswith("tests")):
            assert (ROOT / path).exists(), path
    # Every kernel and op test file runs on the GPU (a new one must be added to the script's list), but
    # those whose tests stand the GPU in with the interpreter or fakes: on a GPU they test nothing or fail.
    stand_ins = {"tests/test_ops_tuning.py", "tests/test_ops_measure.py"}
    kernel_files = {a for a in commands["kernel_tests"] if a.startswith("tests/")}
    for pattern in ("test_kernel_*.py", "test_ops_*.py"):
        files = {f"tests/{p.name}" for p in (ROOT / "tests").glob(pattern)}
        assert files - stand_ins <= kernel_files, pattern
    assert not stand_ins & kernel_files
    for name, argv in commands.items():
        if name.startswith("bench_") and argv[1] != "-m":
            assert (ROOT / argv[1]).exists() and "--json" in argv
            # Per-script tables go to a scratch directory and are merged: OUTDIR holds few files.
            assert Path(argv[argv.index("--json") + 1]).parent.name != "out"


def test_gpu_check_arch_comes_from_the_device_and_pip_stays_offline(tmp_path):
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", CUDA_VISIBLE_DEVICES="")
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    script = [str(ROOT / "benches" / "gpu_check.sh"), str(tmp_path / "out")]
    cpu = subprocess.run(["bash", *script], capture_output=True, text=True, env=env, timeout=60)
    assert "== arch: no CUDA device visible; TORCH_CUDA_ARCH_LIST unset" in cpu.stdout
    # A stand-in python on a GPU machine: the capability query answers 9.0.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = -c ]; then echo 9.0; fi\n")
    fake.chmod(0o755)
    gpu = subprocess.run(["bash", *script], capture_output=True, text=True, env={**env, "PYTHON": str(fake)},
                         timeout=60)
    assert gpu.returncode == 0, gpu.stderr
    assert "== arch: TORCH_CUDA_ARCH_LIST=9.0" in gpu.stdout


def test_gpu_check_reinstalls_without_the_extension_when_it_does_not_import(tmp_path):
    """The install check for real (the pip steps skipped): `rembert_fast._C` is missing on this machine,
    so the check fails, the check of the build without it passes, and env.json says why."""
    import importlib.util

    if importlib.util.find_spec("rembert_fast._C") is not None:
        pytest.skip("the extension is built here: its check passes and no reinstall follows")
    skip = ("install install_without_extension doctor tune_bf16 tune_fp16 gpu_tests bench_e2e bench_compile "
            "kernel_tests "
            "bench_attention bench_layer_norm bench_bias_act bench_embed")
    env = dict(os.environ, GPU_CHECK_SKIP=skip, TORCH_CUDA_ARCH_LIST="9.0", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "benches" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    steps = dict(line.split("\t")[:2] for line in (tmp_path / "out" / "steps.tsv").read_text().splitlines())
    assert steps["install_check"] == "fail(rc=1)" and steps["install_check_without_extension"] == "ok"
    install = json.loads((tmp_path / "out" / "env.json").read_text())["install"]
    assert install["torch_cuda_arch_list"] == "9.0" and install["extension"] == "missing"
    with_ext, without = install["attempts"]
    assert with_ext["build"] == "with extension" and "rembert_fast._C" in with_ext["import_error"]
    assert without == {"build": "without extension", "build_messages": [], "import_error": None}


def test_gpu_check_max_autotune_only_on_request(tmp_path):
    commands, files = _gpu_check_dry_run(tmp_path, GPU_CHECK_MAX_AUTOTUNE="1")
    assert "bench_max_autotune" in commands
    args = cli.build_parser().parse_args(commands["bench_max_autotune"][3:])
    assert args.impls == ["rembert_fast", "transformers", "torch.compile(max-autotune)"]
    # A lent GPU machine returns at most 8 files from OUTDIR: the dry run leaves the log and the table,
    # and a real run adds env.json and at most five gpu-*.json records (tune, e2e, compile, kernels,
    # max-autotune).
    assert files == ["gpu_check.log", "steps.tsv"]


def test_kernel_timing_on_cuda_is_device_time(monkeypatch):
    # On CUDA a single op is timed by do_bench (launch latency hidden behind its L2 clear), not by events
    # around one lone call; the device is only inspected, so this runs without a GPU.
    import triton.testing

    calls = []

    def fake_do_bench(fn, warmup, rep, return_mode):
        calls.append(return_mode)
        return 0.25

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    assert bench.timing.kernel_ms(lambda: None, 1, 1, torch.device("cuda")) == 0.25
    assert calls == ["median"]
    assert bench.timing.kernel_ms(lambda: None, 0, 3, torch.device("cpu")) >= 0.0
    assert calls == ["median"]  # CPU: wall-clock median, do_bench untouched


_STAND_IN_PYTHON = """#!/bin/sh
# The real interpreter, except for the steps that need a GPU: each writes a table naming its step and
# the REMBERT_FAST_BUILD_CUDA it ran with.
for last; do :; done
case "$1 $2 $3" in
    "-m rembert_fast.cli tune"|benches/bench_*)
        printf '{"step": "%s", "build_cuda": "%s"}\\n' "$*" "${REMBERT_FAST_BUILD_CUDA:-unset}" > "$last"
        exit 0;;
esac
exec "PYTHON_PATH" "$@"
"""


def test_gpu_check_records_hold_only_their_own_rows_and_no_later_step_builds_the_extension(tmp_path):
    """A real run with the GPU steps stood in for: the install check fails (no `rembert_fast._C` here),
    so every later step runs with REMBERT_FAST_BUILD_CUDA=0; the tune record holds the two tune tables
    (bf16 back before fp16 ran), the kernels record the kernel tables (forward and backward), nothing
    else."""
    import importlib.util

    if importlib.util.find_spec("rembert_fast._C") is not None:
        pytest.skip("the extension is built here: its check passes and no reinstall follows")
    python = tmp_path / "python"
    python.write_text(_STAND_IN_PYTHON.replace("PYTHON_PATH", sys.executable))
    python.chmod(0o755)
    skip = ("install install_without_extension doctor gpu_tests bench_e2e bench_compile kernel_tests "
            "training_tests")
    env = dict(os.environ, GPU_CHECK_SKIP=skip, TORCH_CUDA_ARCH_LIST="9.0", PYTHON=str(python))
    env.pop("REMBERT_FAST_BUILD_CUDA", None)
    done = subprocess.run(["bash", str(ROOT / "benches" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    steps = [line.split("\t")[:2] for line in (tmp_path / "out" / "steps.tsv").read_text().splitlines()[1:]]
    ran = [name for name, status in steps if status == "ok"]
    assert ran == ["install_check_without_extension", "tune_bf16", "tune_fp16", "bench_attention",
                   "bench_layer_norm", "bench_bias_act", "bench_embed", "bench_attention_backward",
                   "bench_layer_norm_backward", "bench_bias_act_backward"]
    (tune,) = (tmp_path / "out").glob("gpu-*-tune.json")
    (kernels,) = (tmp_path / "out").glob("gpu-*-kernels.json")
    tables = json.loads(tune.read_text())["tables"]
    assert sorted(tables) == ["bf16", "fp16"]
    assert all(f"--dtype {dtype} " in table["step"] for dtype, table in tables.items())
    benches = json.loads(kernels.read_text())["benches"]
    assert sorted(benches) == ["attention", "attention_backward", "bias_act", "bias_act_backward", "embed",
                               "layer_norm", "layer_norm_backward"]
    assert all(f"benches/bench_{name}.py " in table["step"] for name, table in benches.items())
    assert {t["build_cuda"] for t in [*tables.values(), *benches.values()]} == {"0"}
