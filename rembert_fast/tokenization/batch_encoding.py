"""`BatchEncoding`, the tokenizers' output, and its conversion to numpy arrays or torch tensors."""

from __future__ import annotations

from typing import Any

import numpy as np


class BatchEncoding(dict):
    """The tokenizers' output: a dict (`input_ids`, `token_type_ids`, `attention_mask`, ...) whose keys
    are also attributes, like transformers' BatchEncoding."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self)}") from None

    def to(self, device: Any) -> BatchEncoding:
        """Move every torch tensor to `device` (in place, returns self)."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self


def to_tensors(
    features: dict[str, Any], return_tensors: str | None, prepend_batch_axis: bool
) -> BatchEncoding:
    if return_tensors is None:
        return BatchEncoding(features)
    out = BatchEncoding()
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
