"""Measure before choosing: time each op's candidates (the eager composition always one) on a model's
shapes and keep the fused path only where it is correct and the fastest.

`tune(device, dtype, shapes, tokens, timer=None)` probes every fused op, times the candidates that
passed on each token-count bucket, records the verdict (fused kept, or why not) in the tuning cache
and returns the table. The timer is injectable: `timer(fn) -> seconds` for one call of `fn`, median of a
few after a warm-up; the default is CUDA events on CUDA and `time.perf_counter` elsewhere.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rembert_fast.ops import probe, reference, tuning

Timer = Callable[[Callable[[], object]], float]


@dataclass(frozen=True)
class Shapes:
    """The widths an encoder layer's ops meet: hidden, FFN intermediate, attention heads, activation."""

    hidden: int = 1152
    intermediate: int = 4608
    heads: int = 18
    activation: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")


@dataclass
class Row:
    """One line of the table: op, bucket (tokens), each candidate's median ms, the choice, probe error."""

    op: str
    tokens: int
    ms: dict[str, float] = field(default_factory=dict)
    choice: str = "eager"
    probe_error: str | None = None


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """One call's time in ms (CUDA events on CUDA, so only the device's time counts; perf_counter else)."""
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


def default_timer(device: torch.device, repeats: int = 5) -> Timer:
    """Median of `repeats` timed calls after one warm-up: CUDA events on CUDA, perf_counter elsewhere."""

    def measure(fn: Callable[[], object]) -> float:
        fn()
        return statistics.median(time_call(fn, device) / 1e3 for _ in range(repeats))

    return measure


def candidates(op: str, shapes: Shapes, tokens: int, device: torch.device,
               dtype: torch.dtype) -> dict[str, Callable[[], object]]:
    """{"eager": fn, "triton": fn} for `op` on one bucket of `tokens` rows (attention: one sequence)."""
    from rembert_fast.kernels import activation, attention, layer_norm

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    h, d = shapes.hidden, shapes.hidden // shapes.heads
    if op == "layer_norm":
        x, w, b, res, xb = r(tokens, h), r(h), r(h), r(tokens, h), r(h)
        return {"eager": lambda: reference.layer_norm_ref(x, w, b, 1e-12, residual=res, x_bias=xb),
                "triton": lambda: layer_norm.layer_norm(x, w, b, 1e-12, res, xb)}
    if op == "bias_act":
        x, b = r(tokens, shapes.intermediate), r(shapes.intermediate)
        return {"eager": lambda: reference.bias_act_ref(x, b, shapes.activation),
                "triton": lambda: activation.bias_act(x, b, shapes.activation)}
    if op == "attention":
        q, k, v = (r(tokens, shapes.heads, d) for _ in range(3))
        cu = torch.tensor([0, tokens], dtype=torch.int32, device=device)
        return {"eager": lambda: reference.attention_ref(q, k, v, cu, cu, tokens, tokens),
                "triton": lambda: attention.attention_varlen(q, k, v, cu, cu, tokens, tokens)}
    if op == "attention_padded":
        q, k, v = (r(1, tokens, shapes.heads, d) for _ in range(3))
        return {"eager": lambda: reference.attention_padded_ref(q, k, v, None),
                "triton": lambda: attention.attention_padded(q, k, v, None)}
    raise ValueError(f"op {op!r} cannot be timed; timed ops are {tuple(probe.CASES)}")


def tune(device: torch.device, dtype: torch.dtype, shapes: Shapes, tokens: tuple[int, ...],
         timer: Timer | None = None) -> list[Row]:
    """Probe and time every fused op on each bucket; record each op's verdict; return the table.

    An op keeps its fused path only where its probe passed and it is faster than eager summed over the
    buckets. ValueError for an empty or non-positive bucket list."""
    if not tokens or any(t <= 0 for t in tokens):
        raise ValueError(f"tokens must be positive bucket sizes, got {tokens}")
    timer = timer or default_timer(device)
    rows: list[Row] = []
    verdicts: dict[str, str | None] = {}
    for op in probe.CASES:
        error = probe.run_probe(op, device, dtype)
        op_rows = []
        for count in tokens:
            row = Row(op, count, probe_error=error)
            with torch.no_grad():
                for name, fn in candidates(op, shapes, count, device, dtype).items():
                    if name == "eager" or error is None:
                        row.ms[name] = timer(fn) * 1e3
            op_rows.append(row)
        fused = sum(r.ms.get("triton", float("inf")) for r in op_rows)
        eager = sum(r.ms["eager"] for r in op_rows)
        if error is None and fused >= eager:
            error = f"slower than eager ({fused:.3g} ms vs {eager:.3g} ms over buckets {tokens})"
        for row in op_rows:
            row.choice = "triton" if error is None else "eager"
        verdicts[tuning.entry(op, dtype)] = error
        rows += op_rows
    tuning.record(device.type, verdicts)
    from rembert_fast.ops import dispatch

    dispatch._decisions.clear()  # decisions made before now are asked again, against these verdicts
    return rows


def format_table(rows: list[Row], key: str) -> str:
    """The table `rembert-fast tune` prints: op, key, bucket, each candidate's ms, choice, probe error."""
    lines = [f"{'op':<18} {'key':<28} {'tokens':>7} {'eager ms':>10} {'triton ms':>10} {'choice':<7} probe"]
    for r in rows:
        fused = f"{r.ms['triton']:.3f}" if "triton" in r.ms else "-"
        lines.append(f"{r.op:<18} {key:<28} {r.tokens:>7} {r.ms['eager']:>10.3f} {fused:>10} {r.choice:<7} "
                     f"{r.probe_error or 'ok'}")
    return "\n".join(lines)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def add_arguments(parser) -> None:  # type: ignore[no-untyped-def]
    """`rembert-fast tune`'s options."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--config", choices=("default",), default="default",
                       help="RemBERT's published widths (default)")
    which.add_argument("--model", help="a model directory or config.json whose widths to tune for")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="default: bf16 on CUDA, fp32 on the CPU interpreter")
    parser.add_argument("--shapes", default="128,512",
                        help="comma-separated token-count buckets (default: 128,512)")


def shapes_of(model: str | None) -> Shapes:
    """The widths of `model` (a directory holding config.json, or the file), or RemBERT's defaults."""
    if model is None:
        return Shapes()
    import json
    from pathlib import Path

    path = Path(model)
    path = path / "config.json" if path.is_dir() else path
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model}: cannot read {path}: {error}") from None
    return Shapes(cfg.get("hidden_size", 1152), cfg.get("intermediate_size", 4608),
                  cfg.get("num_attention_heads", 18), cfg.get("hidden_act", "gelu"))


def run(args) -> int:  # type: ignore[no-untyped-def]
    """`rembert-fast tune`: probe and time the fused ops, fill the cache, print the table."""
    import sys

    from rembert_fast.kernels._launch import interpreting

    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    elif interpreting():
        device = torch.device("cpu")
    else:
        print("rembert-fast tune: no CUDA device and TRITON_INTERPRET is not set: only eager runs here, "
              "nothing to tune", file=sys.stderr)
        return 2
    try:
        shapes = shapes_of(args.model)
        tokens = tuple(int(t) for t in args.shapes.split(",") if t.strip())
        dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
        rows = tune(device, dtype, shapes, tokens)
    except ValueError as error:
        print(f"rembert-fast tune: {error}", file=sys.stderr)
        return 2
    key = tuning.device_key(device.type)
    print(format_table(rows, f"{key['gpu']} {key['capability'] or ''} {str(dtype)[6:]}".strip()))
    print(f"cache: {tuning.cache_path(device.type)}")
    return 0
