"""End-to-end cases: the models (transformers and rembert_fast on the same weights), the inputs, one
callable per implementation, and the rows: first call checked against transformers in float32,
warm-up, timed calls interleaved across implementations, then tokens/s, model TFLOP/s, the ratio to
transformers eager and whether the output agrees.

A variable-length case can be a stream of batches (`--stream N`): N batches of one padded shape with
different lengths, as a batch job or a server meets them; one timed call is a pass over all N, so an
implementation that recompiles for a new token count pays for it. The first pass (after the checked
first call) is untimed and reported apart as `first_pass_s`: it holds any compilation the stream causes.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import rembert_fast
from rembert_fast.bench import timing
from rembert_fast.bench.flops import model_flops
from rembert_fast.cuda_graphs import CudaGraphRunner

IMPLS = (
    "rembert_fast",
    "rembert_fast+graphs",
    "rembert_fast+compile",
    "transformers+optimize",
    "transformers",
    "torch.compile",
    "torch.compile(max-autotune)",
)
REFERENCE_IMPL = "transformers"
HF_IMPLS = ("transformers+optimize", "transformers", "torch.compile", "torch.compile(max-autotune)")
FAST_COMPILE_IMPL = "rembert_fast+compile"  # torch.compile(rembert_fast model, dynamic=True)
COMPILE_IMPLS = (FAST_COMPILE_IMPL, "torch.compile", "torch.compile(max-autotune)")
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
               "bf16": "bfloat16", "bfloat16": "bfloat16"}
LENGTH_MODES = ("fixed", "variable")
# Max abs error vs transformers in float32 below which a float32 row agrees; for half dtypes the bar
# is twice transformers' own error in that dtype (the rule the kernel tests hold to), never below these.
ERROR_FLOOR = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 5e-2}
VARIABLE_MIN_LENGTH = 32  # variable lengths are uniform in [32, seq], as in the targets


@dataclass(frozen=True)
class Shape:
    """One end-to-end case: `batch` sequences padded to `seq`, all of length `seq` or uniform lengths."""

    batch: int
    seq: int
    lengths: str  # "fixed" | "variable"

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.seq} {self.lengths}"


# ----------------------------------------------------------------------------------------- models
def load_transformers() -> Any | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers


def check_layers(layers: int | None, have: int) -> None:
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
    check_layers(layers, config_dict["num_hidden_layers"])
    hf_model = fast_model = None
    transformers = load_transformers() if want_hf else None
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


def make_batches(shape: Shape, vocab_size: int, device: torch.device, seed: int, stream: int
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The case's inputs: one batch, or for a variable-length case `stream` batches of the same padded
    shape with different lengths (seeds `seed`, `seed + 1`, ...)."""
    count = stream if shape.lengths == "variable" else 1
    return [make_inputs(shape, vocab_size, device, seed + i) for i in range(count)]


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
    if impl == FAST_COMPILE_IMPL:
        # dynamic=True: the token count and the longest sequence stay symbolic (architecture: the
        # packed path under torch.compile), so one compilation serves a stream of batches.
        compiled_fast = torch.compile(fast_model, dynamic=True)
        return lambda ids, mask: compiled_fast(input_ids=ids, attention_mask=mask).last_hidden_state
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
    if not runner.use_graphs:
        return "eager: not captured (graphs are off: the model is not on CUDA)"
    return "eager: not captured yet"


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
              on_shape: Callable[[list[dict[str, Any]]], None] | None = None,
              stream: int = 1) -> list[dict[str, Any]]:
    """One row per (dtype, shape, impl); see the module docstring. `gemm_peaks` maps a dtype name to
    `gemm_peak`'s result, for each row's fraction of it; `on_shape` gets the rows so far after each
    shape (to save them before a time limit can cut the run off); `stream` batches make up each
    variable-length case."""
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
            batches = make_batches(shape, config.vocab_size, device, seed, stream)
            ids, mask = batches[0]
            progress.set_description(f"{dtype_name} {shape.label}")
            with torch.inference_mode():
                ref = None if ref32 is None else ref32(input_ids=ids, attention_mask=mask).last_hidden_state
                results = _bench_shape(fns, batches, ref, device, warmup, iters)
            lengths = [n for _, m in batches for n in m.sum(dim=1).tolist()]
            case = {"kind": "e2e", "dtype": dtype_name, "batch": shape.batch, "seq": shape.seq,
                    "lengths": shape.lengths, "stream_batches": len(batches), "real_tokens": sum(lengths),
                    "padded_tokens": len(batches) * shape.batch * shape.seq}
            shape_rows = [{**case, "impl": impl, **results[impl]} for impl in impls]
            for row in shape_rows:
                runner = getattr(fns[row["impl"]], "runner", None)
                if runner is not None and row["status"] == "ok":
                    row["graphs"] = graph_status(runner, mask)
            peak = (gemm_peaks or {}).get(dtype_name)
            _judge(shape_rows, dtype_name, results.get(REFERENCE_IMPL, {}).get("max_abs_err"),
                   model_flops(config, lengths), peak["tflop_per_s"] if peak else None)
            rows += shape_rows
            progress.update(len(impls))
            if on_shape is not None:
                on_shape(rows)
        del hf_model, fast_model, fns
    return rows


def _bench_shape(fns: dict[str, Any], batches: list[tuple[torch.Tensor, torch.Tensor]],
                 ref: torch.Tensor | None, device: torch.device, warmup: int, iters: int
                 ) -> dict[str, dict[str, Any]]:
    """Every implementation on one case: first call on the first batch (checked against `ref`), the
    rest of a first pass over the batches, warm-up, then timed passes interleaved across
    implementations, so a change in the machine's load hits them all alike."""
    ids, mask = batches[0]
    results: dict[str, dict[str, Any]] = {}
    live: dict[str, Callable[[], Any]] = {}
    for impl, fn in fns.items():
        if isinstance(fn, Exception):
            results[impl] = {"status": f"error: {type(fn).__name__}: {fn}"}
            continue
        call = functools.partial(_run_all, fn, batches)
        try:
            t0 = time.perf_counter()
            out = fn(ids, mask)
            timing.sync(device)
            first_call_s = time.perf_counter() - t0
            error = _max_error(out, ref, mask) if ref is not None else None
            del out
            t0 = time.perf_counter()
            _run_all(fn, batches[1:])
            timing.sync(device)
            first_pass_s = time.perf_counter() - t0
            for _ in range(warmup):
                call()
        except Exception as err:  # one failing implementation must not hide the others' numbers
            results[impl] = {"status": f"error: {type(err).__name__}: {err}"}
            continue
        results[impl] = {"status": "ok", "first_call_s": round(first_call_s, 4),
                         "first_pass_s": round(first_pass_s, 4), "max_abs_err": error}
        live[impl] = call
    times: dict[str, list[float]] = {impl: [] for impl in live}
    timing.sync(device)
    for _ in range(iters):
        for impl, call in list(live.items()):
            try:
                times[impl].append(timing.time_call(call, device))
            except Exception as err:
                results[impl] = {"status": f"error: {type(err).__name__}: {err}"}
                del live[impl]
    for impl, call in live.items():
        results[impl].update(median_ms=statistics.median(times[impl]), min_ms=min(times[impl]),
                             max_ms=max(times[impl]), iters=iters,
                             peak_activation_mb=timing.peak_activation_mb(call, device))
    return results


def _run_all(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for ids, mask in batches:
        fn(ids, mask)


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
