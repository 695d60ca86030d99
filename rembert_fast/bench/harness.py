"""The harness of the per-op benchmark scripts (benches/bench_*.py): timing, GB/s, tables and JSON.

A memory-bound op is judged by GB/s = (bytes read + bytes written) / median time, against a
device-to-device copy of the same number of bytes measured in the same run: the copy is the
achievable bandwidth of the device, so ``fraction_of_copy`` is how close the op comes to it.

Timing is `timing.kernel_ms`: on CUDA ``triton.testing.do_bench`` (median, L2 cleared before every
call, CPU launch overhead hidden behind that clear, so the figure is GPU time); on CPU, the median of
wall times after warm-up (only the eager path runs there, so CI exercises the scripts).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rembert_fast.bench import timing

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
CPU_WARMUP, CPU_ROUNDS = 3, 15


def device_name() -> str:
    return torch.cuda.get_device_name(0) if CUDA else "cpu"


def median_seconds(fn: Callable[[], object]) -> float:
    """Median time of one call of `fn`, after warm-up (see the module docstring for the method)."""
    return timing.kernel_ms(fn, CPU_WARMUP, CPU_ROUNDS, torch.device(DEVICE)) / 1e3


def copy_of(nbytes: int) -> Callable[[], torch.Tensor]:
    """A device-to-device copy reading nbytes/2 and writing nbytes/2: the yardstick for `nbytes` moved."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def measure(impls: dict[str, Callable[[], object]], nbytes: int) -> list[dict[str, Any]]:
    """One row per implementation: median, GB/s, speed-up over "eager", fraction of "copy" if present."""
    medians = {name: median_seconds(fn) for name, fn in impls.items()}
    return [{
        "impl": name,
        "median_us": seconds * 1e6,
        "GB/s": nbytes / seconds / 1e9,
        "speedup_vs_eager": medians["eager"] / seconds,
        "fraction_of_copy": medians["copy"] / seconds if "copy" in medians else None,
    } for name, seconds in medians.items()]


def write_json(path: Path | None, meta: dict[str, Any], rows: Sequence[dict[str, Any]],
               complete: bool) -> None:
    """Write {"meta", "rows", "complete"} to `path` (if given), replacing it atomically. Scripts call it
    after every shape: a time limit's kill runs no cleanup, so the rows on disk are the rows kept."""
    if path is None:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"meta": meta, "rows": list(rows), "complete": complete}, indent=2) + "\n")
    partial.replace(path)


def print_table(header: str, rows: Sequence[dict[str, Any]]) -> None:
    """Print `rows` (each with "shape" plus the fields of `measure`) under a one-line header."""
    print(header)
    print(f"{'shape':>22} {'impl':>9} {'median us':>10} {'GB/s':>8} {'vs eager':>9} {'of copy':>8}")
    for row in rows:
        of_copy = f"{row['fraction_of_copy']:.0%}" if row["fraction_of_copy"] is not None else "-"
        print(f"{row['shape']:>22} {row['impl']:>9} {row['median_us']:>10.1f} {row['GB/s']:>8.3g} "
              f"{row['speedup_vs_eager']:>8.2f}x {of_copy:>8}")


@dataclass
class OpBench:
    """One memory-bound op's benchmark: the pytest-benchmark body and the table script, shared.

    `build(impl, inputs)` returns a no-argument callable for implementation `impl` ("triton", "eager",
    "compiled" or "copy") on `inputs` from `make_inputs(tokens, n)`; `bytes_moved(tokens, n)` is what
    one call reads and writes.
    """

    name: str  # e.g. "layer_norm", used in group names and the JSON
    title: str  # the op as written in the table header
    dtype: torch.dtype
    make_inputs: Callable[[int, int], dict[str, torch.Tensor]]
    build: Callable[[str, dict[str, torch.Tensor]], Callable[[], object]]
    bytes_moved: Callable[[int, int], int]

    def check_agreement(self, impl: str, inputs: dict[str, torch.Tensor]) -> None:
        """A wrong answer's speed is worthless: `impl` must agree with eager within bf16 rounding."""
        if impl in ("eager", "copy"):
            return
        got = self.build(impl, inputs)().float()
        error = (got - self.build("eager", inputs)().float()).abs().max().item()
        if error > 0.1:
            raise AssertionError(f"{self.name}: {impl} differs from eager by {error:.3g}")

    def run_pytest(self, benchmark: Any, impl: str, shape: tuple[int, int]) -> None:
        """pytest-benchmark body. Its own timing is wall time per call including a host sync; the
        median_us / gbps in extra_info are `median_seconds` (GPU time on CUDA), as in the table."""
        inputs = self.make_inputs(*shape)
        self.check_agreement(impl, inputs)
        fn = self.build(impl, inputs)

        def run() -> None:
            fn()
            if CUDA:
                torch.cuda.synchronize()

        seconds = median_seconds(fn)
        nbytes = self.bytes_moved(*shape)
        dtype = str(self.dtype).removeprefix("torch.")
        benchmark.group = f"{self.name} T={shape[0]} N={shape[1]} {dtype} {DEVICE}"
        benchmark.extra_info.update(tokens=shape[0], n=shape[1], dtype=dtype, device=device_name(),
                                    bytes=nbytes, median_us=seconds * 1e6, gbps=nbytes / seconds / 1e9)
        benchmark.pedantic(run, rounds=20, warmup_rounds=3, iterations=1)

    def main(self, shapes: Sequence[tuple[int, int]], impls: Sequence[str], description: str) -> int:
        """The table script: every shape x implementation, agreement checked first; optional JSON."""
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
        args = parser.parse_args()
        dtype = str(self.dtype).removeprefix("torch.")
        meta = {"device": device_name(), "torch": torch.__version__, "dtype": dtype, "op": self.name}
        rows: list[dict[str, Any]] = []
        for tokens, n in shapes:
            inputs = self.make_inputs(tokens, n)
            for impl in impls:
                self.check_agreement(impl, inputs)
            built = {impl: self.build(impl, inputs) for impl in impls}
            for row in measure(built, self.bytes_moved(tokens, n)):
                rows.append({"shape": f"T={tokens} N={n}", "tokens": tokens, "n": n, **row})
            write_json(args.json, meta, rows, complete=False)
        print_table(f"{self.title}: device {device_name()}, torch {torch.__version__}, dtype {dtype}, "
                    "median after warm-up", rows)
        write_json(args.json, meta, rows, complete=True)
        return 0
