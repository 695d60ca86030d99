"""Merging the finished parts of a multi-process run back into one output, in input order."""

from __future__ import annotations

import heapq
import os
from pathlib import Path

import numpy as np

from rembert_fast.inference.writers import npy_header, partial_path, record_line


def merge_jsonl(parts: list[Path], path: Path) -> None:
    """Merge finished JSON-lines parts (each in line order) into `path`, in line order; removes the parts."""
    files = [open(part, "rb") for part in parts]
    try:
        with open(partial_path(path), "wb") as out:
            for raw in heapq.merge(*files, key=record_line):
                out.write(raw)
            out.flush()
            os.fsync(out.fileno())
    finally:
        for f in files:
            f.close()
    os.replace(partial_path(path), path)
    for part in parts:
        part.unlink()


def merge_npy(parts: list[tuple[Path, Path]], path: Path, errors_path: Path, window: int) -> None:
    """Merge the (rows, errors) parts of ranks 0..world-1 into one `.npy` and one errors file.

    Rank r holds windows r, r + world, ... of `window` lines each, in order; rows are dealt back in
    window order. Removes the parts.
    """
    arrays = [np.load(npy, mmap_mode="r") for npy, _ in parts]
    width, dtype = arrays[0].shape[1], arrays[0].dtype
    total = sum(len(a) for a in arrays)
    cursors = [0] * len(arrays)
    with open(partial_path(path), "wb") as out:
        out.write(npy_header(total, width, dtype))
        for window_index in range((total + window - 1) // window):
            rank = window_index % len(arrays)
            count = min(window, total - window_index * window)
            rows = arrays[rank][cursors[rank] : cursors[rank] + count]
            out.write(np.ascontiguousarray(rows).tobytes())
            cursors[rank] += count
        out.flush()
        os.fsync(out.fileno())
    del arrays
    merge_jsonl([errors for _, errors in parts], errors_path)
    os.replace(partial_path(path), path)
    for npy, _ in parts:
        npy.unlink()
