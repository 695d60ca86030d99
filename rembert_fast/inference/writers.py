"""Batch output: JSON lines or `.npy` rows written through `.partial` files, resumed after a crash."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rembert_fast.inference.guards import ResumeError, check_settings, settings_path, write_settings


def nan_row(width: int) -> np.ndarray:
    """The `.npy` row written for an error line."""
    return np.full(width, math.nan, dtype=np.float32)


# ------------------------------------------------------------------------------------------- output
_LINE_PREFIX = re.compile(rb'^\{"line": (\d+)[,}]')
_NPY_HEADER_BYTES = 128  # fixed, so the row count can be written in place when the run ends


def record_line(raw: bytes) -> int | None:
    match = _LINE_PREFIX.match(raw)
    return int(match.group(1)) if match else None


def _to_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One record as a UTF-8 JSON line (arrays as lists; floats round-trip exactly)."""
    return (json.dumps(record, ensure_ascii=False, default=_to_json) + "\n").encode("utf-8")


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _recover_jsonl(
    path: Path, through: int | None = None, result_key: str | None = None
) -> tuple[int, int, int]:
    """Cut a JSON-lines output after its last good record (and after line `through` if given).

    Returns (records kept, last line number kept, error records kept). A torn last record (no "\\n",
    or not valid JSON) is cut off, so it is computed again. With `result_key`, the first result
    record must hold that field: an output of another command is refused, not silently continued.
    """
    kept, last, errors, good_bytes = 0, 0, 0, 0
    checked = result_key is None
    with open(path, "rb") as f:
        lines = f.readlines()
    for index, raw in enumerate(lines):
        number = record_line(raw)
        if not raw.endswith(b"\n") or number is None or number <= last:
            break
        if through is not None and number > through:
            break
        is_error = b'"error": ' in raw
        if is_error or index == len(lines) - 1:
            try:
                record = json.loads(raw)
            except ValueError:
                break
            is_error = "error" in record
        if not checked and not is_error:
            try:
                fields = list(json.loads(raw))
            except ValueError:
                break
            if result_key not in fields:
                raise ResumeError(f"cannot resume: {str(path)!r} holds records with fields {fields}, not "
                                  f"{result_key!r}: it is the output of another command")
            checked = True
        kept, last, errors, good_bytes = kept + 1, number, errors + is_error, good_bytes + len(raw)
    if kept == 0 and lines and through is None and record_line(lines[0]) is None:
        raise ResumeError(f"cannot resume: {str(path)!r} does not start with a record of this command")
    with open(path, "r+b") as f:
        f.truncate(good_bytes)
    return kept, last, errors


def _start(path: Path, partial: Path, resume: bool, settings: Mapping[str, Any] | None) -> bool:
    """Check or record the run's settings; whether to continue `partial`.

    With `settings`, a `resume` continues only a `.partial` (a finished output is written again), and
    only when its recorded settings are these; a new output records them before `partial` exists.
    """
    if settings is None:
        return resume
    if resume and partial.exists():
        check_settings(path, partial, settings)
        return True
    write_settings(path, settings)
    return False


def _finished(path: Path) -> None:
    """The output at `path` is complete: its settings record goes."""
    settings_path(path).unlink(missing_ok=True)


class JsonlWriter:
    """Writes records as JSON lines to `path`, through `path.partial`, flushed and fsynced in chunks.

    Only whole records are written, so a crash leaves at most one torn last record, which `resume`
    cuts off. `commit()` renames the finished file to `path`; until then `path` is not touched.
    With `resume=True`, an existing `path.partial` (or a finished `path`) is continued: `done_through`
    is the last line already written and `prior_errors` the error records among them; `result_key`
    (the command's field, see RESULT_KEYS) refuses to continue another command's output.
    With `settings` (JSON-able), they are recorded beside the output and a resume with others is
    refused (ResumeError naming the differences); see `guards`.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, flush_bytes: int = 1 << 22,
                 flush_seconds: float = 5.0, result_key: str | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.done_through = self.prior_errors = self.prior_records = 0
        resume = _start(self.path, self.partial, resume, settings)
        if resume and not self.partial.exists() and self.path.exists():
            os.replace(self.path, self.partial)
        if resume and self.partial.exists():
            self.prior_records, self.done_through, self.prior_errors = _recover_jsonl(
                self.partial, result_key=result_key
            )
        self._file = open(self.partial, "ab" if resume else "wb")
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._flush_bytes, self._flush_seconds = flush_bytes, flush_seconds
        self._last_flush = time.monotonic()

    def write(self, record: Mapping[str, Any]) -> None:
        data = encode_record(record)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self._flush_bytes or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._file.write(b"".join(self._buffer))
            self._buffer, self._buffered = [], 0
        self._file.flush()
        os.fsync(self._file.fileno())
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush what is written and close, leaving `path.partial` for a later `resume`."""
        if not self._file.closed:
            self.flush()
            self._file.close()

    def commit(self) -> None:
        """Flush, close and rename `path.partial` to `path`: the output is complete."""
        self.close()
        os.replace(self.partial, self.path)
        _finished(self.path)


def npy_header(rows: int, width: int, dtype: np.dtype) -> bytes:
    descr = np.lib.format.dtype_to_descr(dtype)
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {width}), }}"
    text = text.ljust(_NPY_HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _npy_rows(path: Path, width: int, dtype: np.dtype) -> int:
    """Whole rows in a partial `.npy` of ours; cuts off a torn last row."""
    with open(path, "rb") as f:
        header = f.read(_NPY_HEADER_BYTES)
        f.seek(0, os.SEEK_END)
        size = f.tell()
    if len(header) < _NPY_HEADER_BYTES or not header.startswith(b"\x93NUMPY"):
        raise ResumeError(f"cannot resume: {str(path)!r} is not a .npy written by this command")
    expected = npy_header(0, width, dtype)
    descr = np.lib.format.dtype_to_descr(dtype).encode()
    if descr not in header or f", {width}), ".encode() not in header or len(header) != len(expected):
        raise ResumeError(
            f"cannot resume: {str(path)!r} does not hold {width}-wide {dtype} rows; its header is "
            f"{header[10:].decode('latin1').strip()}"
        )
    row_bytes = width * dtype.itemsize
    rows = (size - _NPY_HEADER_BYTES) // row_bytes
    with open(path, "r+b") as f:
        f.truncate(_NPY_HEADER_BYTES + rows * row_bytes)
    return rows


class NpyWriter:
    """Writes embeddings as an (N, width) `.npy`, a NaN row per error line, and the error records to
    `errors_path` (JSON lines, written even when empty). Both go through `.partial` files; errors are
    flushed before rows, so every row on disk has its error record on disk.

    `line_of_row(k)` is the input line of the k-th row (1-based; identity unless the rows are one
    rank's share of a multi-process run); it turns the rows found on `resume` into `done_through`.
    `settings` as for `JsonlWriter`. `commit` renames the errors file, then the `.npy`: a resume after a
    kill between the two takes the renamed errors file back.
    """

    def __init__(self, path: str | Path, errors_path: str | Path, width: int, *, dtype: Any = np.float32,
                 resume: bool = False, line_of_row: Any = None, flush_bytes: int = 1 << 22,
                 flush_seconds: float = 5.0, settings: Mapping[str, Any] | None = None) -> None:
        self.path, self.errors_path = Path(path), Path(errors_path)
        self.partial, self.errors_partial = partial_path(self.path), partial_path(self.errors_path)
        self.width, self.dtype = width, np.dtype(dtype)
        self.done_through = self.prior_errors = self.prior_records = 0
        line_of_row = line_of_row or (lambda row: row)
        resume = _start(self.path, self.partial, resume, settings)
        between_renames = self.partial.exists() and not self.errors_partial.exists()
        if resume and between_renames and self.errors_path.exists():
            os.replace(self.errors_path, self.errors_partial)  # killed between the two renames of commit
        if resume and not self.partial.exists() and self.path.exists():
            os.replace(self.path, self.partial)
            if self.errors_path.exists():
                os.replace(self.errors_path, self.errors_partial)
        if resume and self.partial.exists() and self.partial.stat().st_size == 0:
            self.partial.unlink()  # killed before its header reached the disk: nothing was done
        if resume and self.partial.exists():
            self.prior_records = _npy_rows(self.partial, width, self.dtype)
            self.done_through = line_of_row(self.prior_records)
            if self.errors_partial.exists():
                _, _, self.prior_errors = _recover_jsonl(self.errors_partial, through=self.done_through)
            self._file = open(self.partial, "r+b")
            self._file.seek(0, os.SEEK_END)
            self._errors = open(self.errors_partial, "ab")
        else:
            self._file = open(self.partial, "wb")
            self._file.write(npy_header(0, width, self.dtype))
            # On disk at once: a run killed before its first flush must still be a .npy to resume.
            self._file.flush()
            os.fsync(self._file.fileno())
            self._errors = open(self.errors_partial, "wb")
        self.rows = self.prior_records
        self._rows: list[np.ndarray] = []
        self._error_lines: list[bytes] = []
        self._flush_rows = max(1, flush_bytes // (width * self.dtype.itemsize))
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()

    def write(self, record: Mapping[str, Any]) -> None:
        if "error" in record:
            self._error_lines.append(encode_record(record))
            self._rows.append(nan_row(self.width))
        else:
            self._rows.append(np.asarray(record["embedding"]))
        if len(self._rows) >= self._flush_rows or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        rows = np.stack(self._rows).astype(self.dtype).tobytes() if self._rows else b""
        for f, data in ((self._errors, b"".join(self._error_lines)), (self._file, rows)):
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.rows += len(self._rows)
        self._rows, self._error_lines = [], []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush what is written and close, leaving the `.partial` files for a later `resume`."""
        if not self._file.closed:
            self.flush()
            self._file.close()
            self._errors.close()

    def commit(self) -> None:
        """Write the final row count into the header and rename both files: the output is complete."""
        self.flush()
        self._file.seek(0)
        self._file.write(npy_header(self.rows, self.width, self.dtype))
        self.close()
        os.replace(self.errors_partial, self.errors_path)
        os.replace(self.partial, self.path)
        _finished(self.path)
