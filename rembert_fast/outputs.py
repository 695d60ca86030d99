"""Model outputs: transformers' own output classes when rembert_fast subclasses transformers
(`hf_base.TRANSFORMERS`), else the standalone ones of `rembert_fast.standalone_outputs`.

Either way the classes, their field names and their access rules are transformers 5's: an output is an
ordered dict of its non-None fields (`out.logits`, `out["logits"]`, `out[0]`, `to_tuple()`), and the KV
cache is the field `cache`, readable as `past_key_values` too. Being transformers' classes under
transformers is what its pipelines and Trainer test with `isinstance(output, ModelOutput)`.
`PastKeyValues` is the legacy cache format: one tuple per layer of (k, v[, cross_k, cross_v]), each
(B, heads, length, head_dim).
"""

from __future__ import annotations

from rembert_fast.hf_base import TRANSFORMERS
from rembert_fast.standalone_outputs import PastKeyValues

if TRANSFORMERS:
    from transformers.modeling_outputs import (
        BaseModelOutputWithPoolingAndCrossAttentions,
        CausalLMOutputWithCrossAttentions,
        MaskedLMOutput,
        MultipleChoiceModelOutput,
        QuestionAnsweringModelOutput,
        SequenceClassifierOutput,
        TokenClassifierOutput,
    )
    from transformers.utils import ModelOutput
else:
    from rembert_fast.standalone_outputs import (
        BaseModelOutputWithPoolingAndCrossAttentions,
        CausalLMOutputWithCrossAttentions,
        MaskedLMOutput,
        ModelOutput,
        MultipleChoiceModelOutput,
        QuestionAnsweringModelOutput,
        SequenceClassifierOutput,
        TokenClassifierOutput,
    )

__all__ = [
    "BaseModelOutputWithPoolingAndCrossAttentions",
    "CausalLMOutputWithCrossAttentions",
    "MaskedLMOutput",
    "ModelOutput",
    "MultipleChoiceModelOutput",
    "PastKeyValues",
    "QuestionAnsweringModelOutput",
    "SequenceClassifierOutput",
    "TokenClassifierOutput",
]
