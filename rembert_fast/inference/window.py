"""The units a batch run works in: a window of consecutive input lines, and the batches cut from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    """Rows of one window, padded to the longest, as the model takes them (host tensors)."""

    rows: list[int]  # window-local line indices, longest first
    input_ids: torch.Tensor  # (B, L) int64, padded with pad_token_id
    attention_mask: torch.Tensor  # (B, L) int64
    token_type_ids: torch.Tensor  # (B, L) int64


@dataclass
class Window:
    """Consecutive input lines, tokenised and cut into batches; each line's record once computed."""

    first_line: int  # line number of the window's first line
    heads: list[dict[str, Any]]  # per line: {"line": n} plus "id" when the input had one
    records: list[dict[str, Any] | None]  # per line: the finished record, None while pending
    texts: list[str | None]  # per line: `text`, for character offsets
    encodings: list[Any]  # per line: tokenizers.Encoding, None for error lines
    truncated: list[bool]  # per line: the text was cut to max_length
    batches: list[Batch] = field(default_factory=list)
