"""Truncating a long text before tokenising it: the ids of a prefix, equal to those of the whole text
tokenised then truncated, at the cost of the prefix only.

Why a prefix cut at a space gives the whole text's first tokens, for the tokenizers `prefix_safe`
accepts (RemBERT's: literal Replaces, a " {2,}" -> " " Replace, NFKD/NFKC/NFD/NFC, StripAccents,
Lowercase, a Precompiled charsmap; a Metaspace pre-tokenizer that splits; right truncation): cut the
text at position c where text[c] is an ASCII space and text[c-1] is neither whitespace nor a Unicode
"Prepend" character (one that joins the next character into its grapheme cluster). Then
- no normalizer step sees across the cut: the literal patterns hold no whitespace; the space collapse
  runs before any step that can make or remove whitespace, and text[c-1] is not a space; the Unicode
  forms reorder and compose only up to the next starter, which the space is; StripAccents and
  Lowercase map one character at a time; Precompiled maps grapheme clusters, and the space starts one;
- so the normalized prefix is the part of the normalized text before its "▁" at c, and the Metaspace
  pieces before that "▁" are the same; the model tokenises each piece alone, and added tokens hold
  no whitespace and do not take the whitespace after them (no `rstrip`);
- so the prefix's tokens are the whole text's first tokens, with the same offsets: when the prefix
  already has more than max_length tokens (it was truncated), its truncated encoding is the whole
  text's. Otherwise the window grows (x4) until it holds enough, or covers the text.
For any other tokenizer setting, or a text pair (longest-first truncation reads both lengths), the
whole text is tokenised.
"""

from __future__ import annotations

import json
from typing import Any

# Unicode 15.1 Grapheme_Cluster_Break=Prepend: no grapheme cluster boundary after these.
_PREPEND_RANGES = ((0x0600, 0x0605), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2),
                   (0x0D4E, 0x0D4E), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x111C2, 0x111C3),
                   (0x1193F, 0x1193F), (0x11941, 0x11941), (0x11A3A, 0x11A3A), (0x11A84, 0x11A89),
                   (0x11D46, 0x11D46), (0x11F02, 0x11F02))
_LOCAL_STEPS = {"NFD", "NFKD", "NFC", "NFKC", "StripAccents", "Lowercase", "Precompiled"}
_GROWTH = 4


def _is_prepend(char: str) -> bool:
    code = ord(char)
    return any(first <= code <= last for first, last in _PREPEND_RANGES)


def prefix_safe(backend: Any) -> bool:
    """Whether `encode_prefix` may cut texts for this `tokenizers.Tokenizer` (see the module docstring)."""
    spec = json.loads(backend.to_str())
    truncation = spec.get("truncation") or {}
    if truncation.get("direction", "Right") != "Right" or truncation.get("stride", 0) != 0:
        return False
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace" or not pre.get("split", False):
        return False
    for token in spec.get("added_tokens", []):
        if token.get("rstrip") or any(c.isspace() for c in token["content"]):
            return False
    normalizer = spec.get("normalizer")
    steps = [] if normalizer is None else normalizer.get("normalizers", [normalizer])
    literal_only = True  # every step so far maps non-whitespace to non-whitespace, whitespace to itself
    for step in steps:
        kind = step.get("type")
        if kind == "Replace" and "String" in step.get("pattern", {}):
            if any(c.isspace() for c in step["pattern"]["String"] + step["content"]):
                return False
        elif kind == "Replace" and step.get("pattern") == {"Regex": " {2,}"} and step.get("content") == " ":
            if not literal_only:
                return False
        elif kind in _LOCAL_STEPS:
            literal_only = False
        else:
            return False
    return backend.normalizer is None or backend.normalizer.normalize_str("a b") == "a b"


def last_cut(text: str, limit: int) -> int:
    """The largest c <= limit where text may be cut (text[c] == " ", text[c-1] not whitespace nor
    Prepend), or 0 when there is none."""
    c = text.rfind(" ", 0, limit + 1)
    while c > 0:
        before = text[c - 1]
        if not before.isspace() and not _is_prepend(before):
            return c
        c = text.rfind(" ", 0, c)
    return 0


def encode_prefix(backend: Any, text: str, window: int) -> Any:
    """`backend.encode(text)` (truncation enabled, special tokens added), tokenising a prefix of about
    `window` characters (growing as needed) instead of the whole text; `backend` must be `prefix_safe`.
    Equal in ids, type ids, offsets, special-token mask and whether it was truncated; `overflowing`
    holds only the overflow of the prefix."""
    limit = window
    while limit < len(text):
        cut = last_cut(text, limit)
        if cut:
            encoding = backend.encode(text[:cut], add_special_tokens=True)
            if encoding.overflowing:
                return encoding
        limit *= _GROWTH
    return backend.encode(text, add_special_tokens=True)
