"""The compile gate itself: it reads register spills as ptxas reports them and fails a kernel that spills.

`ptxas -v` reports spills per kernel as "N bytes stack frame, N bytes spill stores, N bytes spill
loads"; cuobjdump's LOCAL column stays 0 for them. `_spilling_kernel` keeps two (ROWS, COLS) fp32 tiles
live across reductions on one warp: 2 * 128 * 64 / 32 = 512 values per thread, twice the 255
registers a thread can have, so it must spill with any ptxas.
"""

from __future__ import annotations

import triton
import triton.language as tl
from compile_gate import CompileCase, compile_cases, parse_ptxas_report, spill_problems

ROWS, COLS = 128, 64


@triton.jit
def _spilling_kernel(
    X,  # (ROWS, COLS) fp32 input
    Y,  # (ROWS, COLS) fp32 input
    OUT,  # (ROWS, COLS) fp32 output
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
):
    offs = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    x = tl.load(X + offs)
    y = tl.load(Y + offs)
    scaled = x * tl.sum(x * y, axis=1)[:, None]  # x and y both live across the reduction
    out = scaled * tl.sum(scaled * y, axis=1)[:, None] + y + x
    tl.store(OUT + offs, out)


def _case(arch: int, rows: int = ROWS) -> CompileCase:
    return CompileCase(f"spilling fp32 {rows}x{COLS} w1", "test_compile_gate", "_spilling_kernel",
                       {"X": "*fp32", "Y": "*fp32", "OUT": "*fp32"}, {"ROWS": rows, "COLS": COLS},
                       {"X": "D", "Y": "D", "OUT": "D"}, num_warps=1, num_stages=1, arch=arch)


def test_ptxas_report_is_parsed():
    report = ("ptxas info    : Compiling entry function '_attn_fwd' for 'sm_90a'\n"
              "ptxas info    : Function properties for _attn_fwd\n"
              "    536 bytes stack frame, 540 bytes spill stores, 532 bytes spill loads\n"
              "ptxas info    : Used 255 registers, used 1 barriers, 536 bytes cumulative stack size\n")
    assert parse_ptxas_report(report) == {"registers": 255, "stack_bytes": 536, "spill_bytes": 540,
                                          "spill_loads": 532}
    assert parse_ptxas_report("ptxas info    : 0 bytes gmem\n") is None


def test_gate_flags_a_kernel_that_spills(monkeypatch, tmp_path):
    """Both ways the gate reads spills (Triton's own ptxas report on a fresh compile; cuobjdump's stack
    frame, then a ptxas run of its own, on a cache hit) see them, agree, and fail the kernel. Kernels
    that do not spill are the rest of the gate (tests/test_compile.py), which asserts zero for each."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # fresh: the first compile runs ptxas itself
    [fresh] = compile_cases([_case(90)], workers=1)
    [cached] = compile_cases([_case(90)], workers=1)
    assert not fresh.cache_hit and cached.cache_hit
    for result in (fresh, cached):
        assert result.ok, result.error
        assert result.spill_bytes > 0 and result.spill_loads > 0
        assert result.stack_bytes >= result.spill_bytes
        [problem] = spill_problems(result)
        assert problem.startswith(f"spills registers: {result.spill_bytes} B stores")
    assert (fresh.registers, fresh.spill_bytes, fresh.spill_loads, fresh.stack_bytes) == (
        cached.registers, cached.spill_bytes, cached.spill_loads, cached.stack_bytes)
