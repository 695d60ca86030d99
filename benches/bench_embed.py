"""Benchmark: the embedding gather + LayerNorm (`ops.embed` without the projection), in GB/s.

Implementations measured in the same run, on the same ids and tables:
- ``extension``: the CUDA kernel of ``rembert_fast._C`` (GPU only), with ``check_ids=False``: the kernel
  still validates the ids, the 8-byte error-word read-back (a host sync) is left out, as eager checks none;
- ``eager``: three ``F.embedding`` calls, two adds and ``F.layer_norm`` (``ops.embed_ref``);
- ``compiled``: ``torch.compile`` of that eager sequence (GPU only);
- ``copy``: a device-to-device copy moving the same number of bytes: the yardstick (GPU only).

Bytes per call = what DRAM must move at least: each distinct table row gathered once, the three id
tensors, the LN parameters and the T x E output. The position (512 rows) and type (2 rows) tables stay in
L2 after their first read, so three rows per token would credit every implementation with traffic it
never makes (about twice the real bytes at E = 256 bf16) and put it above a copy of the same bytes.
Shapes on a GPU: T in {4096, 65536} real tokens, E = 256, bf16, RemBERT's tables (vocab 250300, 512
positions, 2 types). L2 is flushed (a 256 MB write) before every timed call, so rows gathered by the
previous call are not served from cache; the copy is timed the same way. On a machine without a GPU
only the eager path runs, at T = 512 in fp32, so CI exercises the file.

    python -m pytest benches/bench_embed.py --benchmark-columns=median,min,max,rounds
    python benches/bench_embed.py [--json benches/results/embed.json]   # table with ratios
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rembert_fast import extension
from rembert_fast.bench.harness import write_json

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
TOKENS = (4096, 65536) if CUDA else (512,)
DIM, POSITIONS, TYPES = 256, 512, 2
VOCAB = 250300 if CUDA else 32000
EPS = 1e-12
WARMUP, ROUNDS = 10, 100
IMPLS = ("extension", "eager", "compiled", "copy") if CUDA else ("eager",)


def gather_ln(input_ids, position_ids, token_type_ids, word, position, type_, ln_weight, ln_bias):
    """The eager sequence: three embedding lookups, (word + type) + position, LayerNorm."""
    x = F.embedding(input_ids, word) + F.embedding(token_type_ids, type_)
    x = x + F.embedding(position_ids, position)
    return F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, EPS)


def make_inputs(tokens: int) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=DEVICE).manual_seed(tokens)
    tables = {
        "word": torch.randn(VOCAB, DIM, generator=g, device=DEVICE).to(DTYPE),
        "position": torch.randn(POSITIONS, DIM, generator=g, device=DEVICE).to(DTYPE),
        "type_": torch.randn(TYPES, DIM, generator=g, device=DEVICE).to(DTYPE),
        "ln_weight": (1 + 0.1 * torch.randn(DIM, generator=g, device=DEVICE)).to(DTYPE),
        "ln_bias": torch.randn(DIM, generator=g, device=DEVICE).to(DTYPE),
    }
    ids = {
        "input_ids": torch.randint(0, VOCAB, (tokens,), generator=g, device=DEVICE),
        "position_ids": torch.randint(0, POSITIONS, (tokens,), generator=g, device=DEVICE),
        "token_type_ids": torch.randint(0, TYPES, (tokens,), generator=g, device=DEVICE),
    }
    return {**ids, **tables}


ID_NAMES = ("input_ids", "position_ids", "token_type_ids")


def bytes_moved(inputs: dict[str, torch.Tensor]) -> int:
    """Distinct rows gathered + ids + LN weight and bias + output, per the module docstring."""
    row = DIM * DTYPE.itemsize
    rows = sum(torch.unique(inputs[name]).numel() for name in ID_NAMES)
    ids = sum(inputs[name].numel() * inputs[name].element_size() for name in ID_NAMES)
    return rows * row + ids + 2 * row + inputs["input_ids"].numel() * row


def build(impl: str, inputs: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    args = tuple(inputs.values())
    if impl == "eager":
        return lambda: gather_ln(*args)
    if impl == "compiled":
        compiled = torch.compile(gather_ln, dynamic=False)
        return lambda: compiled(*args)
    if impl == "extension":
        module = extension.load()
        if module is None:
            raise RuntimeError(f"the CUDA extension is unavailable: {extension.status()[1]}")
        ids = args[:3]
        tables = (inputs["word"], inputs["position"], inputs["type_"], inputs["ln_weight"], inputs["ln_bias"])
        return lambda: extension.embed(module, *ids, *tables, EPS, check_ids=False)
    if impl == "copy":  # read half, write half: the same total bytes as the embedding op
        src = torch.empty(bytes_moved(inputs) // 2, dtype=torch.uint8, device=DEVICE)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    raise ValueError(f"unknown implementation {impl!r}")


def check_agreement(impl: str, inputs: dict[str, torch.Tensor]) -> None:
    """`impl` agrees with eager (a wrong answer's speed is worthless): within bf16 rounding."""
    if impl in ("eager", "copy"):
        return
    error = (build(impl, inputs)().float() - build("eager", inputs)().float()).abs().max().item()
    if error > 0.1:
        raise AssertionError(f"{impl} differs from eager by {error:.3g}")


class L2Flush:
    """Overwrites a buffer larger than L2 (H100: 50 MB) between timed calls; a no-op on CPU."""

    def __init__(self) -> None:
        self.buffer = torch.empty(256 * 2**20, dtype=torch.uint8, device=DEVICE) if CUDA else None

    def __call__(self) -> None:
        if self.buffer is not None:
            self.buffer.zero_()


def median_seconds(fn: Callable[[], object], flush: L2Flush) -> float:
    """Median over ROUNDS calls after WARMUP, each timed on its own (CUDA events on a GPU)."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(ROUNDS):
        flush()
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def flush() -> L2Flush:
    return L2Flush()


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("impl", IMPLS)
def test_embed_bandwidth(benchmark, flush: L2Flush, impl: str, tokens: int) -> None:
    inputs = make_inputs(tokens)
    check_agreement(impl, inputs)
    fn = build(impl, inputs)

    def run() -> None:
        fn()
        if CUDA:
            torch.cuda.synchronize()

    benchmark.group = f"embed gather+LN T={tokens} E={DIM} {str(DTYPE).removeprefix('torch.')} {DEVICE}"
    nbytes = bytes_moved(inputs)
    benchmark.extra_info.update(tokens=tokens, dim=DIM, dtype=str(DTYPE), device=_device_name(), bytes=nbytes)
    benchmark.pedantic(run, setup=flush, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    # Wall time per call includes a host synchronisation; the __main__ table uses CUDA events instead.
    benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9


# ----------------------------------------------------------------------------------------- table
def _device_name() -> str:
    return torch.cuda.get_device_name(0) if CUDA else "cpu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    flush = L2Flush()
    meta = {"device": _device_name(), "torch": torch.__version__, "dtype": str(DTYPE), "dim": DIM,
            "vocab": VOCAB, "rounds": ROUNDS, "warmup": WARMUP}
    rows = []
    for tokens in TOKENS:
        inputs = make_inputs(tokens)
        for impl in IMPLS:
            check_agreement(impl, inputs)
        medians = {impl: median_seconds(build(impl, inputs), flush) for impl in IMPLS}
        nbytes = bytes_moved(inputs)
        for impl, seconds in medians.items():
            rows.append({
                "tokens": tokens, "impl": impl, "median_us": seconds * 1e6, "bytes": nbytes,
                "GB/s": nbytes / seconds / 1e9,
                "speedup_vs_eager": medians["eager"] / seconds,
                "fraction_of_copy": medians["copy"] / seconds if "copy" in medians else None,
            })
        write_json(args.json, meta, rows, complete=False)
    print(f"device {_device_name()}, torch {torch.__version__}, dtype {DTYPE}, E={DIM}, vocab {VOCAB}, "
          f"median of {ROUNDS} after {WARMUP} warm-up{', L2 flushed before each call' if CUDA else ''}")
    print(f"{'T':>6} {'impl':>10} {'median us':>10} {'GB/s':>8} {'vs eager':>9} {'of copy':>8}")
    for row in rows:
        of_copy = f"{row['fraction_of_copy']:.0%}" if row["fraction_of_copy"] is not None else "-"
        print(f"{row['tokens']:>6} {row['impl']:>10} {row['median_us']:>10.1f} {row['GB/s']:>8.1f} "
              f"{row['speedup_vs_eager']:>8.2f}x {of_copy:>8}")
    write_json(args.json, meta, rows, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
