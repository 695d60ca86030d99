"""The bases rembert_fast's config and models subclass, chosen once, at import.

When transformers is importable and of a major version these classes are written for (`SUPPORTED_MAJOR`),
`ConfigBase`, `ModelBase`, `GenerationBase` and `LayerBase` are transformers' `PreTrainedConfig`,
`PreTrainedModel`, `GenerationMixin` and `GradientCheckpointingLayer`, so rembert_fast's classes are what
Trainer, pipelines, `generate` and PEFT expect. Otherwise they are the standalone bases (`object`,
`standalone_base.StandaloneModel`, `object`, `standalone_base.StandaloneCheckpointingLayer`) and
`TRANSFORMERS` is False; a transformers that is installed but cannot be subclassed is named in one
warning, and nothing fails at import.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from rembert_fast.standalone_base import StandaloneCheckpointingLayer, StandaloneModel

SUPPORTED_MAJOR = (5,)


def _transformers_bases() -> tuple[Any, Any, Any, Any] | None:
    """transformers' (PreTrainedConfig, PreTrainedModel, GenerationMixin, GradientCheckpointingLayer), or None
    (see the module doc)."""
    try:
        if importlib.util.find_spec("transformers") is None:
            return None
    except (ImportError, ValueError):  # a None placeholder in sys.modules: transformers hidden
        return None
    version = "unknown"
    try:
        import transformers

        version = str(getattr(transformers, "__version__", "unknown"))
        major = int(version.split(".")[0])
        if major not in SUPPORTED_MAJOR:
            raise ImportError(f"major version {major} is not one of {SUPPORTED_MAJOR}")
        from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
        from transformers.modeling_layers import GradientCheckpointingLayer
    except Exception as err:  # noqa: BLE001 - any failure means: use the standalone bases
        warnings.warn(f"rembert_fast cannot subclass transformers {version} ({err}); its models use the "
                      "standalone base and are not transformers.PreTrainedModel instances", stacklevel=2)
        return None
    return PreTrainedConfig, PreTrainedModel, GenerationMixin, GradientCheckpointingLayer


_BASES = _transformers_bases()
TRANSFORMERS = _BASES is not None
ConfigBase: Any = _BASES[0] if _BASES else object
ModelBase: Any = _BASES[1] if _BASES else StandaloneModel
GenerationBase: Any = _BASES[2] if _BASES else object
LayerBase: Any = _BASES[3] if _BASES else StandaloneCheckpointingLayer
