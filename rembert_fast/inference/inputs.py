"""Reading batch input: lines of a binary stream as text, one line's text (and pair) from a JSON record,
and the line numbers of a multi-process run's shares."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LineError:
    """An input line that could not be read (e.g. invalid UTF-8); the engine turns it into an error record."""

    message: str


def reads_jsonl(name: str, input_format: str | None) -> bool:
    """Whether the batch command reads input `name` as JSON lines: `input_format` ("txt" or "jsonl")
    when given, else a name ending in ".jsonl"."""
    return (input_format or ("jsonl" if name.endswith(".jsonl") else "txt")) == "jsonl"


def parse_item(item: Any, jsonl: bool, head: dict[str, Any]) -> tuple[str, str | None] | str:
    """(text, text_pair) of one input, or the reason it is not usable. Sets head["id"] when present."""
    if isinstance(item, LineError):
        return item.message
    if isinstance(item, str) and not jsonl:
        return item, None
    if isinstance(item, str):
        try:
            item = json.loads(item)
        except ValueError as error:
            return f"malformed JSON: {error}"
        except RecursionError:
            return "malformed JSON: nested too deeply to parse"
        except MemoryError:
            return f"JSON line of {len(item)} characters does not fit in memory"
    if not isinstance(item, Mapping):
        return f"expected a JSON object with a \"text\" field, got {type(item).__name__}"
    if "id" in item:
        try:  # NaN, Infinity and lone surrogates parse, but a record carrying them is not valid JSON
            json.dumps(item["id"], allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (ValueError, UnicodeEncodeError, RecursionError):
            return (f'"id" {item["id"]!r} cannot be written as JSON (NaN, Infinity and lone surrogates '
                    "are not allowed)")
        head["id"] = item["id"]
    if "text" not in item:
        return 'missing "text" field'
    text, pair = item["text"], item.get("text_pair")
    if not isinstance(text, str):
        return f'"text" must be a string, got {type(text).__name__}'
    if pair is not None and not isinstance(pair, str):
        return f'"text_pair" must be a string, got {type(pair).__name__}'
    return text, pair


def iter_lines(stream: Any) -> Iterator[str | LineError]:
    """The lines of a binary stream as text, split on "\\n" only, without the line end ("\\r\\n" too).

    A UTF-8 byte-order mark opening the stream is dropped (editors on Windows write one; kept, it would
    be tokenized into the first line). A line that is not UTF-8 becomes a `LineError` instead of
    stopping the run.
    """
    first = True
    for raw in stream:
        if first:
            raw = raw.removeprefix(codecs.BOM_UTF8)
            first = False
        raw = raw[:-1] if raw.endswith(b"\n") else raw
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield LineError(f"line is not valid UTF-8: {error}")


def count_lines(path: str | Path) -> int:
    """Number of lines `iter_lines` yields for a file (a last line without "\\n" counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def shard_line(row: int, rank: int, world: int, window: int) -> int:
    """Input line number of the `row`-th (1-based) line computed by `rank` of `world` (0 for row 0)."""
    if row == 0:
        return 0
    k = row - 1
    window_index = rank + (k // window) * world
    return window_index * window + k % window + 1
