"""The model outputs used without transformers: dataclasses with transformers 5's class names, field
names and access rules (`rembert_fast.outputs` picks transformers' own classes when it can subclass it).

Like transformers' `ModelOutput`, an output is an ordered dict of its non-None fields: `out.logits`,
`out["logits"]` and `out[0]` all work, integer and slice indices skip fields that are None, and
`to_tuple()` gives the non-None fields in order. The KV cache is the field `cache`, as in transformers 5
(a legacy tuple of per-layer tuples); its transformers 4 name `past_key_values` is accepted as an alias,
as an attribute and as a key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import torch

_ALIASES = {"past_key_values": "cache"}

PastKeyValues = tuple[tuple[torch.Tensor, ...], ...]


class ModelOutput(OrderedDict):
    """Base of every output: attribute, key and index access; None fields are left out of the dict."""

    def __setattr__(self, name: str, value: Any) -> None:
        name = _ALIASES.get(name, name)
        if value is not None and name in {f.name for f in fields(self)}:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        key = _ALIASES.get(key, key)
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(_ALIASES.get(key, key))
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return super().__contains__(_ALIASES.get(key, key) if isinstance(key, str) else key)

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(_ALIASES.get(key, key), default)

    @property
    def past_key_values(self) -> Any:
        """transformers 4's name for `cache`."""
        return self.cache

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields, in declaration order."""
        return tuple(self[k] for k in self.keys())


@dataclass(eq=False)
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    """RemBertModel's output; `last_hidden_state` (B, L, hidden), `pooler_output` (B, hidden)."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    cache: PastKeyValues | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class MaskedLMOutput(ModelOutput):
    """RemBertForMaskedLM's output; `logits` (B, L, vocab)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class CausalLMOutputWithCrossAttentions(ModelOutput):
    """RemBertForCausalLM's output; `logits` (B, L, vocab), `cache` when use_cache."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: PastKeyValues | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class SequenceClassifierOutput(ModelOutput):
    """RemBertForSequenceClassification's output; `logits` (B, num_labels)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class MultipleChoiceModelOutput(ModelOutput):
    """RemBertForMultipleChoice's output; `logits` (B, num_choices)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class TokenClassifierOutput(ModelOutput):
    """RemBertForTokenClassification's output; `logits` (B, L, num_labels)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class QuestionAnsweringModelOutput(ModelOutput):
    """RemBertForQuestionAnswering's output; `start_logits` and `end_logits` (B, L)."""

    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
