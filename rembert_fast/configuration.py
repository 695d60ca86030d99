"""RemBertConfig: the model's hyper-parameters, read from and written to transformers' `config.json`.

Field names and defaults are transformers' (`google/rembert`). Keys this class does not know are kept
as attributes and written back, so a config round-trips through rembert_fast unchanged.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from rembert_fast import hub
from rembert_fast.hf_base import TRANSFORMERS, ConfigBase
from rembert_fast.hub import LOADER_ONLY_KEYWORDS

CONFIG_NAME = "config.json"

_DEFAULTS: dict[str, Any] = {
    "vocab_size": 250300,
    "hidden_size": 1152,
    "num_hidden_layers": 32,
    "num_attention_heads": 18,
    "input_embedding_size": 256,
    "output_embedding_size": 1664,
    "intermediate_size": 4608,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "use_cache": True,
    "pad_token_id": 0,
    "bos_token_id": 312,
    "eos_token_id": 313,
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": False,
    "problem_type": None,
    "chunk_size_feed_forward": 0,
}

# The largest value of each size a model can be built with here: past these a field is a typo or a
# hostile config.json, refused before anything of that size is allocated.
MAX_SIZES = {
    "vocab_size": 1 << 24,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1 << 10,
    "num_attention_heads": 1 << 12,
    "input_embedding_size": 1 << 16,
    "output_embedding_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "max_position_embeddings": 1 << 20,
    "type_vocab_size": 1 << 10,
    "num_labels": 1 << 20,
}
MAX_PARAMETERS = 1 << 36  # 64 Gi weights (256 GiB in float32): more than any device holds

_PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


def _torch_dtype(name: str) -> Any:
    """torch.float16 for "float16" or "torch.float16"; ValueError naming the string otherwise."""
    import torch

    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={name!r} is not a torch dtype (such as 'float16', 'bfloat16', 'float32')")
    return dtype


def _check_label_count(count: int | None) -> None:
    if count is not None and count > MAX_SIZES["num_labels"]:
        raise ValueError(f"num_labels={count} is larger than a classification head can be built with "
                         f"(at most {MAX_SIZES['num_labels']})")


class RemBertConfig(ConfigBase):
    """Configuration of a RemBERT model; the same fields, defaults and JSON as transformers'.

    With transformers installed this is a `transformers.PreTrainedConfig` (model_type "rembert"); its
    JSON is still the one described here. `torch_dtype`/`dtype` strings ("float16") become torch dtypes.

    Args:
        num_labels: number of labels of a classification head (default 2); sets `id2label`/`label2id`
            to `LABEL_i` names unless `id2label` is given.
        **kwargs: any field of `_DEFAULTS`, plus unknown keys, which are preserved.
    """

    model_type = "rembert"

    def __init__(self, num_labels: int | None = None, **kwargs: Any) -> None:
        if "torch_dtype" in kwargs:  # transformers' old name for `dtype`
            torch_dtype = kwargs.pop("torch_dtype")
            kwargs.setdefault("dtype", torch_dtype)
        if isinstance(kwargs.get("dtype"), str):
            kwargs["dtype"] = _torch_dtype(kwargs["dtype"])
        # Which attention transformers would build from this config (not a field of config.json).
        attn_implementation = kwargs.pop("attn_implementation", None)
        if TRANSFORMERS:
            # transformers' own fields (return_dict, name_or_path, ...) at their defaults; ours follow
            super().__init__(id2label={0: "LABEL_0", 1: "LABEL_1"}, attn_implementation=attn_implementation)
        else:
            self._attn_implementation = attn_implementation
        for key, value in _DEFAULTS.items():
            setattr(self, key, kwargs.pop(key, value))
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        kwargs.pop("model_type", None)
        if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int)
                                       or num_labels < 0):
            raise ValueError(f"num_labels={num_labels!r} must be a non-negative integer")
        _check_label_count(num_labels)
        for name, mapping in (("id2label", id2label), ("label2id", label2id)):
            if mapping is not None and not isinstance(mapping, dict):
                raise ValueError(f"{name} must be a JSON object (a dict), got {type(mapping).__name__}")
        if id2label is not None:
            _check_label_count(len(id2label))
            try:
                self.id2label = {int(k): v for k, v in id2label.items()}
            except ValueError as err:
                raise ValueError(f"id2label keys must be label indices (0, 1, ...), got "
                                 f"{list(id2label)!r}") from err
            if num_labels is not None and num_labels != len(self.id2label):
                raise ValueError(
                    f"num_labels={num_labels} disagrees with id2label, which has {len(self.id2label)} labels"
                )
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(2 if num_labels is None else num_labels)}
        # label2id is kept as given (transformers keeps {"a": "0"} too); nothing here reads its values.
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in self.id2label.items()}
        for key, value in kwargs.items():
            setattr(self, key, value)
        self._extra_keys = list(kwargs)
        self.validate()

    # ------------------------------------------------------------------ derived fields
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        _check_label_count(value)
        if value != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise ValueError for values the model cannot be built with."""
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "input_embedding_size", "output_embedding_size", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key}={value!r} must be a positive integer")
            if value > MAX_SIZES[key]:
                raise ValueError(f"{key}={value} is larger than a RemBERT model can be built with "
                                 f"(at most {MAX_SIZES[key]})")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{key}={value!r} must be a number in [0, 1)")
        for key in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{key}={value!r} must be a positive number")
        for key in ("is_decoder", "add_cross_attention", "use_cache", "tie_word_embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key}={getattr(self, key)!r} must be true or false")
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)
                                or not 0 <= pad < self.vocab_size):
            raise ValueError(f"pad_token_id={pad!r} must be None or an id in [0, {self.vocab_size}) "
                             f"(vocab_size={self.vocab_size})")
        parameters = self.parameter_count()
        if parameters > MAX_PARAMETERS:
            raise ValueError(f"this config describes {parameters:.3g} weights, more than "
                             f"{MAX_PARAMETERS:.3g}: no device holds such a model (a size in config.json is "
                             "wrong)")
        if self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(f"problem_type={self.problem_type!r} is not one of {_PROBLEM_TYPES}")
        if self.problem_type == "single_label_classification" and self.num_labels < 2:
            raise ValueError(
                f"problem_type='single_label_classification' needs num_labels >= 2, got {self.num_labels} "
                "(use problem_type='regression' for one output)"
            )
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError("add_cross_attention=True needs is_decoder=True")

    def parameter_count(self) -> int:
        """About how many weights the largest model of this config (a masked-LM head) holds."""
        embed, hidden, out = self.input_embedding_size, self.hidden_size, self.output_embedding_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * embed
        layer = 4 * hidden * hidden + 2 * hidden * self.intermediate_size
        head = hidden * out + out * self.vocab_size + hidden * self.num_labels
        return embeddings + embed * hidden + self.num_hidden_layers * layer + head

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.model_type}
        for key in _DEFAULTS:
            out[key] = getattr(self, key)
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        for key in self._extra_keys:
            if hasattr(self, key):  # a model consumes `gradient_checkpointing` (transformers deletes it)
                out[key] = getattr(self, key)
        for key, value in out.items():  # RemBertConfig(dtype=torch.float16): written as "float16"
            if type(value).__name__ == "dtype" and type(value).__module__ == "torch":
                out[key] = str(value).removeprefix("torch.")
        return copy.deepcopy(out)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> RemBertConfig:
        merged = dict(config_dict)
        num_labels = overrides.get("num_labels")
        saved_labels = merged.get("id2label") or {}
        if num_labels is not None and "id2label" not in overrides and len(saved_labels) != num_labels:
            # As in transformers: a num_labels override means a new head, so saved label names go.
            merged.pop("id2label", None)
            merged.pop("label2id", None)
        merged.update(overrides)
        model_type = merged.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"config has model_type={model_type!r}; rembert_fast loads only 'rembert'")
        return cls(**merged)

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config as JSON; `use_diff` is transformers' keyword, accepted and ignored (every field is
        written)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(self.to_json_string(), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> RemBertConfig:
        """Read `config.json` from a directory (or the file itself), or from a Hub model id such as
        "google/rembert" (see `rembert_fast.hub.resolve_directory` for `revision`, `cache_dir`,
        `local_files_only`, `token`, `subfolder`); the other keywords override the file's fields.

        Raises:
            ValueError: a missing path or id (`hub.PretrainedNotFoundError`), no or unreadable config.json.
        """
        for name in LOADER_ONLY_KEYWORDS:
            overrides.pop(name, None)
        path = Path(hub.resolve_directory(path, (CONFIG_NAME,), **hub.pop_hub_keywords(overrides)))
        file = path / CONFIG_NAME if path.is_dir() else path
        if not path.exists():
            raise ValueError(f"model path {str(path)!r} does not exist")
        if not file.is_file():
            raise ValueError(f"no {CONFIG_NAME} in {str(path)!r}")
        try:
            config_dict = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read {str(file)!r} as JSON: {err}") from err
        if not isinstance(config_dict, dict):
            raise ValueError(f"{str(file)!r} must hold a JSON object, got {type(config_dict).__name__}")
        return cls.from_dict(config_dict, **overrides)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemBertConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"RemBertConfig {self.to_json_string()}"
