"""`BatchEncoding`, the tokenizers' output (with the fast tokenizer's token / word / character
alignment), and its conversion to numpy arrays or torch tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


class TokenSpan(NamedTuple):
    """Tokens [start, end) of a word."""

    start: int
    end: int


class CharSpan(NamedTuple):
    """Characters [start, end) of the original text."""

    start: int
    end: int


class BatchEncoding(dict):
    """The tokenizers' output: a dict (`input_ids`, `token_type_ids`, `attention_mask`, ...) whose keys
    are also attributes, like transformers' BatchEncoding.

    From `RemBertTokenizerFast` it also holds one `tokenizers.Encoding` per row (`encodings`, and
    `batch[i]` for an int `i`), through which `tokens`, `word_ids`, `sequence_ids` and the
    token / word / character conversions answer as transformers 4.37.2's do. A method taking
    `batch_or_token_index` (or `..._word_index`, `..._char_index`) reads it as the index in row 0
    when the second index is left out, else as the row. From `RemBertTokenizer` these raise
    ValueError: the sentencepiece tokenizer keeps no alignment (use RemBertTokenizerFast).
    """

    def __init__(self, data: dict[str, Any] | None = None, encodings: Sequence[Any] | None = None) -> None:
        super().__init__(data or {})
        # A list, or a list with `with_offsets()` (rows encoded without character offsets, which that
        # encodes again with them on first use).
        if encodings is not None and not hasattr(encodings, "with_offsets"):
            encodings = list(encodings)
        self._encodings = encodings

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_encodings":
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self)}") from None

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, str):
            return super().__getitem__(item)
        if isinstance(item, int) and not isinstance(item, bool) and self._encodings is not None:
            return self.encodings[item]
        if isinstance(item, slice):
            return {key: value[item] for key, value in self.items()}
        raise KeyError(
            f"BatchEncoding keys are field names (str), row numbers (int, fast tokenizer only) or slices; "
            f"got {item!r}"
        )

    def __reduce__(self) -> tuple:
        return (type(self), (dict(self), self.encodings))

    def to(self, device: Any) -> BatchEncoding:
        """Move every torch tensor to `device` (in place, returns self)."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self

    # ---------------------------------------------------------------------------- fast-only alignment
    @property
    def is_fast(self) -> bool:
        """Whether the rows carry `tokenizers` encodings (output of RemBertTokenizerFast)."""
        return self._encodings is not None

    @property
    def encodings(self) -> list[Any] | None:
        """The `tokenizers.Encoding` of each row, or None from the sentencepiece tokenizer."""
        if hasattr(self._encodings, "with_offsets"):
            return self._encodings.with_offsets()
        return self._encodings

    @property
    def n_sequences(self) -> int | None:
        """1 for single texts, 2 for pairs (None from the sentencepiece tokenizer)."""
        return self._encodings[0].n_sequences if self._encodings else None

    def _encoding(self, method: str, batch_index: int) -> Any:
        if self._encodings is None:
            raise ValueError(
                f"{method}() is not available with RemBertTokenizer (the sentencepiece tokenizer keeps no "
                "token/word/character alignment); use RemBertTokenizerFast."
            )
        rows = len(self._encodings)
        if not isinstance(batch_index, int) or not -rows <= batch_index < rows:
            raise IndexError(
                f"{method}: batch index {batch_index!r} is out of range for {rows} rows"
            )
        return self.encodings[batch_index]

    def _split_index(self, method: str, first: int, second: int | None) -> tuple[Any, int]:
        batch_index, index = (0, first) if second is None else (first, second)
        return self._encoding(method, batch_index), index

    def tokens(self, batch_index: int = 0) -> list[str]:
        """The token strings of row `batch_index`."""
        return self._encoding("tokens", batch_index).tokens

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Per token: 0 (first text), 1 (second text) or None (special or padding token)."""
        return self._encoding("sequence_ids", batch_index).sequence_ids

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """Per token: the index of its word in its text, or None (special or padding token)."""
        return self._encoding("word_ids", batch_index).word_ids

    def token_to_sequence(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        encoding, index = self._split_index("token_to_sequence", batch_or_token_index, token_index)
        return encoding.token_to_sequence(index + len(encoding) if index < 0 else index)

    def token_to_word(self, batch_or_token_index: int, token_index: int | None = None) -> int | None:
        """The word index of a token (None for a special or padding token)."""
        encoding, index = self._split_index("token_to_word", batch_or_token_index, token_index)
        return encoding.token_to_word(index + len(encoding) if index < 0 else index)

    def word_to_tokens(
        self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0
    ) -> TokenSpan | None:
        """The tokens [start, end) of a word of text `sequence_index` (None when none is left)."""
        encoding, index = self._split_index("word_to_tokens", batch_or_word_index, word_index)
        span = encoding.word_to_tokens(index, sequence_index)
        return TokenSpan(*span) if span is not None else None

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        """The characters [start, end) of a token in its text (None for a special or padding token)."""
        encoding, index = self._split_index("token_to_chars", batch_or_token_index, token_index)
        span = encoding.token_to_chars(index)
        return CharSpan(*span) if span is not None else None

    def char_to_token(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        """The token covering a character of text `sequence_index` (None when none does)."""
        encoding, index = self._split_index("char_to_token", batch_or_char_index, char_index)
        return encoding.char_to_token(index, sequence_index)

    def word_to_chars(
        self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0
    ) -> CharSpan | None:
        """The characters [start, end) of a word of text `sequence_index`."""
        encoding, index = self._split_index("word_to_chars", batch_or_word_index, word_index)
        span = encoding.word_to_chars(index, sequence_index)
        return CharSpan(*span) if span is not None else None

    def char_to_word(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        """The word covering a character of text `sequence_index` (None when none does)."""
        encoding, index = self._split_index("char_to_word", batch_or_char_index, char_index)
        return encoding.char_to_word(index, sequence_index)


def to_tensors(
    features: dict[str, Any],
    return_tensors: str | None,
    prepend_batch_axis: bool,
    encodings: Sequence[Any] | None = None,
) -> BatchEncoding:
    """`features` as a BatchEncoding of lists (`return_tensors=None`), int64 numpy arrays ("np") or
    torch tensors ("pt"); ValueError naming the key when rows differ in length."""
    if return_tensors is None:
        return BatchEncoding(features, encodings)
    out = BatchEncoding(encodings=encodings)
    for key, value in features.items():
        if prepend_batch_axis:
            value = [value]
        try:
            array = np.asarray(value, dtype=np.int64)
        except ValueError as err:
            lengths = sorted({len(v) for v in value})
            raise ValueError(
                f"Unable to create tensor for {key!r}: sequences have different lengths {lengths}. Pass "
                "padding=True (or padding='max_length' with max_length) and truncation=True."
            ) from err
        if return_tensors == "pt":
            import torch

            out[key] = torch.from_numpy(array)
        else:
            out[key] = array
    return out
