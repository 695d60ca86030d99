"""The heads' loss reductions, with transformers 5's loss keywords (architecture: "LM losses").

`num_items_in_batch` (what Trainer passes when a model accepts loss keywords, for gradient accumulation):
the loss is the sum over this batch's items divided by it, instead of their mean, so that the gradients
of the accumulated micro-batches add up to the gradient of the whole batch's mean (transformers'
`fixed_cross_entropy`). `shift_labels` (causal LM only): the targets already aligned with the logits,
position i scored against shift_labels[i], instead of labels shifted left by one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from rembert_fast.modeling.lm_loss import IGNORE_INDEX

__all__ = ["cross_entropy", "per_item", "causal_targets", "shift_labels_of", "no_shift_labels"]


def _divide(loss_sum: torch.Tensor, num_items_in_batch: torch.Tensor | int) -> torch.Tensor:
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch


def cross_entropy(
    logits: torch.Tensor,  # (N, C)
    targets: torch.Tensor,  # (N,) int64, ignore_index = not scored
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """transformers' `fixed_cross_entropy`: the mean over scored items, or their sum divided by
    `num_items_in_batch` when given. Logits are upcast to fp32 first."""
    if num_items_in_batch is None:
        return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)
    loss = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")
    return _divide(loss, num_items_in_batch)


def per_item(loss_fn: Callable[..., torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
             num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
    """An elementwise loss (`F.mse_loss`, `F.binary_cross_entropy_with_logits`) reduced like
    `cross_entropy`: the mean, or the sum divided by `num_items_in_batch`."""
    if num_items_in_batch is None:
        return loss_fn(inputs, targets)
    return _divide(loss_fn(inputs, targets, reduction="sum"), num_items_in_batch)


def causal_targets(labels: torch.Tensor, shift_labels: torch.Tensor | None) -> torch.Tensor:
    """(B, L) targets aligned with the causal LM's logits: position i is scored against labels[i + 1]
    (the last position against nothing, -100), or against shift_labels[i] when given (transformers'
    `ForCausalLMLoss`)."""
    if shift_labels is not None:
        return shift_labels
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def shift_labels_of(head: str, loss_kwargs: dict[str, Any]) -> torch.Tensor | None:
    """`shift_labels` from a forward's extra keywords (not a named parameter: Trainer takes every
    parameter whose name holds "label" for a label column, and would then find no labels to evaluate);
    any other extra keyword is a TypeError naming it, as for a function without it."""
    unknown = sorted(set(loss_kwargs) - {"shift_labels"})
    if unknown:
        raise TypeError(f"{head}.forward() got unexpected keyword arguments {unknown}")
    return loss_kwargs.get("shift_labels")


def no_shift_labels(head: str, loss_kwargs: dict[str, Any]) -> None:
    """`shift_labels` means something to a causal LM only: another head names it instead of ignoring it."""
    if shift_labels_of(head, loss_kwargs) is not None:
        raise ValueError(f"{head} scores each label at its own position: shift_labels is the causal LM's "
                         "keyword (labels already shifted left); pass labels instead")
