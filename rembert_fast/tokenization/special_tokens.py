"""The special-token attributes and how a special token matches text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


@dataclass
class SpecialToken:
    """A special token and how it matches text (transformers' `AddedToken` fields)."""

    content: str
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False

    def __str__(self) -> str:
        return self.content

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "lstrip": self.lstrip,
            "normalized": self.normalized,
            "rstrip": self.rstrip,
            "single_word": self.single_word,
        }

    @classmethod
    def coerce(cls, name: str, value: str | dict | SpecialToken) -> SpecialToken:
        """A plain string is a special token that matches raw text exactly (4.37.2's default)."""
        if isinstance(value, SpecialToken):
            token = value
        elif isinstance(value, str):
            token = cls(value)
        elif isinstance(value, dict) and isinstance(value.get("content"), str):
            token = cls(
                value["content"],
                bool(value.get("lstrip", False)),
                bool(value.get("rstrip", False)),
                bool(value.get("single_word", False)),
                bool(value.get("normalized", False)),
            )
        else:
            raise TypeError(
                f"{name} must be a str, a SpecialToken or a dict with 'content'; got {type(value).__name__}"
            )
        if not token.content:
            # An empty token would match between every two characters of the text.
            raise ValueError(f"{name} must be a non-empty string; got {token.content!r}")
        return token
