"""rembert_fast: a drop-in, accelerated PyTorch RemBERT.

    from rembert_fast import RemBertModel, RemBertTokenizerFast
    model = RemBertModel.from_pretrained("path/to/rembert", dtype=torch.bfloat16, device="cuda")

Names are imported on first use, so `import rembert_fast` stays cheap (the CLI starts fast).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RemBertConfig": "rembert_fast.configuration",
    "RemBertModel": "rembert_fast.modeling",
    "RemBertPreTrainedModel": "rembert_fast.modeling",
    "RemBertForMaskedLM": "rembert_fast.modeling",
    "RemBertForCausalLM": "rembert_fast.modeling",
    "RemBertForSequenceClassification": "rembert_fast.modeling",
    "RemBertForMultipleChoice": "rembert_fast.modeling",
    "RemBertForTokenClassification": "rembert_fast.modeling",
    "RemBertForQuestionAnswering": "rembert_fast.modeling",
    "RemBertTokenizer": "rembert_fast.tokenization",
    "RemBertTokenizerFast": "rembert_fast.tokenization",
    "optimize": "rembert_fast.patching",
    "use_backend": "rembert_fast.ops",
    "backend_info": "rembert_fast.ops",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rembert_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
