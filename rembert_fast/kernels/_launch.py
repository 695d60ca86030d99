"""What every kernel launcher needs besides its kernel: the interpreter flag, the output buffer, the
(M, N) row view, the device guard and the backward's row-program count. Needs no Triton, so
`rembert_fast.ops` may import it anywhere.

Launchers trust their callers (`rembert_fast.ops` validates every argument with the value named);
they check only what their kernel itself cannot take.
"""

from __future__ import annotations

import contextlib
import os

import torch


def interpreting() -> bool:
    """Whether Triton runs kernels under its interpreter (TRITON_INTERPRET=1: CPU tensors, no GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def output_buffer(op: str, like: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """`out` checked to be a contiguous tensor of `like`'s shape and dtype, or a new one.

    ValueError, prefixed with the op's name, says what `out` is instead."""
    if out is None:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    if out.shape != like.shape or out.dtype != like.dtype or not out.is_contiguous():
        raise ValueError(f"{op}: out must be a contiguous {like.dtype} tensor of shape {tuple(like.shape)}, "
                         f"got {out.dtype} {tuple(out.shape)} (contiguous={out.is_contiguous()})")
    return out


def rows_view(t: torch.Tensor, n: int) -> torch.Tensor:
    """(M, N) view of `t` with unit column stride; copies only when no such view exists."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, n)


def on_device_of(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make `t`'s CUDA device the current one for a launch (Triton launches on the current device, not
    the tensors': a model on cuda:1 in a process whose current device is cuda:0 would fault)."""
    return torch.cuda.device(t.device.index if t.is_cuda else -1)


BWD_PROGRAMS_PER_SM = 4  # backward programs per SM: enough to hide latency, few partial rows to reduce
INTERPRETER_BWD_PROGRAMS = 2  # under the interpreter: small, and more than one, so the reduce is exercised


def backward_programs(m: int, rows: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows_per_program) of a row-tiled backward over `m` rows in tiles of `rows` whose column
    gradients are reduced in two stages: at most BWD_PROGRAMS_PER_SM per SM, each walking a contiguous
    run of whole tiles."""
    tiles = -(-m // rows)
    if device.type == "cuda":
        limit = BWD_PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        limit = INTERPRETER_BWD_PROGRAMS if interpreting() else 1
    programs = max(min(tiles, limit), 1)
    tiles_per_program = -(-tiles // programs)
    return -(-tiles // max(tiles_per_program, 1)), tiles_per_program * rows
