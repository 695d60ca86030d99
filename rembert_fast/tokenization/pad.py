"""transformers' `pad` of already-tokenized inputs (as data collators call it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rembert_fast.tokenization.batch_encoding import BatchEncoding, to_tensors
from rembert_fast.tokenization.options import LARGE_INTEGER, PADDING_STRATEGIES, check_positive_int


def pad_encodings(
    encoded_inputs: Any,
    pad_values: dict[str, int],
    padding_side: str,
    model_max_length: int,
    padding: bool | str,
    max_length: int | None,
    pad_to_multiple_of: int | None,
    return_attention_mask: bool | None,
    return_tensors: str | None,
) -> BatchEncoding:
    """Pad `encoded_inputs` (see `pad` of the tokenizers); `pad_values`: the fill value of each padded
    key (`input_ids`, `token_type_ids`, `special_tokens_mask`, `attention_mask`)."""
    rows_given = isinstance(encoded_inputs, (list, tuple)) and bool(encoded_inputs)
    if rows_given and isinstance(encoded_inputs[0], dict):
        features = {key: [row[key] for row in encoded_inputs] for key in encoded_inputs[0]}
    elif isinstance(encoded_inputs, dict):
        features = dict(encoded_inputs)
    else:
        raise TypeError("pad takes an encoding (a dict such as a BatchEncoding) or a list of them; got "
                        f"{type(encoded_inputs).__name__}")
    if "input_ids" not in features:
        raise ValueError(f"pad needs input_ids; got the keys {sorted(features)}")
    features = {key: value.tolist() if hasattr(value, "tolist") else value
                for key, value in features.items()}
    single = bool(features["input_ids"]) and not isinstance(features["input_ids"][0], (list, tuple))
    if single:
        features = {key: [value] for key, value in features.items()}
    try:
        strategy = PADDING_STRATEGIES[padding]
    except (KeyError, TypeError):
        raise ValueError(
            f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad'; got {padding!r}"
        ) from None
    for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
        check_positive_int(name, value, optional=True)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right'; got {padding_side!r}")
    rows = [list(ids) for ids in features["input_ids"]]
    if return_attention_mask is not False and "attention_mask" not in features:
        features["attention_mask"] = [[1] * len(ids) for ids in rows]
    target = None
    if strategy == "longest":
        target = max((len(ids) for ids in rows), default=0)
    elif strategy == "max_length":
        target = max_length if max_length is not None else model_max_length
        if target > LARGE_INTEGER:
            raise ValueError("padding='max_length' needs max_length: this tokenizer has no "
                             "model_max_length")
    if target is not None and pad_to_multiple_of is not None and target % pad_to_multiple_of:
        target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of
    padded = {key: features[key] for key in features if key not in pad_values}
    for key in (k for k in pad_values if k in features):
        out = []
        for value in features[key]:
            missing = 0 if target is None else target - len(value)
            fill = [pad_values[key]] * max(missing, 0)
            out.append(fill + list(value) if padding_side == "left" else list(value) + fill)
        padded[key] = out
    order = [k for k in features if k in padded] + [k for k in padded if k not in features]
    padded = {key: padded[key] for key in order}
    if single:
        padded = {key: value[0] for key, value in padded.items()}
    inputs = {key: value for key, value in padded.items() if key in pad_values}
    out = to_tensors(inputs, return_tensors, prepend_batch_axis=False)
    for key, value in padded.items():  # labels and other fields: their own dtype (floats stay floats)
        if key not in pad_values:
            if return_tensors == "pt":
                import torch

                value = torch.tensor(value)
            elif return_tensors == "np":
                value = np.asarray(value)
            out[key] = value
    return BatchEncoding({key: out[key] for key in order})
