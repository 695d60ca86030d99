"""Where a tokenizer's files live: their names in a saved directory and the path checks."""

from __future__ import annotations

import os
from typing import Any

VOCAB_FILE = "sentencepiece.model"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"


def as_path(value: Any, name: str) -> str:
    """`os.fspath(value)`, with an error that names the argument (os.fspath's does not)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{name} must be a path (str or os.PathLike); got {type(value).__name__}: {value!r:.80}"
        )
    return os.fspath(value)


def check_file(path: str, what: str, owner: str) -> None:
    """An error naming `path` when it is a directory or does not exist."""
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{owner}: {what} {path!r} is a directory; pass the file inside it, or load the directory "
            f"with {owner}.from_pretrained"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{owner}: {what} {path!r} does not exist")
