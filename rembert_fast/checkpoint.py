"""Loading and saving RemBERT checkpoints in transformers' on-disk formats.

Formats (the names transformers uses, so directories move freely between the two libraries):
- ``model.safetensors`` or shards listed by ``model.safetensors.index.json`` (preferred);
- ``pytorch_model.bin`` or shards listed by ``pytorch_model.bin.index.json``, read with
  ``torch.load(..., weights_only=True)`` so a checkpoint cannot run code.

Loading builds the model on the meta device (no memory, no random init), then reads the checkpoint
one tensor at a time, converting each to the target dtype and device on the way, and assigns them:
the model is never materialised twice and a bf16 model on a GPU never passes through a float32 copy
there. Key matching is strict where it matters and follows transformers where users rely on it:

- a head model accepts a base-model checkpoint (keys without ``rembert.``) and a base model accepts a
  head checkpoint (keys with ``rembert.``; the other head's keys are ignored with a warning);
- a head (``cls``, ``classifier``, ``qa_outputs``) or the pooler absent from the checkpoint as a whole
  is freshly initialised with a warning (the fine-tuning case); a module only partly present, any
  missing embedding/encoder key, an unexpected key inside a module the model has, and any shape
  mismatch are errors that name the keys.

Saving writes the persistent state-dict keys only (derived state such as a fused QKV weight or the
``position_ids`` buffer never reaches the disk), plus ``config.json`` with ``architectures``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import pickle
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from rembert_fast import hub
from rembert_fast.configuration import CONFIG_NAME, RemBertConfig
from rembert_fast.hub import LOADER_ONLY_KEYWORDS

if TYPE_CHECKING:
    from rembert_fast.modeling import RemBertPreTrainedModel

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
GENERATION_CONFIG_NAME = "generation_config.json"  # transformers' GenerationConfig of a model that generates
# Looked for in this order: safetensors wins over pickle-based .bin when a directory holds both.
_WEIGHTS_SEARCH_ORDER = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
# What a Hub repository's weights are fetched as, in the same order (an index with its shards).
HUB_WEIGHT_FILES = ((SAFE_WEIGHTS_NAME,), (SAFE_WEIGHTS_INDEX_NAME, "model-*-of-*.safetensors"),
                    (WEIGHTS_NAME,), (WEIGHTS_INDEX_NAME, "pytorch_model-*-of-*.bin"))
# Every file name this module may write; stale ones are removed before a save.
_WRITTEN_FILE_RE = re.compile(
    r"^(model(-\d{5}-of-\d{5})?\.safetensors|pytorch_model(-\d{5}-of-\d{5})?\.bin|"
    r"model\.safetensors\.index\.json|pytorch_model\.bin\.index\.json)$"
)

BASE_MODEL_PREFIX = "rembert"
# Top-level modules of the base model. Embedding and encoder weights are never initialised at load.
_BASE_GROUPS = ("embeddings", "encoder", "pooler")
_REQUIRED_GROUPS = ("embeddings", "encoder")

_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SIZE_UNITS = {
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1,
}


# ------------------------------------------------------------------------------------------- reading
def _resolve_weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files a checkpoint path names: one file, or every shard of an index, in order."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint path {str(path)!r} does not exist")
    if path.is_dir():
        found = [path / name for name in _WEIGHTS_SEARCH_ORDER if (path / name).is_file()]
        if not found:
            raise ValueError(
                f"no weights file in {str(path)!r}: looked for {', '.join(_WEIGHTS_SEARCH_ORDER)}"
            )
        path = _inside(found[0], path)
    if not path.name.endswith(".index.json"):
        return [path]
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        message = f"cannot read the shard index {str(path)!r} (it needs a 'weight_map'): {err!r}"
        raise ValueError(message) from err
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"the shard index {str(path)!r} has a 'weight_map' that is not a mapping of names "
                         f"to shard file names: {str(weight_map)[:200]}")
    names = list(dict.fromkeys(weight_map.values()))
    for name in names:
        if Path(name).name != name:  # a shard lives beside its index, never elsewhere on the disk
            raise ValueError(f"the shard index {str(path)!r} names {name!r}, which is not a file name in "
                             f"{str(path.parent)!r}")
    shards = [path.parent / name for name in names]
    for shard in shards:
        if not shard.is_file():
            raise ValueError(f"shard {shard.name!r} named by the index {str(path)!r} does not exist")
    return [_inside(shard, path.parent) for shard in shards]


def _inside(file: Path, directory: Path) -> Path:
    """`file`, refused when it is a link to a file outside `directory` (a checkpoint could otherwise
    read any file on the disk); a Hub cache snapshot's links into its repository's blobs/ are fine."""
    target, home = file.resolve(), directory.resolve()
    allowed = [home]
    # <cache>/models--org--name/snapshots/<revision>/[<subfolder>/]<file> -> <cache>/models--org--name/blobs/
    allowed += [place.parent.parent / "blobs" for place in (home, *home.parents)
                if place.parent.name == "snapshots"]
    if not any(target.is_relative_to(place) for place in allowed):
        raise ValueError(f"weights file {str(file)!r} links to {str(target)!r}, outside the model directory "
                         f"{str(directory)!r}: refusing to read it (copy the file into the directory)")
    return file


def _read_file(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, CPU tensor) from one weights file; a damaged file raises ValueError naming it."""
    if file.suffix == ".safetensors":
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)
        except SafetensorError as err:
            raise ValueError(f"cannot read the safetensors file {str(file)!r}: {err}") from err
        return
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as err:
        raise ValueError(f"cannot read the weights file {str(file)!r}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(file)!r} does not hold a state dict (a mapping of names to tensors)")
    yield from state.items()


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors onto the CPU, unchanged.

    Args:
        path: a directory holding a weights file (see `_WEIGHTS_SEARCH_ORDER`; safetensors preferred),
            a weights file, or a shard index (`*.index.json`).

    Raises:
        ValueError: a missing path, no weights file, an index naming a missing shard, a damaged file.
    """
    return {key: tensor for file in _resolve_weight_files(path) for key, tensor in _read_file(file)}


# ------------------------------------------------------------------------------------------- loading
def _resolve_dtype(dtype: torch.dtype | str | None, config: RemBertConfig) -> torch.dtype | None:
    """The floating dtype to load into; None means 'the checkpoint's own' (decided by its first tensor)."""
    if dtype is None:
        return torch.get_default_dtype()
    if dtype == "auto":
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if stored is None:
            return None
        name = str(stored).removeprefix("torch.")
        if name not in _DTYPE_NAMES:
            raise ValueError(f"dtype='auto' found dtype={name!r} in config.json; pass one of "
                             f"{sorted(_DTYPE_NAMES)} instead")
        return _DTYPE_NAMES[name]
    if isinstance(dtype, str):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype={dtype!r} is not one of {sorted(_DTYPE_NAMES) + ['auto']}")
        return _DTYPE_NAMES[dtype]
    if dtype not in _DTYPE_NAMES.values():
        # float64 and the float8 types are floating too, but the ops run float32/float16/bfloat16 only.
        raise ValueError(f"dtype={dtype!r} is not supported: pass torch.float32, torch.float16 or "
                         f"torch.bfloat16, or one of {sorted(_DTYPE_NAMES) + ['auto']}")
    return dtype


def _group(key: str) -> str:
    """The top-level module a key belongs to: 'embeddings', 'encoder', 'pooler', 'cls', 'classifier'..."""
    parts = key.split(".")
    return parts[1] if parts[0] == BASE_MODEL_PREFIX and len(parts) > 1 else parts[0]


def _map_key(key: str, model_is_head: bool) -> str:
    """Rename a checkpoint key to the model's naming (transformers' base <-> head prefix rule)."""
    prefixed = key.startswith(BASE_MODEL_PREFIX + ".")
    if model_is_head and not prefixed and key.split(".")[0] in _BASE_GROUPS:
        return f"{BASE_MODEL_PREFIX}.{key}"
    if not model_is_head and prefixed:
        return key[len(BASE_MODEL_PREFIX) + 1:]
    return key


def _parse_device(device: torch.device | str | int | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device: {err}") from err
    if parsed.type == "meta":
        raise ValueError("device='meta' holds no weights; load onto a real device and use .to('meta') after")
    try:
        # One empty allocation tells whether this process can use the device at all (CUDA on a CPU-only
        # build, a device index past the last GPU), before any weight is read.
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"device={device!r} cannot be used here: {err}") from err
    return parsed


def _device_from_map(device_map: Any) -> torch.device | str | int | None:
    """transformers' `device_map` as one device: a device name or index, or "auto" (the GPU when there
    is one); a per-module dict (model parallelism) is refused."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError(f"device_map={device_map!r} spreads the model over several devices, which "
                             "rembert_fast does not do: pass one device (device='cuda')")
        return next(iter(devices))
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device_map


def _dtype_name(dtype: Any) -> Any:
    """torch.float16 and "float16" alike (anything else as it is), to compare two ways of naming one."""
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype


def _device_key(device: Any) -> tuple[str, int | None]:
    """"cpu" and "cpu:0" alike, "cuda" and "cuda:<current>" alike, to compare two ways of naming one."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        return (str(device), None)
    if parsed.type == "cpu":
        return ("cpu", None)
    index = parsed.index
    if index is None and parsed.type == "cuda":
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (parsed.type, index)


def _loading_keywords(kwargs: dict[str, Any], dtype: Any, device: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Take transformers' loading keywords out of `kwargs` (the rest are config fields): the dtype and
    device they name, and the loader's own options."""
    for name in LOADER_ONLY_KEYWORDS:
        kwargs.pop(name, None)
    if "torch_dtype" in kwargs:  # transformers' name before 4.56
        torch_dtype = kwargs.pop("torch_dtype")
        if dtype is not None and torch_dtype is not None and _dtype_name(torch_dtype) != _dtype_name(dtype):
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one")
        dtype = torch_dtype if dtype is None else dtype
    if "device_map" in kwargs:
        mapped = _device_from_map(kwargs.pop("device_map"))
        if device is not None and mapped is not None and _device_key(mapped) != _device_key(device):
            raise ValueError(f"device={device!r} and device_map={mapped!r} disagree; pass one")
        device = mapped if device is None else device
    options = {name: kwargs.pop(name) for name in ("config", "output_loading_info", "ignore_mismatched_sizes",
                                                   "state_dict") if name in kwargs}
    return dtype, device, options


class ShapeMismatchError(ValueError, RuntimeError):
    """A checkpoint weight of another shape than the model's (transformers raises a RuntimeError there)."""


class MetaDeviceContextError(ValueError, RuntimeError):
    """`from_pretrained` called under `torch.device("meta")` (transformers raises a RuntimeError there)."""


def load_pretrained(
    model_cls: type[RemBertPreTrainedModel],
    path: str | os.PathLike | None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | int | None = None,
    **config_overrides: Any,
) -> RemBertPreTrainedModel | tuple[RemBertPreTrainedModel, dict[str, Any]]:
    """Build `model_cls` from a checkpoint directory (config.json + weights), ready for inference.

    Args:
        model_cls: a RemBert* model class of `rembert_fast.modeling`.
        path: a directory written by `save_pretrained` here or in transformers, or a Hub model id
            ("google/rembert") fetched into (or, offline, found in) the Hub cache; a local directory
            of the same name wins. None with `config=` and `state_dict=`: the model from those alone.
        dtype: floating dtype of the parameters: a torch.dtype, "float32", "float16", "bfloat16", or
            "auto" (the config's `dtype`/`torch_dtype`, else the checkpoint's). None means
            torch.get_default_dtype() (float32), as transformers does for dtype=None (its own default
            is "auto"; google/rembert is float32 either way). Integer tensors keep their dtype.
        device: where the parameters live (default: the `torch.device(...)` context's device, else CPU);
            tensors are converted one at a time.
        **config_overrides: fields that replace config.json's (e.g. `num_labels=5`); as in transformers,
            a keyword of `model_cls.__init__` (e.g. `add_pooling_layer=False`) goes to the model instead.
            transformers' loading keywords are understood too: `torch_dtype` (dtype's old name),
            `device_map` (one device, or "auto"), `config` (a RemBertConfig to use instead of
            config.json), `state_dict` (the weights to load instead of the directory's files, with the
            same key rules), `output_loading_info`, `ignore_mismatched_sizes` (weights whose shape differs,
            e.g. a classifier of another num_labels, are initialised anew and listed); the Hub's and
            loader's own (`low_cpu_mem_usage`, `attn_implementation`, ...) have no effect and are
            dropped; the Hub's (`revision`, `cache_dir`, `local_files_only`, `token`, `subfolder`,
            `force_download`) apply when `path` is a Hub model id (see `rembert_fast.hub`).

    Returns:
        The model in eval mode; its `newly_initialized_keys` lists the weights the checkpoint lacked
        (a head or pooler initialised at random, as logged). With `output_loading_info=True`,
        `(model, {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"})` as transformers:
        sets of keys (mismatched: `(key, checkpoint shape, model shape)` tuples) and a list.
        A `generation_config.json` beside the weights becomes the model's `generation_config` (models
        that generate, with transformers installed).

    Raises:
        ValueError: a missing directory or weights file (a missing Hub model: `hub.PretrainedNotFoundError`,
            also an OSError), a damaged file, missing or unexpected keys,
            a shape mismatch (`ShapeMismatchError`, also transformers' RuntimeError; each message names the
            path, keys and shapes); a call under
            `torch.device("meta")` (`MetaDeviceContextError`, also a RuntimeError).
    """
    if torch.get_default_device().type == "meta":
        raise MetaDeviceContextError(
            "You are using `from_pretrained` with a meta device context manager or "
            "`torch.set_default_device('meta')`: the weights would be read for nothing. Build an empty model "
            "with `Model(config)` under the context instead, or load outside it and use `.to('meta')`")
    hub_keywords = hub.pop_hub_keywords(config_overrides)
    dtype, device, options = _loading_keywords(config_overrides, dtype, device)
    state_dict = options.get("state_dict")
    if path is None and (options.get("config") is None or state_dict is None):
        raise ValueError("from_pretrained(None, ...) needs config= and state_dict= (the model is built from "
                         "them alone); otherwise pass a model directory or Hub id")
    if path is not None:
        path = hub.resolve_directory(path, (CONFIG_NAME, GENERATION_CONFIG_NAME), HUB_WEIGHT_FILES,
                                     **hub_keywords)
        if Path(path).is_file():
            raise ValueError(f"{str(path)!r} is a file; pass the model directory that holds config.json and "
                             f"the weights ({str(Path(path).parent)!r}?)")
        if not Path(path).is_dir():
            raise ValueError(f"model directory {str(path)!r} does not exist")
    if state_dict is not None and not (isinstance(state_dict, dict) and all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items())):
        raise ValueError(f"state_dict must map key names to tensors, got {type(state_dict).__name__}")
    source = "the given state_dict" if state_dict is not None else str(path)
    init_parameters = inspect.signature(model_cls.__init__).parameters
    model_kwargs = {key: config_overrides.pop(key) for key in list(config_overrides)
                    if key in init_parameters and key not in ("self", "config")}
    given = options.get("config")
    if given is None:
        config = RemBertConfig.from_pretrained(path, **config_overrides)
    elif hasattr(given, "to_dict"):  # ours, or transformers' RemBertConfig
        config = RemBertConfig.from_dict(given.to_dict(), **config_overrides)
    else:
        raise ValueError(f"config must be a RemBertConfig, got {type(given).__name__}")
    ignore_mismatched = bool(options.get("ignore_mismatched_sizes"))
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    target_dtype = _resolve_dtype(dtype, config)
    target_device = _parse_device(device if device is not None else torch.get_default_device())
    if state_dict is not None:
        tensors: Iterable[tuple[str, torch.Tensor]] = state_dict.items()
    else:
        tensors = (item for file in _resolve_weight_files(path) for item in _read_file(file))

    with torch.device("meta"):
        model = model_cls(config, **model_kwargs)
    expected = model.state_dict()
    model_is_head = any(key.startswith(BASE_MODEL_PREFIX + ".") for key in expected)
    model_groups = {_group(key) for key in expected}

    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    ignored: list[str] = []
    for ckpt_key, tensor in tensors:
        key = _map_key(ckpt_key, model_is_head)
        if key not in expected:
            (unexpected if _group(key) in model_groups else ignored).append(ckpt_key)
            continue
        if key in loaded:
            raise ValueError(f"{source!r} holds {key!r} twice (with and without the "
                             f"{BASE_MODEL_PREFIX!r} prefix)")
        if tensor.shape != expected[key].shape and ignore_mismatched:
            mismatched.append((key, tuple(tensor.shape), tuple(expected[key].shape)))
            continue
        if tensor.shape != expected[key].shape:
            raise ShapeMismatchError(
                f"{source!r}: {ckpt_key!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(expected[key].shape)} in {model_cls.__name__} (check config.json)"
            )
        if tensor.dtype != expected[key].dtype and not (tensor.is_floating_point()
                                                        and expected[key].is_floating_point()):
            raise ValueError(
                f"{source!r}: {ckpt_key!r} is {tensor.dtype} in the checkpoint but "
                f"{model_cls.__name__} expects {expected[key].dtype} (a damaged or foreign file?)"
            )
        if tensor.is_floating_point():
            if target_dtype is None:
                if tensor.dtype not in _DTYPE_NAMES.values():
                    raise ValueError(
                        f"dtype='auto': {source!r} stores {ckpt_key!r} as {tensor.dtype}, which "
                        "rembert_fast does not run; pass dtype=torch.float32 (or float16, bfloat16) "
                        "to convert it while loading")
                target_dtype = tensor.dtype
            tensor = tensor.to(device=target_device, dtype=target_dtype)
        else:
            tensor = tensor.to(device=target_device)
        loaded[key] = tensor

    missing = [key for key in expected if key not in loaded]
    absent_groups = {
        group for group in {_group(key) for key in missing}
        if group not in _REQUIRED_GROUPS and not any(_group(key) == group for key in loaded)
    }
    renewed = {key for key, _, _ in mismatched}
    fresh = [key for key in missing if _group(key) in absent_groups or key in renewed]
    missing = [key for key in missing if key not in fresh]
    if mismatched:
        logger.warning("%s: weights of another shape in the checkpoint, initialised anew "
                       "(ignore_mismatched_sizes=True): %s",
                       source, [f"{key}: {have} in the checkpoint, {want} here"
                              for key, have, want in mismatched])
    if missing or unexpected:
        raise ValueError(
            f"{source!r} does not match {model_cls.__name__}:"
            + (f"\n  missing keys: {missing}" if missing else "")
            + (f"\n  unexpected keys: {unexpected}" if unexpected else "")
        )
    if ignored:
        logger.warning("%s: checkpoint weights not used by %s: %s", source, model_cls.__name__, ignored)

    for key in fresh:
        meta = expected[key]
        fresh_dtype = (target_dtype or torch.get_default_dtype()) if meta.is_floating_point() else meta.dtype
        loaded[key] = torch.empty(meta.shape, device=target_device, dtype=fresh_dtype)
    model.load_state_dict(loaded, strict=True, assign=True)
    if fresh:
        logger.warning(
            "%s: %s weights not in the checkpoint were newly initialised (train them before use): %s",
            source, model_cls.__name__, fresh,
        )
        with torch.no_grad():
            for module_name in dict.fromkeys(key.rpartition(".")[0] for key in fresh):
                module = model.get_submodule(module_name)
                # _init_weights resets the whole module: keep what the checkpoint gave it (a classifier
                # whose weight was renewed but whose bias was not).
                kept = {name: loaded[f"{module_name}.{name}"].clone()
                        for name, _ in module.named_parameters(recurse=False)
                        if f"{module_name}.{name}" not in fresh}
                model._init_weights(module)
                for name, tensor in kept.items():
                    getattr(module, name).copy_(tensor)

    model.newly_initialized_keys = fresh  # what callers must not trust untrained (see inference)
    model._post_load()
    left_on_meta = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"{model_cls.__name__}._post_load left tensors on the meta device: {left_on_meta}")
    generation_file = Path(path) / GENERATION_CONFIG_NAME if path is not None else None
    if generation_file is not None and generation_file.is_file() and _generates(model):
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    model.eval()
    if options.get("output_loading_info"):
        return model, {"missing_keys": {key for key in fresh if key not in renewed},
                       "unexpected_keys": set(ignored),
                       "mismatched_keys": set(mismatched), "error_msgs": []}
    return model


def _generates(model: nn.Module) -> bool:
    """Whether `model` has a transformers `generation_config` to save and load (RemBertForCausalLM)."""
    can_generate = getattr(model, "can_generate", None)
    generates = callable(can_generate) and bool(can_generate())
    return generates and getattr(model, "generation_config", None) is not None


# -------------------------------------------------------------------------------------------- saving
def _parse_size(size: int | str) -> int:
    """Bytes in a shard-size limit: an int, or '5GB' (10^9), '500MiB' (2^20), ..."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)\s*", str(size).upper())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"max_shard_size={size!r} is not a positive size such as 5GB, 500MB or 1048576")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _tensors_to_save(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors owning their storage: safetensors refuses shared or strided storage."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[torch.device, int]] = set()
    for key, tensor in state.items():
        tensor = tensor.detach()
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        elif storage in seen or not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != (
            tensor.numel() * tensor.element_size()
        ):
            tensor = tensor.contiguous().clone()
        seen.add(storage)
        out[key] = tensor
    return out


def _shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split in key order; a new shard starts where the next tensor would pass the limit."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def save_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    safe_serialization: bool = True,
    max_shard_size: int | str = "5GB",
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
    push_to_hub: bool = False,
) -> None:
    """Write `model` as a transformers-compatible directory: config.json, the weights, and for a model
    that generates (RemBertForCausalLM with transformers) its `generation_config.json`.

    Args:
        model: a rembert_fast model (has `.config`, a RemBertConfig).
        path: the directory (created if needed). Weight files this function may write that are already
            there are removed first, so a directory never holds two disagreeing checkpoints.
        safe_serialization: safetensors (default) or `pytorch_model.bin`.
        max_shard_size: bytes per file (int, or a string such as "5GB", "500MiB"); a larger state is
            split into `model-00001-of-0000N.safetensors` files listed by `model.safetensors.index.json`.
        state_dict: the tensors to write instead of `model.state_dict()` (what Trainer and accelerate
            pass, e.g. gathered from several processes).
        is_main_process: False writes nothing (the other processes of a distributed run).
        push_to_hub: not supported here (no Hub access): upload the directory yourself.
    """
    if push_to_hub:
        raise ValueError("push_to_hub=True is not supported: save the directory, then upload it (e.g. "
                         "`huggingface-cli upload`)")
    if not is_main_process:
        return
    max_bytes = _parse_size(max_shard_size)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot save into {str(path)!r}: it is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)

    tensors = _tensors_to_save(model.state_dict() if state_dict is None else state_dict)
    floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
    config_dict = model.config.to_dict()
    config_dict["architectures"] = [type(model).__name__]
    if floating:
        config_dict["dtype"] = str(floating[0]).removeprefix("torch.")
    RemBertConfig.from_dict(config_dict).save_pretrained(path)
    if _generates(model):
        model.generation_config.save_pretrained(path)

    for old in path.iterdir():
        if _WRITTEN_FILE_RE.match(old.name):
            old.unlink()
    stem, suffix = ("model", ".safetensors") if safe_serialization else ("pytorch_model", ".bin")
    single_name = SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    shards = _shard(tensors, max_bytes)
    names = (
        [single_name] if len(shards) == 1
        else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}{suffix}" for i in range(len(shards))]
    )
    for name, shard in zip(names, shards, strict=True):
        if safe_serialization:
            save_file(shard, str(path / name), metadata={"format": "pt"})
        else:
            torch.save(shard, path / name)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
            "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key in shard},
        }
        index_name = SAFE_WEIGHTS_INDEX_NAME if safe_serialization else WEIGHTS_INDEX_NAME
        (path / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
