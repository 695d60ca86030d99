"""transformers' Cache objects (what `generate()` passes as `cache`) to and from rembert_fast's legacy
per-layer (k, v) tuples, so `RemBertForCausalLM` decodes with transformers' generation loop."""

from __future__ import annotations

from typing import Any

from rembert_fast.outputs import PastKeyValues


def is_cache_object(cache: Any) -> bool:
    """Whether `cache` is a transformers `Cache` (has `layers`, `update`, `get_seq_length`)."""
    return cache is not None and not isinstance(cache, (tuple, list)) and hasattr(cache, "get_seq_length")


def legacy_past(cache: Any) -> PastKeyValues | None:
    """The per-layer (k, v), each (B, heads, past_length, head_dim), held by a transformers `Cache`;
    None when it holds nothing yet.

    Raises:
        ValueError: a cache that is not a self-attention key/value cache (e.g. an encoder-decoder one).
    """
    if not hasattr(cache, "layers") or not hasattr(cache, "update"):
        raise ValueError(f"cache of type {type(cache).__name__} is not supported; pass a DynamicCache or "
                         "legacy per-layer (k, v) tuples")
    if cache.get_seq_length() == 0:
        return None
    return tuple((layer.keys, layer.values) for layer in cache.layers)


def store_presents(cache: Any, presents: PastKeyValues, past_length: int) -> None:
    """Append the positions after `past_length` of each layer's (k, v) in `presents` to `cache`, in place."""
    for index, layer in enumerate(presents):
        key, value = layer[0], layer[1]  # (B, heads, past_length + L, head_dim)
        cache.update(key[:, :, past_length:], value[:, :, past_length:], index)


def cache_length(past: PastKeyValues | None) -> int:
    return 0 if past is None else int(past[0][0].shape[2])

