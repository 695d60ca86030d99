"""`rembert-fast bench`: end-to-end and per-kernel benchmarks, rembert_fast against transformers.

End to end, on the same weights and the same inputs, in one run:
- ``rembert_fast``           rembert_fast's RemBertModel (the packed fast path);
- ``rembert_fast+graphs``    the same model through `CudaGraphRunner` (CUDA only);
- ``transformers+optimize``  a transformers RemBertModel after `rembert_fast.optimize`;
- ``transformers``           transformers' RemBertModel, eager (the reference every ratio is against);
- ``torch.compile``          `torch.compile(transformers model)`, default mode;
- ``torch.compile(max-autotune)``.
Before anything is timed, every implementation's output is compared with transformers in float32 on
the real (non-padding) positions; the max abs error is reported next to the speed, and a row whose
error exceeds twice transformers' own error in that dtype (or a floor, for float32) is flagged.

Per kernel, every op of `rembert_fast.ops` at RemBERT's widths against its eager `*_ref` in the same
run, with GB/s (and the fraction of a plain copy's bandwidth) for the memory-bound ops and TFLOP/s
for attention (plus SDPA's flash backend on CUDA).

Against the hardware: `--gemm-peak` (on by default on CUDA) measures the dense GEMM throughput of the
device in each dtype, on the model's own four GEMM shapes and (CUDA) one 8192-cube, the best of them
being the peak; every end-to-end row then reports its model TFLOP/s (`model_flops`: the FLOPs of a
forward over the real tokens only, padding is not useful work) and that as a fraction of the peak.

Timing: the median of `--iters` calls after the first call (whose output is checked and whose time,
holding compilation and autotuning, is reported separately) and `--warmup` more calls (CUDA events
on GPU, `perf_counter` on CPU). Results go
to a table on stdout and a JSON file (device, date, git commit, versions, one entry per row).

Run time: torch.compile (dynamic=False) compiles the 32-layer model once per dtype, input shape and
mode (max-autotune also benchmarks GEMM configurations), so the GPU defaults (2 dtypes x 6 shapes x 2
modes: 24 compilations) spend most of their time compiling (not yet timed on a GPU; a 32-layer default
compile took 36 s on the 2-core CPU build machine); `--no-max-autotune`, `--no-compile` or a few
`--shapes` make a quick run (benches/gpu_check.sh compiles one shape). Each row's `first_call_s` holds
its compilation, autotuning or graph capture.

Memory: `peak_activation_mb` is the CUDA allocator's peak during one call above what was allocated
before it (activations and the output). A captured CUDA graph's memory pool was allocated at capture
and stays allocated, so for ``rembert_fast+graphs`` on a captured bucket (small batches) it counts
only the copy out of the graph; batches past the largest bucket run eagerly and count in full.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import rembert_fast
from rembert_fast import __version__, ops
from rembert_fast.cuda_graphs import CudaGraphRunner

SCHEMA = "rembert_fast.bench/1"
IMPLS = (
    "rembert_fast",
    "rembert_fast+graphs",
    "transformers+optimize",
    "transformers",
    "torch.compile",
    "torch.compile(max-autotune)",
)
REFERENCE_IMPL = "transformers"
HF_IMPLS = ("transformers+optimize", "transformers", "torch.compile", "torch.compile(max-autotune)")
COMPILE_IMPLS = ("torch.compile", "torch.compile(max-autotune)")
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
               "bf16": "bfloat16", "bfloat16": "bfloat16"}
LENGTH_MODES = ("fixed", "variable")
# Max abs error vs transformers in float32 below which a float32 row agrees; for half dtypes the bar
# is twice transformers' own error in that dtype (DESIGN.md's rule for kernels), never below these.
ERROR_FLOOR = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 5e-2}
VARIABLE_MIN_LENGTH = 32  # variable lengths are uniform in [32, seq], as in the issue's targets
RESULTS_DIR = Path("benches") / "results"


@dataclass(frozen=True)
class Shape:
    """One end-to-end case: `batch` sequences padded to `seq`, all of length `seq` or uniform lengths."""

    batch: int
    seq: int
    lengths: str  # "fixed" | "variable"

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.seq} {self.lengths}"


# ----------------------------------------------------------------------------------------- arguments
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers")
    return values


def _name_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    allowed = tuple(choices)

    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
        return names

    return parse


def _shapes(text: str) -> list[Shape]:
    shapes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+)(?::(fixed|variable))?\s*", item)
        if match is None or int(match[1]) <= 0 or int(match[2]) <= 0:
            raise argparse.ArgumentTypeError(
                f"shape {item!r} is not BATCHxSEQ[:fixed|variable], e.g. 64x512:variable")
        shapes.append(Shape(int(match[1]), int(match[2]), match[3] or "fixed"))
    return shapes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `rembert-fast bench` (defaults that depend on the device are resolved in `run`)."""
    src = parser.add_argument_group("model")
    src.add_argument("--model", metavar="DIR", help="load weights from this checkpoint (default: random "
                     "weights with the default RemBERT config)")
    src.add_argument("--config", metavar="FILE", help="config.json for the random-weight model "
                     "(default: RemBERT's defaults)")
    src.add_argument("--layers", type=int, help="keep the first N layers (default: all on GPU, 2 on CPU)")
    cases = parser.add_argument_group("cases")
    cases.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    cases.add_argument("--dtypes", type=_name_list(DTYPE_NAMES),
                       help="comma list of fp32/fp16/bf16 (default: bf16,fp16 on GPU, fp32 on CPU)")
    cases.add_argument("--batch-sizes", type=_int_list, help="default: 1,8,64 on GPU, 1,8 on CPU")
    cases.add_argument("--seq-lens", type=_int_list, help="padded lengths (default: 128,512)")
    cases.add_argument("--lengths", type=_name_list(LENGTH_MODES), default=list(LENGTH_MODES),
                       help="fixed (every sequence full) and/or variable (uniform 32..seq)")
    cases.add_argument("--shapes", type=_shapes, metavar="BxL[:MODE],...",
                       help="explicit cases instead of batch-sizes x seq-lens x lengths")
    impl = parser.add_argument_group("implementations")
    impl.add_argument("--impls", type=_name_list(IMPLS), help=f"comma list from: {', '.join(IMPLS)} "
                      "(default: all that apply to the device)")
    impl.add_argument("--compile", action="store_true", help="include torch.compile variants on CPU")
    impl.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    impl.add_argument("--no-max-autotune", action="store_true", help="skip torch.compile(max-autotune)")
    impl.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=None,
                      help="per-kernel benchmarks (default: on for CUDA, off for CPU, where every op "
                      "is its eager reference)")
    impl.add_argument("--gemm-peak", action=argparse.BooleanOptionalAction, default=None,
                      help="measure the dense GEMM peak and report each row's fraction of it (default: "
                      "on for CUDA, off for CPU)")
    run_opts = parser.add_argument_group("run")
    run_opts.add_argument("--warmup", type=int,
                          help="untimed calls after the first, checked one (default: 3 GPU, 0 CPU)")
    run_opts.add_argument("--iters", type=int, help="timed calls (default: 20 GPU, 3 CPU)")
    run_opts.add_argument("--seed", type=int, default=0, help="seeds the random weights and the inputs")
    run_opts.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice); "
                          "1 gives steadier CPU timings on a busy machine")
    run_opts.add_argument("--output", metavar="FILE", help="JSON results (default: "
                          "benches/results/bench-<device>-<date>.json)")
    run_opts.add_argument("--plot", nargs="?", const="auto", metavar="PNG",
                          help="also write a bar chart (needs matplotlib; default: beside the JSON)")
    run_opts.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------- environment
def _git_commit() -> str | None:
    """$REMBERT_FAST_COMMIT when set (a lent GPU machine's copy of the tree has no .git), else git's HEAD."""
    if os.environ.get("REMBERT_FAST_COMMIT"):
        return os.environ["REMBERT_FAST_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"rembert_fast": __version__, "torch": torch.__version__,
                                       "python": platform.python_version(), "cuda": torch.version.cuda}
    for name in ("triton", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    versions["driver"] = _driver_version() if torch.cuda.is_available() else None
    return versions


def _driver_version() -> str | None:
    """The NVIDIA driver's version from nvidia-smi (torch does not expose it), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def _device_properties(device: torch.device) -> dict[str, Any] | None:
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    return {"multi_processor_count": props.multi_processor_count, "total_memory_gb": props.total_memory / 1e9,
            "capability": f"{props.major}.{props.minor}"}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


# ----------------------------------------------------------------------------------------- models
def _transformers() -> Any | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers


def _check_layers(layers: int | None, have: int) -> None:
    if layers is not None and not 0 < layers <= have:
        raise ValueError(f"--layers {layers} is outside 1..{have} (the model's num_hidden_layers)")


def _truncate(model: Any, layers: int | None) -> None:
    if layers is not None:
        model.encoder.layer = model.encoder.layer[:layers]
        model.config.num_hidden_layers = layers


def build_masters(config_dict: dict[str, Any], model_dir: str | None, layers: int | None,
                  want_hf: bool, want_fast: bool) -> tuple[Any | None, Any | None]:
    """(transformers model, rembert_fast model), float32 on CPU, in eval mode, sharing weights' values.

    With `model_dir` both load that checkpoint; otherwise transformers initialises random weights and
    rembert_fast loads them (strict), so both compute the same function.
    """
    _check_layers(layers, config_dict["num_hidden_layers"])
    hf_model = fast_model = None
    transformers = _transformers() if want_hf else None
    if model_dir is None and layers is not None:  # build only the layers that will run
        config_dict = {**config_dict, "num_hidden_layers": layers}
    if model_dir is not None:
        if transformers is not None:
            hf_model = transformers.RemBertModel.from_pretrained(model_dir)
        if want_fast:
            fast_model = rembert_fast.RemBertModel.from_pretrained(model_dir)
    else:
        if transformers is not None:
            hf_model = transformers.RemBertModel(transformers.RemBertConfig(**config_dict))
        if want_fast:
            fast_model = rembert_fast.RemBertModel(rembert_fast.RemBertConfig(**config_dict))
            if hf_model is not None:
                fast_model.load_state_dict(hf_model.state_dict(), strict=True)
    for model in (hf_model, fast_model):
        if model is not None:
            _truncate(model, layers)
            model.eval()
    return hf_model, fast_model


# ----------------------------------------------------------------------------------------- inputs
def make_inputs(shape: Shape, vocab_size: int, device: torch.device, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, L) and a right-padded mask; variable lengths are uniform in [min(32, L/4), L]."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (shape.batch, shape.seq), generator=gen)
    if shape.lengths == "fixed":
        lengths = torch.full((shape.batch,), shape.seq)
    else:
        low = min(VARIABLE_MIN_LENGTH, max(1, shape.seq // 4))
        lengths = torch.randint(low, shape.seq + 1, (shape.batch,), generator=gen)
    mask = (torch.arange(shape.seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # padding positions hold the pad id (0), as a tokenizer writes them
    return ids.to(device), mask.to(device)


# ----------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """One call's time in ms (CUDA events on GPU, so only the device's time counts)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_ms(fn: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> list[float]:
    """Per-call times in ms of `iters` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    return [_time_call(fn, device) for _ in range(iters)]


def _peak_activation_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Memory allocated above what was live before one call (activations + outputs), in MiB; CUDA only."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


# ----------------------------------------------------------------------------------------- FLOPs
def model_flops(config: Any, lengths: Iterable[int]) -> int:
    """FLOPs (a multiply-add is 2) of one RemBertModel forward over sequences of these real lengths:
    the 256->hidden projection, per layer the QKV, output and two FFN GEMMs and attention's two
    (len x len) products, and the pooler. Elementwise work (LayerNorm, GELU, softmax) is not counted."""
    lengths = [int(n) for n in lengths]
    hidden, inter = config.hidden_size, config.intermediate_size
    layers, emb = config.num_hidden_layers, config.input_embedding_size
    tokens = sum(lengths)
    dense = 2 * tokens * (emb * hidden + layers * hidden * (4 * hidden + 2 * inter))
    attention = 4 * hidden * layers * sum(n * n for n in lengths)  # QK^T and PV, every head
    pooler = 2 * len(lengths) * hidden * hidden
    return dense + attention + pooler


def _gemm_shapes(config: Any, tokens: int, device: torch.device) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the model's four GEMMs at `tokens` rows, and on CUDA the 8192-cube."""
    hidden, inter = config.hidden_size, config.intermediate_size
    mkn = [(tokens, hidden, 3 * hidden), (tokens, hidden, hidden), (tokens, hidden, inter),
           (tokens, inter, hidden)]
    if device.type == "cuda":
        mkn.append((8192, 8192, 8192))
    return {f"{m}x{k}x{n}": (m, k, n) for m, k, n in mkn}


def gemm_peak(dtype: torch.dtype, device: torch.device, shapes: dict[str, tuple[int, int, int]],
              warmup: int, iters: int) -> dict[str, Any]:
    """TFLOP/s of `F.linear` (x @ W^T, the model's layout) per (m, k, n) shape, and the best of them."""
    by_shape = {}
    for label, (m, k, n) in shapes.items():
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        with torch.inference_mode():
            ms = _kernel_ms(functools.partial(F.linear, x, w), warmup, iters, device)
        by_shape[label] = 2 * m * k * n / (ms / 1e3) / 1e12
        del x, w
    return {"tflop_per_s": max(by_shape.values()), "by_shape": by_shape}


# ----------------------------------------------------------------------------------------- end to end
def _make_callable(impl: str, hf_model: Any | None, fast_model: Any | None
                   ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (ids, mask) -> last_hidden_state (B, L, H) for `impl`, on models already on device."""
    if impl == "rembert_fast":
        return lambda ids, mask: fast_model(input_ids=ids, attention_mask=mask).last_hidden_state
    if impl == "rembert_fast+graphs":
        runner = CudaGraphRunner(fast_model)

        def through_graphs(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return runner(ids, mask).padded()

        through_graphs.runner = runner  # type: ignore[attr-defined]  # for the row's `graphs` field
        return through_graphs
    if impl == "transformers+optimize":
        patched = rembert_fast.optimize(copy.deepcopy(hf_model))
        return lambda ids, mask: patched(input_ids=ids, attention_mask=mask).last_hidden_state
    if impl == "transformers":
        return lambda ids, mask: hf_model(input_ids=ids, attention_mask=mask).last_hidden_state
    mode = "max-autotune" if impl == "torch.compile(max-autotune)" else None
    compiled = torch.compile(hf_model, mode=mode, dynamic=False)
    return lambda ids, mask: compiled(input_ids=ids, attention_mask=mask).last_hidden_state


def graph_status(runner: CudaGraphRunner, mask: torch.Tensor) -> str:
    """How a `CudaGraphRunner` ran this batch: "replayed", or "eager: <why>" (the row's `graphs` field,
    so a graphs row that fell back to eager is not read as a graph figure)."""
    lengths = mask.sum(dim=1)
    key = runner.bucket(int(lengths.sum()), int(lengths.max()), mask.shape[0])
    if key is None:
        return "eager: no bucket fits"
    if key in runner.captured:
        return "replayed"
    if runner.capture_error is not None:
        return f"eager: capture failed ({runner.capture_error})"
    return "eager: not captured (the eager attention backend cannot be captured)"


def _max_error(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    real = mask.bool()
    return float((out.float() - ref.float())[real].abs().max())


def _prepare_compile() -> None:
    torch._dynamo.reset()
    # Each (dtype, shape, mode) is one more entry in the cache of the same forward code object; the
    # default limit (8) would silently fall back to eager after a few shapes.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)


def bench_e2e(hf_master: Any | None, fast_master: Any | None, impls: list[str], dtypes: list[str],
              shapes: list[Shape], device: torch.device, warmup: int, iters: int, seed: int,
              progress: Any, gemm_peaks: dict[str, dict[str, Any]] | None = None,
              on_shape: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """One row per (dtype, shape, impl); see the module docstring. `gemm_peaks` maps a dtype name to
    `gemm_peak`'s result, for each row's fraction of it; `on_shape` gets the rows so far after each
    shape (to save them before a time limit can cut the run off)."""
    rows: list[dict[str, Any]] = []
    config = (hf_master if hf_master is not None else fast_master).config
    ref32 = copy.deepcopy(hf_master).to(device) if hf_master is not None else None
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        hf_model = copy.deepcopy(hf_master).to(device=device, dtype=dtype) if hf_master is not None else None
        fast_model = (copy.deepcopy(fast_master).to(device=device, dtype=dtype)
                      if fast_master is not None else None)
        if any(i in COMPILE_IMPLS for i in impls):
            _prepare_compile()
        fns = {}
        for impl in impls:
            try:
                fns[impl] = _make_callable(impl, hf_model, fast_model)
            except Exception as err:  # an impl that cannot be built is reported, the others still run
                fns[impl] = err
        for shape in shapes:
            ids, mask = make_inputs(shape, config.vocab_size, device, seed)
            progress.set_description(f"{dtype_name} {shape.label}")
            with torch.inference_mode():
                ref = None if ref32 is None else ref32(input_ids=ids, attention_mask=mask).last_hidden_state
                results = _bench_shape(fns, ids, mask, ref, device, warmup, iters)
            case = {"kind": "e2e", "dtype": dtype_name, "batch": shape.batch, "seq": shape.seq,
                    "lengths": shape.lengths, "real_tokens": int(mask.sum()),
                    "padded_tokens": shape.batch * shape.seq}
            shape_rows = [{**case, "impl": impl, **results[impl]} for impl in impls]
            for row in shape_rows:
                runner = getattr(fns[row["impl"]], "runner", None)
                if runner is not None and row["status"] == "ok":
                    row["graphs"] = graph_status(runner, mask)
            peak = (gemm_peaks or {}).get(dtype_name)
            _judge(shape_rows, dtype_name, results.get(REFERENCE_IMPL, {}).get("max_abs_err"),
                   model_flops(config, mask.sum(dim=1).tolist()), peak["tflop_per_s"] if peak else None)
            rows += shape_rows
            progress.update(len(impls))
            if on_shape is not None:
                on_shape(rows)
        del hf_model, fast_model, fns
    return rows


def _bench_shape(fns: dict[str, Any], ids: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor | None,
                 device: torch.device, warmup: int, iters: int) -> dict[str, dict[str, Any]]:
    """Every implementation on one input: first call (checked), warm-up, then timed calls interleaved
    across implementations, so a change in the machine's load hits them all alike."""
    results: dict[str, dict[str, Any]] = {}
    live: dict[str, Callable[[], Any]] = {}
    for impl, fn in fns.items():
        if isinstance(fn, Exception):
            results[impl] = {"status": f"error: {type(fn).__name__}: {fn}"}
            continue
        call = functools.partial(fn, ids, mask)
        try:
            t0 = time.perf_counter()
            out = call()
            _sync(device)
            first_call_s = time.perf_counter() - t0
            error = _max_error(out, ref, mask) if ref is not None else None
            del out
            for _ in range(warmup):
                call()
        except Exception as err:  # one failing implementation must not hide the others' numbers
            results[impl] = {"status": f"error: {type(err).__name__}: {err}"}
            continue
        results[impl] = {"status": "ok", "first_call_s": round(first_call_s, 4), "max_abs_err": error}
        live[impl] = call
    times: dict[str, list[float]] = {impl: [] for impl in live}
    _sync(device)
    for _ in range(iters):
        for impl, call in list(live.items()):
            try:
                times[impl].append(_time_call(call, device))
            except Exception as err:
                results[impl] = {"status": f"error: {type(err).__name__}: {err}"}
                del live[impl]
    for impl, call in live.items():
        results[impl].update(median_ms=statistics.median(times[impl]), min_ms=min(times[impl]),
                             max_ms=max(times[impl]), iters=iters,
                             peak_activation_mb=_peak_activation_mb(call, device))
    return results


def _judge(rows: list[dict[str, Any]], dtype_name: str, hf_error: float | None, flops: int,
           peak_tflop_per_s: float | None) -> None:
    """Fill tokens/s, model TFLOP/s (and its fraction of the GEMM peak), the ratio vs transformers
    eager and whether each row's output agrees."""
    bar = ERROR_FLOOR[dtype_name] if hf_error is None else max(ERROR_FLOOR[dtype_name], 2 * hf_error)
    ok = [r for r in rows if r["status"] == "ok"]
    for row in ok:
        row["tokens_per_s"] = row["real_tokens"] / (row["median_ms"] / 1e3)
        row["model_tflop_per_s"] = flops / (row["median_ms"] / 1e3) / 1e12
        row["fraction_of_gemm_peak"] = (row["model_tflop_per_s"] / peak_tflop_per_s
                                        if peak_tflop_per_s else None)
        row["error_bar"] = bar
        row["agrees"] = None if row["max_abs_err"] is None else row["max_abs_err"] <= bar
    reference = next((r for r in ok if r["impl"] == REFERENCE_IMPL), None)
    for row in ok:
        row["ratio_vs_transformers"] = (row["tokens_per_s"] / reference["tokens_per_s"]
                                        if reference is not None else None)


# ----------------------------------------------------------------------------------------- kernels
def bench_kernels(config: Any, dtypes: list[str], shapes: list[Shape], device: torch.device, warmup: int,
                  iters: int, progress: Any) -> list[dict[str, Any]]:
    """Each op of rembert_fast.ops against its eager reference at the model's widths, fixed lengths."""
    rows: list[dict[str, Any]] = []
    sizes = list(dict.fromkeys((s.batch, s.seq) for s in shapes))
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for batch, seq in sizes:
            progress.set_description(f"kernels {dtype_name} {batch}x{seq}")
            for case in _kernel_cases(config, batch, seq, dtype, device):
                rows.append(_time_kernel(case, dtype_name, batch, seq, device, warmup, iters))
            progress.update(1)
    return rows


@dataclass
class _KernelCase:
    op: str
    shape: str
    fast: Callable[[], Any]
    references: dict[str, Callable[[], Any]]
    bytes_moved: int | None  # bytes read + written, for GB/s and the comparison with a plain copy
    flops: float | None  # for TFLOP/s


def _kernel_cases(config: Any, batch: int, seq: int, dtype: torch.dtype, device: torch.device
                  ) -> list[_KernelCase]:
    tokens = batch * seq
    hidden, inter, emb = config.hidden_size, config.intermediate_size, config.input_embedding_size
    heads = config.num_attention_heads
    head_dim = hidden // heads
    eps = config.layer_norm_eps
    size = torch.finfo(dtype).bits // 8

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    cases = []
    x, res, w, b, xb = rand(tokens, hidden), rand(tokens, hidden), rand(hidden), rand(hidden), rand(hidden)
    cases.append(_KernelCase(
        "layer_norm(+bias+residual)", f"{tokens}x{hidden}",
        lambda: ops.layer_norm(x, w, b, eps, residual=res, x_bias=xb),
        {"eager": lambda: ops.layer_norm_ref(x, w, b, eps, residual=res, x_bias=xb)},
        3 * tokens * hidden * size, None))
    h, hb = rand(tokens, inter), rand(inter)
    cases.append(_KernelCase(
        f"bias_act({config.hidden_act})", f"{tokens}x{inter}",
        lambda: ops.bias_act(h, hb, config.hidden_act),
        {"eager": lambda: ops.bias_act_ref(h, hb, config.hidden_act)},
        2 * tokens * inter * size, None))
    qkv = rand(tokens, 3, heads, head_dim)
    q, k, v = qkv.unbind(1)
    cu = torch.arange(0, (batch + 1) * seq, seq, device=device, dtype=torch.int32)
    flops = 4.0 * batch * seq * seq * heads * head_dim
    references = {"eager": lambda: ops.attention_ref(q, k, v, cu, cu, seq, seq)}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qp, kp, vp = (t.reshape(batch, seq, heads, head_dim).transpose(1, 2).contiguous() for t in (q, k, v))

        def sdpa_flash() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(qp, kp, vp)

        references["sdpa_flash"] = sdpa_flash
    cases.append(_KernelCase(f"attention(varlen, d={head_dim})", f"{batch}x{seq}x{heads}x{head_dim}",
                             lambda: ops.attention(q, k, v, cu, cu, seq, seq), references, None, flops))
    ids = torch.randint(0, config.vocab_size, (tokens,), device=device)
    pos = torch.arange(seq, device=device).repeat(batch)
    tt = torch.zeros(tokens, dtype=torch.long, device=device)
    word, pos_w, type_w = rand(config.vocab_size, emb), rand(config.max_position_embeddings, emb), rand(
        config.type_vocab_size, emb)
    lw, lb = rand(emb), rand(emb)
    # Bytes DRAM must move: each distinct table row once (the position and type rows are reused from
    # L2), the ids, the LN parameters and the output. ops.embed includes the id check's 8-byte
    # read-back (what the model pays); benches/bench_embed.py times the kernel alone.
    distinct_rows = sum(int(torch.unique(t).numel()) for t in (ids, pos, tt))
    embed_bytes = (distinct_rows + 2 + tokens) * emb * size + 3 * tokens * ids.element_size()
    cases.append(_KernelCase(
        "embed(gather+LN, id check incl.)", f"{tokens}x{emb}",
        lambda: ops.embed(ids, pos, tt, word, pos_w, type_w, lw, lb, eps),
        {"eager": lambda: ops.embed_ref(ids, pos, tt, word, pos_w, type_w, lw, lb, eps)},
        embed_bytes, None))
    return cases


def _kernel_ms(fn: Callable[[], Any], warmup: int, iters: int, device: torch.device) -> float:
    """Median ms of one call of a single op. On CUDA `triton.testing.do_bench`: it clears L2 before each
    call, and that clear keeps the GPU busy while the host launches the op, so the figure is device
    time. Events around one lone call (`time_ms`) would also count the host's launch latency, tens of
    microseconds for a Triton launch: more than a LayerNorm over a few thousand rows takes."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return statistics.median(time_ms(fn, warmup, iters, device))


def _time_kernel(case: _KernelCase, dtype_name: str, batch: int, seq: int, device: torch.device,
                 warmup: int, iters: int) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "kernel", "op": case.op, "shape": case.shape, "dtype": dtype_name,
                           "batch": batch, "seq": seq, "backend": ops.requested_backend()}
    try:
        with torch.inference_mode():
            median = _kernel_ms(case.fast, warmup, iters, device)
            row.update(status="ok", median_ms=median)
            for name, ref in case.references.items():
                try:
                    ref_median = _kernel_ms(ref, warmup, iters, device)
                except Exception as err:  # e.g. SDPA's flash backend refuses fp32: the kernel's row stands
                    row[f"{name}_error"] = f"{type(err).__name__}: {err}"
                    continue
                row[f"{name}_median_ms"] = ref_median
                row[f"speedup_vs_{name}"] = ref_median / median
            if case.bytes_moved is not None:
                row["gb_per_s"] = case.bytes_moved / (median / 1e3) / 1e9
                # The ceiling: a clone moving the same bytes (half read, half written).
                source = torch.empty(case.bytes_moved // 2, dtype=torch.uint8, device=device)
                copy_ms = _kernel_ms(source.clone, warmup, iters, device)
                row["copy_gb_per_s"] = case.bytes_moved / (copy_ms / 1e3) / 1e9
                row["fraction_of_copy_bandwidth"] = copy_ms / median
            if case.flops is not None:
                row["tflop_per_s"] = case.flops / (median / 1e3) / 1e12
    except Exception as err:  # a kernel that fails here is a finding to report, not a reason to stop
        row.update(status=f"error: {type(err).__name__}: {err}")
    return row


# ----------------------------------------------------------------------------------------- report
def format_table(rows: list[dict[str, Any]]) -> str:
    """The end-to-end rows as a fixed-width text table."""
    head = (f"{'impl':<28} {'dtype':<9} {'shape':<16} {'real tok':>9} {'median ms':>10} {'tok/s':>11} "
            f"{'vs hf':>6} {'TFLOP/s':>8} {'of GEMM':>7} {'act MiB':>8} {'max err':>9} {'ok':>3}")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['batch']}x{r['seq']} {r['lengths'][:3]}"
        if r["status"] != "ok":
            lines.append(f"{r['impl']:<28} {r['dtype']:<9} {shape:<16} {r['status']}")
            continue
        ratio = "-" if r["ratio_vs_transformers"] is None else f"{r['ratio_vs_transformers']:.2f}"
        peak = "-" if r["peak_activation_mb"] is None else f"{r['peak_activation_mb']:.0f}"
        err = "-" if r["max_abs_err"] is None else f"{r['max_abs_err']:.1e}"
        ok = "-" if r["agrees"] is None else ("yes" if r["agrees"] else "NO")
        of_gemm = "-" if r.get("fraction_of_gemm_peak") is None else f"{r['fraction_of_gemm_peak']:.0%}"
        lines.append(f"{r['impl']:<28} {r['dtype']:<9} {shape:<16} {r['real_tokens']:>9} "
                     f"{r['median_ms']:>10.2f} {r['tokens_per_s']:>11.0f} {ratio:>6} "
                     f"{r.get('model_tflop_per_s', 0.0):>8.1f} {of_gemm:>7} {peak:>8} {err:>9} {ok:>3}")
        if r.get("graphs", "replayed") != "replayed":
            lines.append(f"  ^ {r['graphs']}")
    return "\n".join(lines)


def format_kernel_table(rows: list[dict[str, Any]]) -> str:
    """The per-kernel rows as a fixed-width text table."""
    head = (f"{'op':<28} {'dtype':<9} {'shape':<18} {'median ms':>10} {'vs eager':>9} {'GB/s':>8} "
            f"{'of copy':>8} {'TFLOP/s':>8} {'vs SDPA':>8}")
    lines = [head, "-" * len(head)]

    def cell(r: dict[str, Any], key: str, spec: str) -> str:
        return "-" if r.get(key) is None else format(r[key], spec)

    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['op']:<28} {r['dtype']:<9} {r['shape']:<18} {r['status']}")
            continue
        lines.append(f"{r['op']:<28} {r['dtype']:<9} {r['shape']:<18} {r['median_ms']:>10.3f} "
                     f"{cell(r, 'speedup_vs_eager', '.2f'):>9} {cell(r, 'gb_per_s', '.0f'):>8} "
                     f"{cell(r, 'fraction_of_copy_bandwidth', '.0%'):>8} {cell(r, 'tflop_per_s', '.1f'):>8} "
                     f"{cell(r, 'speedup_vs_sdpa_flash', '.2f'):>8}")
    return "\n".join(lines)


def summary(record: dict[str, Any]) -> str:
    """A whole JSON record as text: the GEMM peak, whether the run finished, both tables."""
    lines = [f"GEMM peak {dtype}: {peak['tflop_per_s']:.0f} TFLOP/s"
             for dtype, peak in record.get("gemm_peak", {}).items()]
    if not record.get("complete", True):
        lines.append("INCOMPLETE: the run was cut off; these are the cases it finished")
    if record.get("kernels"):
        lines.append(format_kernel_table(record["kernels"]))
    lines.append(format_table(record["rows"]))
    return "\n".join(lines)


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """A bar chart of real tokens/s per case and implementation (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib, which is not installed: pip install matplotlib"
                           ) from None
    ok = [r for r in rows if r["status"] == "ok"]
    cases = list(dict.fromkeys(f"{r['dtype']} {r['batch']}x{r['seq']} {r['lengths']}" for r in ok))
    impls = list(dict.fromkeys(r["impl"] for r in ok))
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cases) * max(1, len(impls)) * 0.5), 4.5))
    for i, impl in enumerate(impls):
        values = {f"{r['dtype']} {r['batch']}x{r['seq']} {r['lengths']}": r["tokens_per_s"]
                  for r in ok if r["impl"] == impl}
        ax.bar([c + i * width for c in range(len(cases))], [values.get(c, 0.0) for c in cases], width,
               label=impl)
    ax.set_xticks([c + width * (len(impls) - 1) / 2 for c in range(len(cases))], cases, rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("real tokens / s")
    ax.set_title("RemBERT forward throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------- driver
class _NoProgress:
    def set_description(self, _text: str) -> None:
        pass

    def update(self, _n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _resolve(args: argparse.Namespace, device: torch.device, have_hf: bool) -> dict[str, Any]:
    """Device-dependent defaults, and the implementation list after the skip flags."""
    on_gpu = device.type == "cuda"
    dtypes = [DTYPE_NAMES[d] for d in (args.dtypes or (["bf16", "fp16"] if on_gpu else ["fp32"]))]
    if args.shapes:
        shapes = args.shapes
    else:
        shapes = [Shape(b, s, mode) for b in (args.batch_sizes or ([1, 8, 64] if on_gpu else [1, 8]))
                  for s in (args.seq_lens or [128, 512]) for mode in args.lengths]
    if args.impls:
        impls = list(args.impls)
    else:
        impls = ["rembert_fast"]
        if on_gpu:
            impls += ["rembert_fast+graphs", "transformers+optimize"]
        impls += ["transformers", *COMPILE_IMPLS] if (on_gpu or args.compile) else ["transformers"]
    if args.no_compile:
        impls = [i for i in impls if i not in COMPILE_IMPLS]
    if args.no_max_autotune:
        impls = [i for i in impls if i != "torch.compile(max-autotune)"]
    notes = []
    if not on_gpu and "rembert_fast+graphs" in impls:
        impls.remove("rembert_fast+graphs")
        notes.append("rembert_fast+graphs skipped: CUDA graphs need a CUDA device")
    if not have_hf:
        dropped = [i for i in impls if i in HF_IMPLS]
        impls = [i for i in impls if i not in HF_IMPLS]
        notes.append("transformers is not installed: benchmarking rembert_fast alone, no reference "
                     "and no error check" + (f" (skipped {', '.join(dropped)})" if dropped else ""))
    if not impls:
        raise ValueError("no implementation left to benchmark; check --impls and the skip flags")
    return {
        "dtypes": dtypes, "shapes": shapes, "impls": impls, "notes": notes,
        "layers": args.layers if args.layers is not None else (None if on_gpu else 2),
        "warmup": args.warmup if args.warmup is not None else (3 if on_gpu else 0),
        "iters": args.iters if args.iters is not None else (20 if on_gpu else 3),
        "kernels": args.kernels if args.kernels is not None else on_gpu,
        "gemm_peak": args.gemm_peak if args.gemm_peak is not None else on_gpu,
    }


def _check_output(output: Path) -> None:
    """The JSON record's path can be written: not a directory, in a directory that exists or can be made."""
    if output.is_dir():
        raise ValueError(f"--output {str(output)!r} is a directory; name a .json file")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output {str(output)!r}: cannot create its directory ({error})") from None
    if not os.access(output.parent, os.W_OK):
        raise ValueError(f"--output {str(output)!r}: its directory is not writable")


def _config_dict(args: argparse.Namespace) -> dict[str, Any]:
    if args.model is not None:
        return rembert_fast.RemBertConfig.from_pretrained(args.model).to_dict()
    if args.config is not None:
        return rembert_fast.RemBertConfig.from_pretrained(args.config).to_dict()
    return rembert_fast.RemBertConfig().to_dict()


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed arguments describe; print the tables, write JSON (and a PNG)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and
                                                              torch.cuda.is_available()) else "cpu")
    have_hf = _transformers() is not None
    stamp = datetime.datetime.now(datetime.timezone.utc)
    output = Path(args.output) if args.output else (
        RESULTS_DIR / f"bench-{_slug(_device_name(device))}-{stamp:%Y%m%d-%H%M%S}.json")
    # Settings that cannot work are refused before minutes of model building, in one line (exit 2).
    try:
        if args.threads is not None and args.threads <= 0:
            raise ValueError(f"--threads {args.threads} must be a positive number of threads")
        plan = _resolve(args, device, have_hf)
        config_dict = _config_dict(args)
        _check_layers(plan["layers"], config_dict["num_hidden_layers"])
        max_len = config_dict["max_position_embeddings"]
        too_long = [s.label for s in plan["shapes"] if s.seq > max_len]
        if too_long:
            raise ValueError(f"shapes {too_long} exceed max_position_embeddings={max_len}")
        _check_output(output)
        if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib, which is not installed: pip install matplotlib")
    except ValueError as error:
        print(f"rembert-fast bench: error: {error}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for note in plan["notes"]:
        print(f"note: {note}", file=sys.stderr)

    torch.manual_seed(args.seed)  # random weights too: separate runs with one seed time the same model
    hf_master, fast_master = build_masters(config_dict, args.model, plan["layers"], have_hf,
                                           any(i.startswith("rembert_fast") for i in plan["impls"]))
    model_config = (hf_master if hf_master is not None else fast_master).config
    total = len(plan["dtypes"]) * len(plan["shapes"]) * len(plan["impls"])
    if plan["kernels"]:
        total += len(plan["dtypes"]) * len({(s.batch, s.seq) for s in plan["shapes"]})
    progress: Any = _NoProgress()
    if not args.no_progress:
        progress = tqdm(total=total, unit="case", file=sys.stderr)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "date": stamp.isoformat(timespec="seconds"),
        "complete": False,  # until every case has run: a run cut off keeps the shapes it finished
        "device": device.type,
        "device_name": _device_name(device),
        "device_properties": _device_properties(device),
        "git_commit": _git_commit(),
        "versions": _versions(),
        "model": {"source": args.model or args.config or "default RemBertConfig, random weights",
                  "num_hidden_layers": model_config.num_hidden_layers,
                  "hidden_size": model_config.hidden_size,
                  "num_attention_heads": model_config.num_attention_heads},
        "settings": {"warmup": plan["warmup"], "iters": plan["iters"], "seed": args.seed,
                     "impls": plan["impls"], "dtypes": plan["dtypes"], "threads": torch.get_num_threads(),
                     "reference": REFERENCE_IMPL if have_hf else None,
                     "error_reference": "transformers float32" if have_hf else None},
        "notes": plan["notes"],
        "gemm_peak": {},
        "rows": [],
        "kernels": [],
    }
    output.parent.mkdir(parents=True, exist_ok=True)

    def save(**fields: Any) -> None:
        # Written after every shape: a time limit's SIGTERM/SIGKILL runs no cleanup, so what is on disk
        # when it strikes is what survives. Replaced atomically, so a kill never leaves half a file.
        result.update(fields)
        partial = output.with_name(output.name + ".partial")
        partial.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        partial.replace(output)

    save()  # the metadata, at once: a run cut off before its first case still says what it ran on
    try:
        if plan["gemm_peak"]:
            # First, on an idle device (no model copies yet), and saved at once: a few seconds in all.
            progress.set_description("GEMM peak")
            shapes = _gemm_shapes(model_config, max(s.batch * s.seq for s in plan["shapes"]), device)
            save(gemm_peak={d: gemm_peak(getattr(torch, d), device, shapes, max(1, plan["warmup"]),
                                         plan["iters"]) for d in plan["dtypes"]})
        rows = bench_e2e(hf_master, fast_master, plan["impls"], plan["dtypes"], plan["shapes"], device,
                         plan["warmup"], plan["iters"], args.seed, progress, result["gemm_peak"],
                         on_shape=lambda so_far: save(rows=so_far))
        kernels = (bench_kernels(model_config, plan["dtypes"], plan["shapes"], device,
                                 max(1, plan["warmup"]), plan["iters"], progress) if plan["kernels"] else [])
    finally:
        progress.close()
    save(rows=rows, kernels=kernels, complete=True)

    print(f"device: {result['device_name']}  layers: {model_config.num_hidden_layers}  "
          f"torch {result['versions']['torch']}  median of {plan['iters']} calls after 1 + {plan['warmup']} "
          "untimed")
    if kernels:
        print(format_kernel_table(kernels))
        print()
    print(format_table(rows))
    print(f"\nwrote {output}")
    if args.plot is not None:
        png = output.with_suffix(".png") if args.plot == "auto" else Path(args.plot)
        try:
            write_plot(rows, png)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"wrote {png}")
    bad = [r for r in rows if r["status"] != "ok" or r.get("agrees") is False]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m rembert_fast.bench ...`: the same as `rembert-fast bench ...`."""
    parser = argparse.ArgumentParser(prog="rembert-fast bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
