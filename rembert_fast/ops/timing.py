"""`rembert-fast tune`: make, ahead of time, the per-bucket choices a model's first calls would make.

`tune(device, dtype, shapes, tokens, seqlens, timer=None)` lists the call classes an encoder of these
widths meets on each token bucket (`call_classes`: the embedding, the varlen and the full-batch
attention, the two GEMM + LayerNorm epilogues, the GEMM + activation), probes each op's candidates
(`tuning.fused_ok`), times those that passed on a bucket-shaped input, records the fastest in the tuning
cache exactly as a first use would (`rembert_fast.ops.choosing`) and returns the table. The timer is
injectable, `timer(name, fn) -> seconds` per call; the default is the median of a few calls after a
warm-up: CUDA events on CUDA, `time.perf_counter` elsewhere (the interpreter too: an explicit tune
there measures the interpreter, which a first use never does).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rembert_fast.ops import candidates, choosing, tuning

Timer = Callable[[Callable[[], object]], float]


@dataclass(frozen=True)
class Shapes:
    """The widths an encoder layer's ops meet: hidden, FFN intermediate, attention heads, activation,
    the embedding width, and whether attention is causal (a decoder)."""

    hidden: int = 1152
    intermediate: int = 4608
    heads: int = 18
    activation: str = "gelu"
    embedding: int = 256
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "heads", "embedding"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")


@dataclass
class Row:
    """One line of the table: op, call class (the cache's name), bucket, each candidate's median ms,
    the choice, and the probe errors of the candidates left out."""

    op: str
    entry: str
    tokens: int
    seqlen: int
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


def call_classes(shapes: Shapes, tokens: tuple[int, ...],
                 seqlens: tuple[int, ...]) -> list[tuple[str, tuple, tuple, tuple[int, int]]]:
    """(op, variant, width, bucket) of every call an encoder of `shapes` makes on each token bucket
    (attention: on each sequence-length bucket too), as `ops` keys them."""
    from rembert_fast.ops.dispatch import _pow2

    h, f, d = shapes.hidden, shapes.intermediate, shapes.hidden // shapes.heads
    classes = []
    for count in dict.fromkeys(_pow2(t) for t in tokens):
        classes.append(("embed", (True,), (shapes.embedding, h), (count, 0)))
        for length in dict.fromkeys(_pow2(s) for s in seqlens):
            attention = (shapes.heads, d), (count, length)
            classes.append(("attention", (shapes.causal, True), *attention))
            classes.append(("attention_padded", (shapes.causal, False), *attention))
        classes += [("linear_residual_layer_norm", (), (h, h), (count, 0)),
                    ("linear_bias_act", (shapes.activation,), (h, f), (count, 0)),
                    ("linear_residual_layer_norm", (), (f, h), (count, 0))]
    return classes


def decide_ahead(shapes: Shapes, tokens: int, seqlen: int, device: torch.device,
                 dtype: torch.dtype) -> dict[str, str]:
    """Make now, as a first use would (probe, time, choose), every decision an encoder of `shapes` needs
    for `tokens` rows whose longest sequence is `seqlen`: what a CUDA-graph capture calls first, so that
    nothing is probed or timed inside it. Returns {call class: the candidate chosen}."""
    from rembert_fast.ops import dispatch

    made = {}
    for op, variant, width, bucket in call_classes(shapes, (tokens,), (seqlen,)):
        made[candidates.entry(op, variant, dtype, width, bucket)] = dispatch.choose(
            op, variant, width, device, dtype, bucket[0], (), seqlen=bucket[1])
    return made


def shapes_of_config(config: Any) -> Shapes:
    """The widths of a RemBertConfig (rembert_fast's or transformers')."""
    return Shapes(config.hidden_size, config.intermediate_size, config.num_attention_heads,
                  config.hidden_act, config.input_embedding_size, bool(config.is_decoder))


def tune(device: torch.device, dtype: torch.dtype, shapes: Shapes, tokens: tuple[int, ...],
         seqlens: tuple[int, ...] = (128, 512), timer: choosing.Timer | None = None) -> list[Row]:
    """Probe, time and choose for every call class of `call_classes`; record the choices in the tuning
    cache (replacing any held); return the table. ValueError for an empty or non-positive bucket list."""
    from rembert_fast.ops import dispatch

    for name, sizes in (("tokens", tokens), ("seqlens", seqlens)):
        if not sizes or any(t <= 0 for t in sizes):
            raise ValueError(f"{name} must be positive bucket sizes, got {sizes}")
    timer = timer or choosing.default_timer(device)
    rows: list[Row] = []
    for op, variant, width, bucket in call_classes(shapes, tokens, seqlens):
        if bucket[1] > bucket[0]:  # a sequence longer than the batch's rows: no call meets it
            continue
        probed = dispatch.probed_name(op, variant)
        base = dispatch._decision(probed, device.type, dtype, "auto")
        names, errors = dispatch.candidate_names(op, variant, width, device.type, dtype, base)
        if base == "eager" and candidates.fused_name(op) not in names:
            errors.insert(0, tuning.verdicts().get(tuning.entry(probed, dtype))
                          or dispatch.unavailable_reason(op, device.type))
        entry = candidates.entry(op, variant, dtype, width, bucket)
        row = Row(op, entry, bucket[0], bucket[1], probe_error="; ".join(e for e in errors if e) or None)
        row.ms = choosing.measure(op, variant, width, bucket, device, dtype, names, timer)
        row.choice = min(row.ms, key=row.ms.__getitem__)
        tuning.record_choice(device.type, entry, row.choice, row.ms)
        rows.append(row)
    dispatch.forget()  # decisions made before now are made again, from these choices
    return rows


def format_table(rows: list[Row], key: str) -> str:
    """The table `rembert-fast tune` prints: op, key, bucket, each candidate's ms, choice, probe error."""
    lines = [f"{'op (variant, width)':<40} {'key':<26} {'bucket':<11} {'candidates (ms)':<52} {'choice':<12} "
             "probe"]
    for r in rows:
        call, _, width, _ = r.entry.split("|")
        bucket = f"t{r.tokens}" + (f" s{r.seqlen}" if r.seqlen else "")
        ms = " ".join(f"{name}={value:.3f}" for name, value in r.ms.items())
        lines.append(f"{call + ' ' + width:<40} {key:<26} {bucket:<11} {ms:<52} {r.choice:<12} "
                     f"{r.probe_error or 'ok'}")
    return "\n".join(lines)


def table_json(rows: list[Row], key: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """What `rembert-fast tune --json` writes: the device key, the dtype and every row."""
    return {"schema": "rembert_fast.tune/1", "key": key, "dtype": str(dtype).removeprefix("torch."),
            "rows": [asdict(r) for r in rows]}


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
                        help="comma-separated token counts, each rounded up to its power-of-two bucket "
                             "(default: 128,512)")
    parser.add_argument("--seqlens", default="128,512",
                        help="comma-separated longest-sequence lengths for attention (default: 128,512)")
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON to PATH")


def shapes_of(model: str | None) -> Shapes:
    """The widths of `model` (a directory holding config.json, or the file), or RemBERT's defaults."""
    if model is None:
        return Shapes()
    from pathlib import Path

    path = Path(model)
    path = path / "config.json" if path.is_dir() else path
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--model {model}: cannot read {path}: {error}") from None
    return Shapes(cfg.get("hidden_size", 1152), cfg.get("intermediate_size", 4608),  # RemBERT's defaults
                  cfg.get("num_attention_heads", 18), cfg.get("hidden_act", "gelu"),
                  cfg.get("input_embedding_size", 256), bool(cfg.get("is_decoder", False)))


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
        tokens = _sizes("--shapes", args.shapes)
        seqlens = _sizes("--seqlens", args.seqlens)
        dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
        rows = tune(device, dtype, shapes, tokens, seqlens)
    except ValueError as error:
        print(f"rembert-fast tune: {error}", file=sys.stderr)
        return 2
    key = tuning.device_key(device.type)
    print(format_table(rows, f"{key['gpu']} {key['capability'] or ''} {str(dtype)[6:]}".strip()))
    print(f"cache: {tuning.cache_path(device.type)}")
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(table_json(rows, key, dtype), indent=1) + "\n")
    return 0


def _sizes(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a comma-separated list of sizes") from None
