"""A whole model's directory for a batch run: a local directory as it is, or the Hub snapshot holding
config.json, the weights and the tokenizer files."""

from __future__ import annotations

import os
from typing import Any

from rembert_fast import hub
from rembert_fast.checkpoint import HUB_WEIGHT_FILES
from rembert_fast.configuration import CONFIG_NAME
from rembert_fast.tokenization import RemBertTokenizerFast


def model_directory(name_or_path: str | os.PathLike, **hub_keywords: Any) -> str:
    """The directory of a whole model (config.json, weights, tokenizer files), for the batch engine and the
    CLI: `name_or_path` when it exists on the disk, else the Hub snapshot `hub.resolve_directory` fetches
    (or, offline, finds in the cache) with those files. `hub_keywords` are `hub.HUB_KEYWORDS`.

    Raises:
        TypeError: a keyword that is not one of `hub.HUB_KEYWORDS`.
        hub.PretrainedNotFoundError: as `hub.resolve_directory`.
    """
    unknown = sorted(set(hub_keywords) - set(hub.HUB_KEYWORDS))
    if unknown:
        raise TypeError(f"unexpected keyword {unknown[0]!r}: the Hub keywords are "
                        f"{', '.join(hub.HUB_KEYWORDS)}")
    return hub.resolve_directory(name_or_path, (CONFIG_NAME, *RemBertTokenizerFast.hub_files),
                                 HUB_WEIGHT_FILES, **hub_keywords)
