"""RemBERT tokenizers: `RemBertTokenizer` (sentencepiece) and `RemBertTokenizerFast` (tokenizers).

Both reproduce transformers 4.37.2's classes of the same names, token for token, without importing
transformers:

- `RemBertTokenizer` splits the special tokens out of the text (`[MASK]` also eats the whitespace on
  its left), lowercases the rest character by character when `do_lower_case`, and hands each chunk to
  sentencepiece. `keep_accents` and `remove_space` are stored but, as in 4.37.2, change nothing: the
  sentencepiece model's own normalization applies.
- `RemBertTokenizerFast` builds the `tokenizers` pipeline 4.37.2's `RemBertConverter` builds from the
  same `.model` file: normalizer ``` `` ``` and `''` -> `"`, runs of spaces -> one space, NFKD +
  strip accents unless `keep_accents`, lowercase if `do_lower_case`, then the model's precompiled
  charsmap; Metaspace pre-tokenizer and decoder; Unigram model from the pieces and scores;
  `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` post-processor with type ids 0/1. Or it loads a
  `tokenizer.json`.

The two classes keep 4.37.2's different defaults: the slow one `do_lower_case=False,
keep_accents=True, unk_token="[UNK]", pad_token="[PAD]"`; the fast one `do_lower_case=True,
keep_accents=False, unk_token="<unk>", pad_token="<pad>"`. With the fast defaults and a bare
`.model` file, `<unk>` and `<pad>` are not pieces, so they are appended as new ids (`vocab_size`,
`vocab_size + 1`) exactly as 4.37.2 does; a checkpoint's `tokenizer_config.json` /
`special_tokens_map.json` normally sets them, which `from_pretrained` reads.

Deliberate differences from 4.37.2 (errors where it logged or misbehaved): text that is not a string
raises `TypeError` naming the type; a missing or unreadable vocabulary file raises naming the path;
`save_vocabulary` / `save_pretrained` into a path that is not a directory raise; `max_length=0`, a
truncation `max_length` shorter than the special tokens, `padding="max_length"` with no length,
`truncation="only_second"` on a text without a pair, an empty special token, and negative or
non-integer ids raise (`ValueError`, `TypeError`, `IndexError`); `from_pretrained` reads local
directories only (no Hub download); overflowing tokens / `stride` are not supported.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import re
import shutil
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import sentencepiece as spm
from tokenizers import AddedToken as _TkAddedToken
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from rembert_fast.configuration import LOADER_ONLY_KEYWORDS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

VOCAB_FILE = "sentencepiece.model"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"

# transformers' "no maximum length" sentinel and the threshold it compares against.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)
# RemBertConfig.max_position_embeddings: the limit `max_length` is checked against when the
# tokenizer itself has no model_max_length.
REMBERT_MAX_POSITIONS = 512
SPIECE_UNDERLINE = "▁"

SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
_PADDING = {
    False: "do_not_pad",
    None: "do_not_pad",
    "do_not_pad": "do_not_pad",
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION = {
    False: "do_not_truncate",
    None: "do_not_truncate",
    "do_not_truncate": "do_not_truncate",
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}
# Config keys from_pretrained passes on to __init__; other keys (name_or_path, tokenizer_class, ...) are
# bookkeeping written by transformers and carry no behaviour.
_INIT_CONFIG_KEYS = (
    "do_lower_case",
    "remove_space",
    "keep_accents",
    "model_max_length",
    "padding_side",
    "truncation_side",
    "clean_up_tokenization_spaces",
    *SPECIAL_TOKEN_ATTRIBUTES,
)

TextPair = tuple[str, "str | None"]


@dataclass(frozen=True)
class _EncodeOptions:
    """`__call__`'s arguments after validation, as the two encoders take them."""

    add_special_tokens: bool
    padding: str  # "do_not_pad", "longest" or "max_length"
    truncation: str  # "do_not_truncate", "longest_first", "only_first" or "only_second"
    max_length: int | None  # the padding / truncation length, when one applies
    pad_to_multiple_of: int | None
    return_token_type_ids: bool
    return_attention_mask: bool
    return_special_tokens_mask: bool
    return_offsets_mapping: bool
    verbose: bool


@dataclass
class SpecialToken:
    """A special token and how it matches text (transformers' `AddedToken` fields)."""

    content: str
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False

    def __str__(self) -> str:
        return self.content

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "lstrip": self.lstrip,
            "normalized": self.normalized,
            "rstrip": self.rstrip,
            "single_word": self.single_word,
        }

    @classmethod
    def coerce(cls, name: str, value: str | dict | SpecialToken) -> SpecialToken:
        """A plain string is a special token that matches raw text exactly (4.37.2's default)."""
        if isinstance(value, SpecialToken):
            token = value
        elif isinstance(value, str):
            token = cls(value)
        elif isinstance(value, dict) and isinstance(value.get("content"), str):
            token = cls(
                value["content"],
                bool(value.get("lstrip", False)),
                bool(value.get("rstrip", False)),
                bool(value.get("single_word", False)),
                bool(value.get("normalized", False)),
            )
        else:
            raise TypeError(
                f"{name} must be a str, a SpecialToken or a dict with 'content'; got {type(value).__name__}"
            )
        if not token.content:
            # An empty token would match between every two characters of the text.
            raise ValueError(f"{name} must be a non-empty string; got {token.content!r}")
        return token


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


def _to_tensors(
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


def _clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization: drop the space before punctuation and English contractions."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


def _check_positive_int(name: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"{name} must be an int{' or None' if optional else ''}; got {type(value).__name__}: {value!r}"
        )
    # Zero too: given max_length=0, 4.37.2 silently neither truncates nor pads.
    if value <= 0:
        raise ValueError(f"{name} must be positive; got {value}")


def _as_path(value: Any, name: str) -> str:
    """`os.fspath(value)`, with an error that names the argument (os.fspath's does not)."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{name} must be a path (str or os.PathLike); got {type(value).__name__}: {value!r:.80}"
        )
    return os.fspath(value)


def _check_file(path: str, what: str, owner: str) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{owner}: {what} {path!r} is a directory; pass the file inside it, or load the directory "
            f"with {owner}.from_pretrained"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{owner}: {what} {path!r} does not exist")


def _read_model_bytes(vocab_file: Any, owner: str) -> bytes:
    path = _as_path(vocab_file, "vocab_file")
    _check_file(path, "sentencepiece model file", owner)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise OSError(f"{owner}: cannot read sentencepiece model file {path!r}: {err}") from err


def _load_sentencepiece(data: bytes, path: str, owner: str) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError, TypeError) as err:
        raise ValueError(f"{owner}: {path!r} is not a valid sentencepiece model: {err}") from err


def _proto_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes, wanted: Iterable[int]) -> dict[int, list]:
    """The values of the `wanted` top-level fields of a serialized protobuf message (last one wins in
    protobuf; callers take [-1]). A reader of the wire format, so that building the fast tokenizer
    needs no protobuf package."""
    wanted = set(wanted)
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _proto_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _proto_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _proto_varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in field {number}")
        if number in wanted:
            fields.setdefault(number, []).append(value)
    return fields


def _model_spec(data: bytes) -> tuple[int, bool, bytes]:
    """(model_type, byte_fallback, precompiled_charsmap) of a serialized sentencepiece ModelProto.

    ModelProto: trainer_spec = 2, normalizer_spec = 3. TrainerSpec: model_type = 3 (UNIGRAM = 1,
    the default), byte_fallback = 35. NormalizerSpec: precompiled_charsmap = 2.
    """
    top = _proto_fields(data, (2, 3))
    trainer = _proto_fields(top[2][-1], (3, 35)) if 2 in top else {}
    normalizer = _proto_fields(top[3][-1], (2,)) if 3 in top else {}
    model_type = trainer[3][-1] if 3 in trainer else 1
    byte_fallback = bool(trainer[35][-1]) if 35 in trainer else False
    charsmap = bytes(normalizer[2][-1]) if 2 in normalizer else b""
    return model_type, byte_fallback, charsmap


def _as_id_list(token_ids: Any) -> list[int]:
    """Ids from an int, a list of ints, or a 1-D numpy array / tensor."""
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        return [token_ids]
    if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
        raise TypeError(f"token ids must be an int or a sequence of ints; got {type(token_ids).__name__}")
    ids = []
    for index in token_ids:
        try:
            ids.append(operator.index(index))  # ints (numpy's too), not floats or strings
        except TypeError:
            raise TypeError(f"token ids must be ints; got {type(index).__name__}: {index!r:.80}") from None
    return ids


class _RemBertTokenizerBase(ABC):
    """What both tokenizers share: special tokens, argument handling, RemBERT's special-token layout,
    padding/truncation strategy resolution, decoding clean-up and save/load."""

    model_input_names = ("input_ids", "token_type_ids", "attention_mask")
    pad_token_type_id = 0

    def __init__(
        self,
        do_lower_case: bool,
        remove_space: bool,
        keep_accents: bool,
        special_tokens: dict[str, str | dict | SpecialToken],
        model_max_length: int = VERY_LARGE_INTEGER,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = True,
    ) -> None:
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("right", "left"):
                raise ValueError(f"{name} must be 'right' or 'left'; got {side!r}")
        _check_positive_int("model_max_length", model_max_length, optional=False)
        self.do_lower_case = do_lower_case
        self.remove_space = remove_space
        self.keep_accents = keep_accents
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._special = {name: SpecialToken.coerce(name, value) for name, value in special_tokens.items()}
        # [MASK] behaves like a word: it takes the space before it (4.37.2 wraps a plain string this way).
        if isinstance(special_tokens["mask_token"], str):
            self._special["mask_token"] = SpecialToken(
                special_tokens["mask_token"], lstrip=True, normalized=True
            )
        self._warned: set[str] = set()

    # ----------------------------------------------------------------------------------- special tokens
    def _special_token(self, name: str) -> str:
        return self._special[name].content

    bos_token = property(lambda self: self._special_token("bos_token"))
    eos_token = property(lambda self: self._special_token("eos_token"))
    unk_token = property(lambda self: self._special_token("unk_token"))
    sep_token = property(lambda self: self._special_token("sep_token"))
    pad_token = property(lambda self: self._special_token("pad_token"))
    cls_token = property(lambda self: self._special_token("cls_token"))
    mask_token = property(lambda self: self._special_token("mask_token"))
    bos_token_id = property(lambda self: self.convert_tokens_to_ids(self.bos_token))
    eos_token_id = property(lambda self: self.convert_tokens_to_ids(self.eos_token))
    unk_token_id = property(lambda self: self.convert_tokens_to_ids(self.unk_token))
    sep_token_id = property(lambda self: self.convert_tokens_to_ids(self.sep_token))
    pad_token_id = property(lambda self: self.convert_tokens_to_ids(self.pad_token))
    cls_token_id = property(lambda self: self.convert_tokens_to_ids(self.cls_token))
    mask_token_id = property(lambda self: self.convert_tokens_to_ids(self.mask_token))

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: token.content for name, token in self._special.items()}

    @property
    def all_special_tokens(self) -> list[str]:
        """Unique special tokens in transformers' attribute order (bos, eos, unk, sep, pad, cls, mask)."""
        return list(dict.fromkeys(self._special[name].content for name in SPECIAL_TOKEN_ATTRIBUTES))

    def _all_special_tokens_extended(self) -> list[SpecialToken]:
        seen: dict[str, SpecialToken] = {}
        for name in SPECIAL_TOKEN_ATTRIBUTES:
            seen.setdefault(self._special[name].content, self._special[name])
        return list(seen.values())

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(token) for token in self.all_special_tokens]

    # ----------------------------------------------------------------------- RemBERT's sequence layout
    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`."""
        if token_ids_1 is None:
            return [self.cls_token_id, *token_ids_0, self.sep_token_id]
        return [self.cls_token_id, *token_ids_0, self.sep_token_id, *token_ids_1, self.sep_token_id]

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 where `build_inputs_with_special_tokens` puts a special token. With
        `already_has_special_tokens`, marks the [CLS]/[SEP] ids found in `token_ids_0` (only those two,
        as 4.37.2's RemBERT tokenizers do)."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "token_ids_1 must be None when already_has_special_tokens=True: the ids already hold "
                    "both sequences with their special tokens."
                )
            markers = {self.sep_token_id, self.cls_token_id}
            return [1 if token in markers else 0 for token in token_ids_0]
        if token_ids_1 is None:
            return [1] + [0] * len(token_ids_0) + [1]
        return [1] + [0] * len(token_ids_0) + [1] + [0] * len(token_ids_1) + [1]

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """0 over `[CLS] A [SEP]`, 1 over `B [SEP]`."""
        first = [0] * (len(token_ids_0) + 2)
        if token_ids_1 is None:
            return first
        return first + [1] * (len(token_ids_1) + 1)

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return 3 if pair else 2

    # ------------------------------------------------------------------------------------ encoding API
    def __call__(
        self,
        text: str | Sequence[str] | Sequence[tuple[str, str]],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Encode a string, a pair, or a batch of either (a list of strings, a list of (str, str)
        tuples, or two lists). Arguments as transformers' `PreTrainedTokenizerBase.__call__`."""
        pairs, batched = self._normalize_inputs(text, text_pair)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(
                f"return_tensors must be 'pt' (torch), 'np' (numpy) or None (lists); got {return_tensors!r}"
            )
        padding_strategy, truncation_strategy, max_length = self._resolve_strategies(
            padding, truncation, max_length, pad_to_multiple_of, verbose
        )
        if truncation_strategy == "only_second":
            # 4.37.2's slow tokenizer then silently leaves the sequence long; tokenizers raises.
            single = next((i for i, (_, pair) in enumerate(pairs) if pair is None), None)
            if single is not None:
                raise ValueError(
                    f"truncation='only_second' cuts the second text of a pair, but input {single} has no "
                    "text_pair; use truncation=True (or 'only_first') for single texts"
                )
        if truncation_strategy != "do_not_truncate" and add_special_tokens:
            # Below this 4.37.2 logs an error (slow) or leaves the sequence whole (fast).
            needed = self.num_special_tokens_to_add(pair=any(pair is not None for _, pair in pairs))
            if max_length is not None and max_length < needed:
                raise ValueError(
                    f"max_length={max_length} leaves no room for text: the special tokens alone take {needed}"
                )
        options = _EncodeOptions(
            add_special_tokens=add_special_tokens,
            padding=padding_strategy,
            truncation=truncation_strategy,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            return_token_type_ids=return_token_type_ids is None or bool(return_token_type_ids),
            return_attention_mask=return_attention_mask is None or bool(return_attention_mask),
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            verbose=verbose,
        )
        features = self._encode_batch(pairs, options)
        if not batched:
            features = {key: value[0] for key, value in features.items()}
        return _to_tensors(features, return_tensors, prepend_batch_axis=not batched)

    def pad(
        self,
        encoded_inputs: Any,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """transformers' `pad`: pad already-tokenized inputs, as data collators call it.

        `encoded_inputs`: one encoding or a batch (a dict of lists or tensors, or a list of such dicts:
        dataset features). `input_ids`, `token_type_ids`, `special_tokens_mask` and `attention_mask` are
        padded (an attention mask is made when absent, unless `return_attention_mask=False`); other keys,
        such as `labels`, are passed through as they are. `padding`: True/"longest", "max_length" (to
        `max_length`, else model_max_length) or False/"do_not_pad"; then up to `pad_to_multiple_of`.
        """
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
            strategy = _PADDING[padding]
        except (KeyError, TypeError):
            raise ValueError(
                f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad'; got {padding!r}"
            ) from None
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            _check_positive_int(name, value, optional=True)
        side = self.padding_side if padding_side is None else padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right'; got {side!r}")
        rows = [list(ids) for ids in features["input_ids"]]
        if return_attention_mask is not False and "attention_mask" not in features:
            features["attention_mask"] = [[1] * len(ids) for ids in rows]
        target = None
        if strategy == "longest":
            target = max((len(ids) for ids in rows), default=0)
        elif strategy == "max_length":
            target = max_length if max_length is not None else self.model_max_length
            if target > LARGE_INTEGER:
                raise ValueError("padding='max_length' needs max_length: this tokenizer has no "
                                 "model_max_length")
        if target is not None and pad_to_multiple_of is not None and target % pad_to_multiple_of:
            target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of
        pad_values = {"input_ids": self.pad_token_id, "token_type_ids": self.pad_token_type_id,
                      "special_tokens_mask": 1, "attention_mask": 0}
        padded = {key: features[key] for key in features if key not in pad_values}
        for key in (k for k in pad_values if k in features):
            out = []
            for value in features[key]:
                missing = 0 if target is None else target - len(value)
                fill = [pad_values[key]] * max(missing, 0)
                out.append(fill + list(value) if side == "left" else list(value) + fill)
            padded[key] = out
        order = [k for k in features if k in padded] + [k for k in padded if k not in features]
        padded = {key: padded[key] for key in order}
        if single:
            padded = {key: value[0] for key, value in padded.items()}
        inputs = {key: value for key, value in padded.items() if key in pad_values}
        out = _to_tensors(inputs, return_tensors, prepend_batch_axis=False)
        for key, value in padded.items():  # labels and other fields: their own dtype (floats stay floats)
            if key not in pad_values:
                if return_tensors == "pt":
                    import torch

                    value = torch.tensor(value)
                elif return_tensors == "np":
                    value = np.asarray(value)
                out[key] = value
        return BatchEncoding({key: out[key] for key in order})

    def encode_plus(self, text: str, text_pair: str | None = None, **kwargs: Any) -> BatchEncoding:
        """Encode one string or one pair (see `__call__` for the keyword arguments)."""
        if isinstance(text, (list, tuple)):
            raise TypeError(
                f"encode_plus takes one str (and an optional str pair); got {type(text).__name__}. "
                "Use batch_encode_plus or __call__ for batches."
            )
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(
        self, batch_text_or_text_pairs: Sequence[str | tuple[str, str]], **kwargs: Any
    ) -> BatchEncoding:
        """Encode a list of strings or (str, str) pairs (see `__call__` for the keyword arguments)."""
        if not isinstance(batch_text_or_text_pairs, (list, tuple)):
            raise TypeError(
                "batch_encode_plus takes a list of str or (str, str) pairs; got "
                f"{type(batch_text_or_text_pairs).__name__}"
            )
        return self(batch_text_or_text_pairs, **kwargs)

    def encode(
        self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **kwargs: Any
    ) -> list[int] | np.ndarray | torch.Tensor:
        """The `input_ids` of one string or pair (an array or tensor with `return_tensors`)."""
        return self.encode_plus(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    @staticmethod
    def _normalize_inputs(text: Any, text_pair: Any) -> tuple[list[TextPair], bool]:
        def check(value: Any, what: str) -> str:
            if not isinstance(value, str):
                raise TypeError(
                    f"{what} must be a str (or a list of str / (str, str) pairs for a batch); "
                    f"got {type(value).__name__}: {value!r:.80}"
                )
            return value

        if not isinstance(text, (list, tuple)):
            check(text, "text")
            if text_pair is not None:
                check(text_pair, "text_pair")
            return [(text, text_pair)], False
        if text_pair is not None:
            if not isinstance(text_pair, (list, tuple)):
                raise TypeError(
                    f"text_pair must be a list of str when text is a list; got {type(text_pair).__name__}"
                )
            if len(text_pair) != len(text):
                raise ValueError(f"text_pair has {len(text_pair)} entries but text has {len(text)}")
            return [
                (check(a, f"text[{i}]"), check(b, f"text_pair[{i}]"))
                for i, (a, b) in enumerate(zip(text, text_pair, strict=True))
            ], True
        pairs: list[TextPair] = []
        for i, item in enumerate(text):
            if isinstance(item, (list, tuple)) and len(item) == 2:
                pairs.append((check(item[0], f"text[{i}][0]"), check(item[1], f"text[{i}][1]")))
            else:
                pairs.append((check(item, f"text[{i}]"), None))
        return pairs, True

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _resolve_strategies(
        self,
        padding: Any,
        truncation: Any,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        verbose: bool,
    ) -> tuple[str, str, int | None]:
        """(padding strategy, truncation strategy, max_length) with transformers 4.37.2's rules."""
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            _check_positive_int(name, value, optional=True)
        if max_length is not None and padding is False and truncation is None:
            if verbose:
                self._warn_once(
                    "truncation-not-explicit",
                    "Truncation was not explicitly activated but `max_length` is provided a specific value; "
                    "defaulting to the 'longest_first' truncation strategy. Pass truncation=True (or a "
                    "strategy) to silence this.",
                )
            truncation = "longest_first"
        try:
            padding_strategy = _PADDING[padding]
        except (KeyError, TypeError):
            raise ValueError(
                f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad'; got {padding!r}"
            ) from None
        try:
            truncation_strategy = _TRUNCATION[truncation]
        except (KeyError, TypeError):
            raise ValueError(
                f"truncation must be True, False, None, 'longest_first', 'only_first', "
                f"'only_second' or 'do_not_truncate'; got {truncation!r}"
            ) from None
        if (
            padding is True
            and max_length is not None
            and truncation_strategy == "do_not_truncate"
            and verbose
        ):
            warnings.warn(
                "`max_length` is ignored when `padding`=`True` and there is no truncation strategy. "
                "To pad to max length, use `padding='max_length'`.",
                stacklevel=3,
            )
        if max_length is None:
            if padding_strategy == "max_length":
                if self.model_max_length > LARGE_INTEGER:
                    # 4.37.2 warns and does not pad; a batch of unequal lengths is not what was asked for.
                    raise ValueError(
                        "padding='max_length' needs a length: pass max_length=N (or padding=True to pad "
                        "to the longest sequence); got max_length=None and the tokenizer has no "
                        "model_max_length"
                    )
                max_length = self.model_max_length
            if truncation_strategy != "do_not_truncate":
                if self.model_max_length > LARGE_INTEGER:
                    if verbose:
                        self._warn_once(
                            "truncate-no-max-length",
                            "Asking to truncate to max_length but no maximum length is provided and "
                            "the tokenizer has no model_max_length. Default to no truncation.",
                        )
                    truncation_strategy = "do_not_truncate"
                else:
                    max_length = self.model_max_length
        if (
            truncation_strategy != "do_not_truncate"
            and padding_strategy != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of
        ):
            raise ValueError(
                f"Truncation and padding are both on; max_length ({max_length}) must be a multiple "
                f"of pad_to_multiple_of ({pad_to_multiple_of})."
            )
        if max_length is not None and (
            padding_strategy == "max_length" or truncation_strategy != "do_not_truncate"
        ):
            self._check_max_length(max_length)
        return padding_strategy, truncation_strategy, max_length

    def _check_max_length(self, max_length: int) -> None:
        if self.model_max_length <= LARGE_INTEGER:
            limit, source = self.model_max_length, "this tokenizer's model_max_length"
        else:
            limit, source = REMBERT_MAX_POSITIONS, "RemBERT's max_position_embeddings"
        if max_length > limit:
            self._warn_once(
                "max-length-over-positions",
                f"max_length={max_length} is larger than {source} ({limit}): longer sequences will not fit "
                f"the model's position embeddings. Use max_length <= {limit}.",
            )

    def _warn_if_too_long(self, ids: list[int], max_length: int | None, verbose: bool) -> None:
        if max_length is None and verbose and len(ids) > self.model_max_length:
            self._warn_once(
                "sequence-too-long",
                "Token indices sequence length is longer than the specified maximum sequence length for this "
                f"model ({len(ids)} > {self.model_max_length}). Running this sequence through the model will "
                "result in indexing errors",
            )

    @abstractmethod
    def _encode_batch(self, pairs: list[TextPair], options: _EncodeOptions) -> dict[str, list]:
        """One list per output key (`input_ids`, ...), one entry per pair, padded as `options` asks."""

    # ------------------------------------------------------------------------------------------ decode
    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Ids (list, int, numpy array or tensor) back to text."""
        text = self._decode(_as_id_list(token_ids), skip_special_tokens)
        clean = (
            self.clean_up_tokenization_spaces
            if clean_up_tokenization_spaces is None
            else clean_up_tokenization_spaces
        )
        return _clean_up_tokenization(text) if clean else text

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """`decode` over a batch (list of id lists, or a 2-D array/tensor)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        if isinstance(sequences, (str, bytes)) or not isinstance(sequences, Iterable):
            raise TypeError(
                f"batch_decode takes a list of id lists or a 2-D array; got {type(sequences).__name__}"
            )
        return [self.decode(ids, skip_special_tokens, clean_up_tokenization_spaces) for ids in sequences]

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        return self.convert_tokens_to_string(tokens) if tokens else ""

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        if isinstance(tokens, bytes) or not isinstance(tokens, Iterable):
            raise TypeError(f"tokens must be a str or a list of str; got {type(tokens).__name__}")
        tokens = list(tokens)
        for token in tokens:
            if not isinstance(token, str):
                raise TypeError(f"tokens must be strings; got {type(token).__name__}: {token!r:.80}")
        return [self._token_to_id(token) for token in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | None | list[str]:
        """Token strings of `ids`. An id the fast tokenizer has no token for gives None (alone) or is
        dropped (in a list), as in 4.37.2."""
        if hasattr(ids, "tolist"):  # a numpy or torch scalar is one id, an array a list
            ids = ids.tolist()
        if isinstance(ids, int):
            return self._id_to_token(ids)
        tokens = (
            self._id_to_token(index)
            for index in _as_id_list(ids)
            if not (skip_special_tokens and index in self._special_ids)
        )
        return [token for token in tokens if token is not None]

    @abstractmethod
    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Token strings back to text."""

    @abstractmethod
    def _token_to_id(self, token: str) -> int:
        """The id of `token` (the unknown token's id when it has none)."""

    @abstractmethod
    def _id_to_token(self, index: int) -> str | None:
        """The token string of `index`."""

    # ------------------------------------------------------------------------------------- save / load
    def _tokenizer_config(self) -> dict[str, Any]:
        """tokenizer_config.json as 4.37.2 writes it (keys sorted on write)."""
        added = {
            str(index): {**token.to_dict(), "special": True} for index, token in self._added_tokens().items()
        }
        config: dict[str, Any] = {
            "added_tokens_decoder": dict(sorted(added.items(), key=lambda item: int(item[0]))),
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "do_lower_case": self.do_lower_case,
            "keep_accents": self.keep_accents,
            "model_max_length": self.model_max_length,
            "remove_space": self.remove_space,
            "tokenizer_class": "RemBertTokenizer",
        }
        if self.padding_side != "right":
            config["padding_side"] = self.padding_side
        if self.truncation_side != "right":
            config["truncation_side"] = self.truncation_side
        config.update(self.special_tokens_map)
        return config

    def _special_tokens_map_json(self) -> dict[str, Any]:
        """Plain strings, except tokens whose matching flags differ from the default (here [MASK])."""
        out: dict[str, Any] = {}
        for name, token in self._special.items():
            out[name] = token.to_dict() if token != SpecialToken(token.content) else token.content
        return out

    def _added_tokens(self) -> dict[int, SpecialToken]:
        """id -> special token, for every special token (transformers' added_tokens_decoder)."""
        out: dict[int, SpecialToken] = {}
        for token in self._all_special_tokens_extended():
            out.setdefault(self._token_to_id(token.content), token)
        return dict(sorted(out.items()))

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str]:
        """Write `[prefix-]sentencepiece.model` into `save_directory`; returns its path."""
        directory = _as_path(save_directory, "save_directory")
        if not os.path.isdir(directory):
            raise NotADirectoryError(f"save_vocabulary: {directory!r} is not a directory")
        out_file = os.path.join(directory, (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE)
        self._write_vocab_file(out_file)
        return (out_file,)

    @abstractmethod
    def _write_vocab_file(self, out_file: str) -> None:
        """Write the sentencepiece model to `out_file`."""

    def save_pretrained(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Write tokenizer_config.json, special_tokens_map.json, sentencepiece.model (when the vocabulary
        is known), added_tokens.json (when special tokens were appended past the vocabulary) and, for the
        fast tokenizer, tokenizer.json. Loadable by `from_pretrained` here and in transformers."""
        directory = _as_path(save_directory, "save_directory")
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise NotADirectoryError(f"save_pretrained: {directory!r} exists and is not a directory")
        os.makedirs(directory, exist_ok=True)
        prefix = filename_prefix + "-" if filename_prefix else ""

        def write_json(name: str, content: dict[str, Any]) -> str:
            path = os.path.join(directory, prefix + name)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            return path

        written = [
            write_json(TOKENIZER_CONFIG_FILE, self._tokenizer_config()),
            write_json(SPECIAL_TOKENS_MAP_FILE, self._special_tokens_map_json()),
        ]
        if self._can_save_vocab_file():
            written.extend(self.save_vocabulary(directory, filename_prefix))
        appended = {
            token.content: index for index, token in self._added_tokens().items() if index >= self.vocab_size
        }
        if appended:
            written.append(write_json(ADDED_TOKENS_FILE, appended))
        written.extend(self._save_extra(directory, prefix))
        return tuple(written)

    def _can_save_vocab_file(self) -> bool:
        return True

    def _save_extra(self, directory: str, prefix: str) -> list[str]:
        return []

    @classmethod
    def _read_pretrained_config(cls, directory: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not os.path.isdir(directory):
            raise NotADirectoryError(
                f"{cls.__name__}.from_pretrained loads a local directory; {directory!r} is not one (download "
                "the checkpoint first, e.g. with huggingface_hub.snapshot_download)."
            )
        init: dict[str, Any] = {}
        for name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as handle:
                    content = json.load(handle)
            except (OSError, ValueError) as err:
                raise ValueError(f"{cls.__name__}.from_pretrained: cannot parse {path!r}: {err}") from err
            if not isinstance(content, dict):
                raise ValueError(
                    f"{cls.__name__}.from_pretrained: {path!r} must hold a JSON object; "
                    f"got a {type(content).__name__}"
                )
            init.update({key: value for key, value in content.items() if key in _INIT_CONFIG_KEYS})
        # transformers' Hub and loader keywords: no effect on a local directory (as for the models).
        for name in LOADER_ONLY_KEYWORDS:
            kwargs.pop(name, None)
        init.update(kwargs)
        return init

    @abstractmethod
    def __len__(self) -> int:
        """Vocabulary size including special tokens appended past the model's pieces."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of pieces of the sentencepiece model."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, len={len(self)}, "
            f"do_lower_case={self.do_lower_case}, keep_accents={self.keep_accents}, "
            f"model_max_length={self.model_max_length}, special_tokens={self.special_tokens_map})"
        )


class RemBertTokenizer(_RemBertTokenizerBase):
    """RemBERT's sentencepiece tokenizer (transformers 4.37.2's `RemBertTokenizer`).

    Args:
        vocab_file: the sentencepiece `.model` file (RemBERT's is `sentencepiece.model`).
        do_lower_case: lowercase text (outside special tokens) before sentencepiece.
        remove_space, keep_accents: stored and saved; no effect (as in 4.37.2).
        bos_token ... mask_token: the special tokens; a string not in the vocabulary is appended as a new id.
        model_max_length: the longest sequence the model takes (no limit by default).
        padding_side, truncation_side: "right" or "left".
        clean_up_tokenization_spaces: `decode` drops the space before punctuation.
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        do_lower_case: bool = False,
        remove_space: bool = True,
        keep_accents: bool = True,
        bos_token: str | SpecialToken = "[CLS]",
        eos_token: str | SpecialToken = "[SEP]",
        unk_token: str | SpecialToken = "[UNK]",
        sep_token: str | SpecialToken = "[SEP]",
        pad_token: str | SpecialToken = "[PAD]",
        cls_token: str | SpecialToken = "[CLS]",
        mask_token: str | SpecialToken = "[MASK]",
        **kwargs: Any,
    ) -> None:
        self.vocab_file = _as_path(vocab_file, "vocab_file")
        self.sp_model = _load_sentencepiece(
            _read_model_bytes(vocab_file, "RemBertTokenizer"), self.vocab_file, "RemBertTokenizer"
        )
        super().__init__(
            do_lower_case,
            remove_space,
            keep_accents,
            dict(
                zip(
                    SPECIAL_TOKEN_ATTRIBUTES,
                    (bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token),
                    strict=True,
                )
            ),
            **kwargs,
        )
        self._index_special_tokens()

    def _index_special_tokens(self) -> None:
        """Give every special token an id: its piece id when it is a piece, else the next id past the
        vocabulary (4.37.2's add-tokens order), and build the splitter that cuts them out of text."""
        self._added_encoder: dict[str, int] = {}
        self._added_decoder: dict[int, SpecialToken] = {}
        next_id = self.vocab_size
        for token in self._all_special_tokens_extended():
            piece_id = self.sp_model.piece_to_id(token.content)
            if piece_id == self.sp_model.unk_id() and token.content != self.sp_model.id_to_piece(piece_id):
                piece_id, next_id = next_id, next_id + 1
            self._added_encoder[token.content] = piece_id
            self._added_decoder[piece_id] = token
        # Longest first, so that at one position the longest special token wins (transformers' Trie).
        alternatives = sorted(self._added_encoder, key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(re.escape(token) for token in alternatives) + ")")
        self._lowercase_split = re.compile(
            "(" + "|".join(re.escape(token) for token in self.all_special_tokens) + ")"
        )
        self._special_ids = set(self.all_special_ids)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["sp_model"] = self.sp_model.serialized_model_proto()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.sp_model = spm.SentencePieceProcessor(model_proto=state["sp_model"])

    @property
    def vocab_size(self) -> int:
        """Number of sentencepiece pieces."""
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        """Pieces plus special tokens appended past them."""
        return self.vocab_size + sum(1 for index in self._added_decoder if index >= self.vocab_size)

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        for index, token in self._added_decoder.items():
            vocab[token.content] = index
        return vocab

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> RemBertTokenizer:
        """Load from a directory holding `sentencepiece.model` (and optionally tokenizer_config.json and
        special_tokens_map.json). Keyword arguments override the saved configuration."""
        directory = _as_path(pretrained_model_name_or_path, "pretrained_model_name_or_path")
        init = cls._read_pretrained_config(directory, kwargs)
        vocab_file = init.pop("vocab_file", os.path.join(directory, VOCAB_FILE))
        return cls(vocab_file, **init)

    def _write_vocab_file(self, out_file: str) -> None:
        if os.path.isfile(self.vocab_file):
            if os.path.abspath(self.vocab_file) != os.path.abspath(out_file):
                shutil.copyfile(self.vocab_file, out_file)
        else:
            with open(out_file, "wb") as handle:
                handle.write(self.sp_model.serialized_model_proto())

    # -------------------------------------------------------------------------------------- tokenize
    def _lowercase(self, text: str) -> str:
        # Character by character, as transformers' regex does: str.lower() on a whole word would
        # apply the final-sigma rule (Σ -> ς) and change the tokens.
        parts = self._lowercase_split.split(text)
        return "".join(
            part if i % 2 else "".join(char.lower() for char in part) for i, part in enumerate(parts)
        )

    def _split(self, text: str) -> list[str]:
        """`text` cut around its special tokens, as transformers 4.37.2's `tokenize` cuts it: a list that
        alternates text, special token, text, ... (odd positions hold the special tokens; any entry may
        be empty), after lowercasing and the tokens' lstrip/rstrip/single_word rules."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}: {text!r:.80}")
        if self.do_lower_case:
            text = self._lowercase(text)
        chunks = self._special_split.split(text)
        for i in range(1, len(chunks), 2):
            token = self._added_decoder[self._added_encoder[chunks[i]]]
            if token.rstrip and i + 1 < len(chunks):
                chunks[i + 1] = chunks[i + 1].lstrip()
            if token.lstrip and i > 0:
                chunks[i - 1] = chunks[i - 1].rstrip()
            if token.single_word and i > 0 and chunks[i - 1] and chunks[i - 1][-1] != " ":
                chunks[i - 1] += chunks[i]
                chunks[i] = ""
            elif token.single_word and i + 1 < len(chunks) and chunks[i + 1] and chunks[i + 1][0] != " ":
                chunks[i + 1] = chunks[i] + chunks[i + 1]
                chunks[i] = ""
        return chunks

    def tokenize(self, text: str) -> list[str]:
        """Pieces of `text`, with special tokens kept whole."""
        pieces: list[str] = []
        for i, chunk in enumerate(self._split(text)):
            if not chunk:
                continue
            if i % 2:
                pieces.append(chunk)
            else:
                pieces.extend(self.sp_model.encode(chunk, out_type=str))
        return pieces

    def _texts_to_ids(self, texts: list[str]) -> list[list[int]]:
        """`convert_tokens_to_ids(tokenize(text))` for each text, with one sentencepiece call for the
        whole batch. Asking sentencepiece for ids instead of pieces gives the same ids: a special
        token that is also a piece has that piece's id, and sentencepiece never emits a control piece
        or a piece that is not in the vocabulary."""
        splits = [self._split(text) for text in texts]
        plain = [chunk for chunks in splits for chunk in chunks[0::2] if chunk]
        encoded = iter(self.sp_model.encode(plain) if plain else [])
        out = []
        for chunks in splits:
            ids: list[int] = []
            for i, chunk in enumerate(chunks):
                if not chunk:
                    continue
                if i % 2:
                    ids.append(self._added_encoder[chunk])
                else:
                    ids.extend(next(encoded))
            out.append(ids)
        return out

    def _token_to_id(self, token: str) -> int:
        index = self._added_encoder.get(token)
        return index if index is not None else self.sp_model.piece_to_id(token)

    def _id_to_token(self, index: int) -> str:
        token = self._added_decoder.get(index)
        if token is not None:
            return token.content
        if not 0 <= index < self.vocab_size:
            raise IndexError(f"token id {index} is out of range [0, {len(self)})")
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.sp_model.decode_pieces(tokens)

    # -------------------------------------------------------------------------------------- encode
    def _truncate(
        self, ids: list[int], pair_ids: list[int] | None, remove: int, strategy: str
    ) -> tuple[list[int], list[int] | None]:
        """transformers' truncate_sequences (without overflow): an impossible cut is logged and skipped."""
        left = self.truncation_side == "left"
        if strategy == "only_first" or (strategy == "longest_first" and pair_ids is None):
            if len(ids) > remove:
                return (ids[remove:] if left else ids[:-remove]), pair_ids
            logger.error(
                f"We need to remove {remove} to truncate the input but the first sequence has a length "
                f"{len(ids)}. Please select another truncation strategy."
            )
        elif strategy == "longest_first":
            len_ids, len_pair = len(ids), len(pair_ids)
            first_remove = min(abs(len_pair - len_ids), remove)
            second_remove = remove - first_remove
            if len_ids > len_pair:
                ids_cut, pair_cut = first_remove + second_remove // 2, second_remove - second_remove // 2
            else:
                ids_cut, pair_cut = second_remove // 2, first_remove + second_remove - second_remove // 2
            if left:
                return ids[ids_cut:], pair_ids[pair_cut:]
            return (ids[:-ids_cut] if ids_cut > 0 else ids), (
                pair_ids[:-pair_cut] if pair_cut > 0 else pair_ids
            )
        elif strategy == "only_second" and pair_ids is not None:
            if len(pair_ids) > remove:
                return ids, (pair_ids[remove:] if left else pair_ids[:-remove])
            logger.error(
                f"We need to remove {remove} to truncate the input but the second sequence has a length "
                f"{len(pair_ids)}. Please select another truncation strategy."
            )
        return ids, pair_ids

    def _encode_batch(self, pairs: list[TextPair], options: _EncodeOptions) -> dict[str, list]:
        if options.return_offsets_mapping:
            raise NotImplementedError(
                "return_offsets_mapping needs RemBertTokenizerFast; the sentencepiece "
                "tokenizer does not track character offsets."
            )
        max_length = options.max_length
        firsts = self._texts_to_ids([text for text, _ in pairs])
        seconds = iter(self._texts_to_ids([pair for _, pair in pairs if pair is not None]))
        rows = []
        for ids, (_, pair) in zip(firsts, pairs, strict=True):
            pair_ids = next(seconds) if pair is not None else None
            total = len(ids) + (len(pair_ids) if pair_ids is not None else 0)
            total += self.num_special_tokens_to_add(pair_ids is not None) if options.add_special_tokens else 0
            # 4.37.2 skips truncation when max_length is 0 (`if ... and max_length and ...`).
            if options.truncation != "do_not_truncate" and max_length and total > max_length:
                ids, pair_ids = self._truncate(ids, pair_ids, total - max_length, options.truncation)
            if options.add_special_tokens:
                row = {
                    "input_ids": self.build_inputs_with_special_tokens(ids, pair_ids),
                    "token_type_ids": self.create_token_type_ids_from_sequences(ids, pair_ids),
                    "special_tokens_mask": self.get_special_tokens_mask(ids, pair_ids),
                }
            else:
                body = ids + (pair_ids or [])
                row = {
                    "input_ids": body,
                    "token_type_ids": [0] * len(body),
                    "special_tokens_mask": [0] * len(body),
                }
            self._warn_if_too_long(row["input_ids"], max_length, options.verbose)
            row["attention_mask"] = [1] * len(row["input_ids"])
            rows.append(row)
        target = None
        if options.padding == "longest":
            target = max((len(row["input_ids"]) for row in rows), default=0)
        elif options.padding == "max_length":
            target = max_length
        multiple = options.pad_to_multiple_of
        if target is not None and multiple is not None and target % multiple:
            target = (target // multiple + 1) * multiple
        # 4.37.2's slow key order (its pad() appends attention_mask last).
        keys = (
            ["input_ids"]
            + (["token_type_ids"] if options.return_token_type_ids else [])
            + (["special_tokens_mask"] if options.return_special_tokens_mask else [])
            + (["attention_mask"] if options.return_attention_mask else [])
        )
        pad_values = {
            "input_ids": self.pad_token_id,
            "token_type_ids": self.pad_token_type_id,
            "special_tokens_mask": 1,
            "attention_mask": 0,
        }
        features: dict[str, list] = {key: [] for key in keys}
        for row in rows:
            missing = target - len(row["input_ids"]) if target is not None else 0
            for key in keys:
                value = row[key]
                if missing > 0:
                    fill = [pad_values[key]] * missing
                    value = fill + value if self.padding_side == "left" else value + fill
                features[key].append(value)
        return features


class RemBertTokenizerFast(_RemBertTokenizerBase):
    """RemBERT's fast tokenizer on the `tokenizers` library (transformers 4.37.2's `RemBertTokenizerFast`).

    Args:
        vocab_file: the sentencepiece `.model`, from which the Unigram pipeline is built.
        tokenizer_file: a `tokenizer.json` to load instead (takes precedence over `vocab_file`).
        do_lower_case, keep_accents: shape the normalizer when building from `vocab_file`
            (defaults True / False, unlike the slow tokenizer). `remove_space` is stored only.
        bos_token ... mask_token: the special tokens (defaults `unk_token="<unk>"`, `pad_token="<pad>"`
            as in 4.37.2: not pieces of RemBERT's model, so they get new ids unless the checkpoint's
            configuration names `[UNK]` / `[PAD]`).
        model_max_length, padding_side, truncation_side, clean_up_tokenization_spaces: as for the slow one.
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        tokenizer_file: str | os.PathLike | None = None,
        do_lower_case: bool = True,
        remove_space: bool = True,
        keep_accents: bool = False,
        bos_token: str | SpecialToken = "[CLS]",
        eos_token: str | SpecialToken = "[SEP]",
        unk_token: str | SpecialToken = "<unk>",
        sep_token: str | SpecialToken = "[SEP]",
        pad_token: str | SpecialToken = "<pad>",
        cls_token: str | SpecialToken = "[CLS]",
        mask_token: str | SpecialToken = "[MASK]",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            do_lower_case,
            remove_space,
            keep_accents,
            dict(
                zip(
                    SPECIAL_TOKEN_ATTRIBUTES,
                    (bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token),
                    strict=True,
                )
            ),
            **kwargs,
        )
        self.vocab_file = _as_path(vocab_file, "vocab_file") if vocab_file is not None else None
        if tokenizer_file is not None:
            path = _as_path(tokenizer_file, "tokenizer_file")
            _check_file(path, "tokenizer file", "RemBertTokenizerFast")
            try:
                self._tokenizer = Tokenizer.from_file(path)
            except Exception as err:  # tokenizers raises plain Exception on a bad file
                raise ValueError(f"RemBertTokenizerFast: cannot load tokenizer file {path!r}: {err}") from err
            self._sp_vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=False)
        elif vocab_file is not None:
            self._tokenizer = self._build_from_sentencepiece(self.vocab_file)
        else:
            raise ValueError(
                "RemBertTokenizerFast needs vocab_file (a sentencepiece .model) or tokenizer_file "
                "(a tokenizer.json); got neither"
            )
        self._add_special_tokens()
        self._state: tuple | None = None

    def _build_from_sentencepiece(self, path: str) -> Tokenizer:
        data = _read_model_bytes(path, "RemBertTokenizerFast")
        sp = _load_sentencepiece(data, path, "RemBertTokenizerFast")
        model_type, byte_fallback, charsmap = _model_spec(data)
        if model_type != 1:
            raise ValueError(
                f"RemBertTokenizerFast: {path!r} is a sentencepiece model of type {model_type}; "
                "only Unigram models (type 1, RemBERT's) are supported"
            )
        if byte_fallback:
            logger.warning(
                "%s uses sentencepiece byte fallback, which the fast tokenizer does not reproduce "
                "(as in transformers): characters outside the vocabulary become the unknown id.",
                path,
            )
        self._sp_vocab_size = sp.get_piece_size()
        vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(self._sp_vocab_size)]
        tokenizer = Tokenizer(Unigram(vocab, sp.unk_id(), False))
        steps = [
            normalizers.Replace("``", '"'),
            normalizers.Replace("''", '"'),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
        if not self.keep_accents:
            steps += [normalizers.NFKD(), normalizers.StripAccents()]
        if self.do_lower_case:
            steps.append(normalizers.Lowercase())
        if charsmap:
            steps.append(normalizers.Precompiled(charsmap))
        tokenizer.normalizer = normalizers.Sequence(steps)
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=SPIECE_UNDERLINE, prepend_scheme="always"
        )
        tokenizer.decoder = decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="always")
        # 4.37.2's converter looks up the literal "[CLS]" / "[SEP]" (not cls_token / sep_token) through a
        # slow tokenizer built with the same special tokens; special tokens that are not pieces come
        # after the vocabulary in attribute order.
        appended = {}
        for token in self._all_special_tokens_extended():
            if sp.piece_to_id(token.content) == sp.unk_id() and token.content != sp.id_to_piece(sp.unk_id()):
                appended[token.content] = self._sp_vocab_size + len(appended)
        cls_id = appended.get("[CLS]", sp.piece_to_id("[CLS]"))
        sep_id = appended.get("[SEP]", sp.piece_to_id("[SEP]"))
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        return tokenizer

    def _add_special_tokens(self) -> None:
        present = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()}
        missing = [
            _TkAddedToken(
                token.content,
                single_word=token.single_word,
                lstrip=token.lstrip,
                rstrip=token.rstrip,
                normalized=token.normalized,
                special=True,
            )
            for token in self._all_special_tokens_extended()
            if token.content not in present
        ]
        if missing:
            self._tokenizer.add_special_tokens(missing)
        self._added_contents = {
            index: token.content for index, token in self._tokenizer.get_added_tokens_decoder().items()
        }
        self._special_ids = {
            index for index, token in self._tokenizer.get_added_tokens_decoder().items() if token.special
        }

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without special tokens appended past it)."""
        return self._sp_vocab_size

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> RemBertTokenizerFast:
        """Load from a directory holding `tokenizer.json` and/or `sentencepiece.model` (plus optional
        tokenizer_config.json / special_tokens_map.json). `tokenizer.json` wins when both exist, as in
        transformers; keyword arguments override the saved configuration."""
        directory = _as_path(pretrained_model_name_or_path, "pretrained_model_name_or_path")
        init = cls._read_pretrained_config(directory, kwargs)
        for key, name in (("vocab_file", VOCAB_FILE), ("tokenizer_file", TOKENIZER_FILE)):
            path = os.path.join(directory, name)
            init.setdefault(key, path if os.path.isfile(path) else None)
        if init["vocab_file"] is None and init["tokenizer_file"] is None:
            raise FileNotFoundError(
                f"RemBertTokenizerFast.from_pretrained: {directory!r} holds neither "
                f"{TOKENIZER_FILE} nor {VOCAB_FILE}"
            )
        return cls(**init)

    def _can_save_vocab_file(self) -> bool:
        return self.vocab_file is not None and os.path.isfile(self.vocab_file)

    def _write_vocab_file(self, out_file: str) -> None:
        if not self._can_save_vocab_file():
            raise ValueError(
                "This fast tokenizer was loaded from tokenizer.json alone and has no sentencepiece "
                f"model to save (vocab_file={self.vocab_file!r})."
            )
        if os.path.abspath(self.vocab_file) != os.path.abspath(out_file):
            shutil.copyfile(self.vocab_file, out_file)

    def _save_extra(self, directory: str, prefix: str) -> list[str]:
        self._configure(None, None)
        content = json.loads(self._tokenizer.to_str())
        # tokenizers >= 0.19 writes Metaspace as {prepend_scheme, split}, which the tokenizers 0.15 under
        # transformers 4.37.2 cannot read; the older {add_prefix_space, prepend_scheme} form (split
        # implied) reads in both, so a directory saved here loads there too.
        for key in ("pre_tokenizer", "decoder"):
            part = content.get(key)
            if isinstance(part, dict) and part.get("type") == "Metaspace" and part.get("split", True):
                content[key] = {
                    "type": "Metaspace",
                    "replacement": part["replacement"],
                    "add_prefix_space": True,
                    "prepend_scheme": part.get("prepend_scheme", "always"),
                }
        path = os.path.join(directory, prefix + TOKENIZER_FILE)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2, ensure_ascii=False)
        return [path]

    # -------------------------------------------------------------------------------------- tokenize
    def _configure(self, truncation: tuple | None, padding: tuple | None) -> None:
        """Set the backend's truncation and padding (only when they change: setting them costs)."""
        if self._state == (truncation, padding):
            return
        if truncation is None:
            self._tokenizer.no_truncation()
        else:
            max_length, strategy = truncation
            self._tokenizer.enable_truncation(
                max_length, stride=0, strategy=strategy, direction=self.truncation_side
            )
        if padding is None:
            self._tokenizer.no_padding()
        else:
            length, pad_to_multiple_of = padding
            self._tokenizer.enable_padding(
                direction=self.padding_side,
                pad_id=self.pad_token_id,
                pad_type_id=self.pad_token_type_id,
                pad_token=self.pad_token,
                length=length,
                pad_to_multiple_of=pad_to_multiple_of,
            )
        self._state = (truncation, padding)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """Token strings of `text` (and `pair`)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}: {text!r:.80}")
        self._configure(None, None)
        return self._tokenizer.encode(text, pair, add_special_tokens=add_special_tokens).tokens

    def _token_to_id(self, token: str) -> int:
        index = self._tokenizer.token_to_id(token)
        return index if index is not None else self.unk_token_id

    def _id_to_token(self, index: int) -> str | None:
        # Added tokens by their content: tokenizers >= 0.19 reports a normalized added token ([MASK]) in
        # its normalized form ("[mask]" when lowercasing), which 0.15 (4.37.2's) did not.
        if index < 0:  # tokenizers would raise OverflowError converting it to u32
            raise IndexError(f"token id {index} is negative")
        token = self._added_contents.get(index)
        return token if token is not None else self._tokenizer.id_to_token(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        # The Metaspace decoder over our own id -> token mapping rather than tokenizers' decode, so
        # that [MASK] decodes and skips as in 4.37.2 on every tokenizers version (see _id_to_token).
        return self._tokenizer.decoder.decode(tokens)

    # -------------------------------------------------------------------------------------- encode
    def _encode_batch(self, pairs: list[TextPair], options: _EncodeOptions) -> dict[str, list]:
        truncation = options.truncation
        padding = options.padding
        self._configure(
            None if truncation == "do_not_truncate" else (options.max_length, truncation),
            None
            if padding == "do_not_pad"
            else (options.max_length if padding == "max_length" else None, options.pad_to_multiple_of),
        )
        inputs = [text if pair is None else (text, pair) for text, pair in pairs]
        # tokenizers >= 0.20 offers encode_batch_fast, which skips offset tracking (~20% faster); the
        # ids, masks and type ids are the same.
        encode_batch = self._tokenizer.encode_batch
        if not options.return_offsets_mapping:
            encode_batch = getattr(self._tokenizer, "encode_batch_fast", encode_batch)
        try:
            encodings = encode_batch(inputs, add_special_tokens=options.add_special_tokens)
        except Exception as err:  # tokenizers raises plain Exception (e.g. a truncation that cannot fit)
            raise ValueError(
                f"RemBertTokenizerFast could not encode the batch "
                f"(truncation={truncation!r}, max_length={options.max_length}): {err}"
            ) from err
        # 4.37.2's fast key order (its _convert_encoding).
        features: dict[str, list] = {"input_ids": [encoding.ids for encoding in encodings]}
        if options.return_token_type_ids:
            features["token_type_ids"] = [encoding.type_ids for encoding in encodings]
        if options.return_attention_mask:
            features["attention_mask"] = [encoding.attention_mask for encoding in encodings]
        if options.return_special_tokens_mask:
            features["special_tokens_mask"] = [encoding.special_tokens_mask for encoding in encodings]
        if options.return_offsets_mapping:
            features["offset_mapping"] = [encoding.offsets for encoding in encodings]
        for ids in features["input_ids"]:  # after padding, where 4.37.2's fast tokenizer checks
            self._warn_if_too_long(ids, options.max_length, options.verbose)
        return features
