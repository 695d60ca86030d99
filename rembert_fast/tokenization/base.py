"""What both RemBERT tokenizers share: special tokens, RemBERT's `[CLS] A [SEP] B [SEP]` layout, the
encoding API (`__call__`, `encode_plus`, `pad`, ...), decoding and save / load."""

from __future__ import annotations

import json
import logging
import operator
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rembert_fast import hub
from rembert_fast.hub import LOADER_ONLY_KEYWORDS
from rembert_fast.tokenization.batch_encoding import BatchEncoding, to_tensors
from rembert_fast.tokenization.files import (
    ADDED_TOKENS_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    VOCAB_FILE,
    as_path,
)
from rembert_fast.tokenization.options import (
    VERY_LARGE_INTEGER,
    EncodeOptions,
    TextPair,
    check_positive_int,
    normalize_inputs,
    resolve_strategies,
)
from rembert_fast.tokenization.pad import pad_encodings
from rembert_fast.tokenization.special_tokens import (
    SPECIAL_TOKEN_ATTRIBUTES,
    SpecialToken,
    SpecialTokensMixin,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

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
    "additional_special_tokens",
    "added_tokens_decoder",
    *SPECIAL_TOKEN_ATTRIBUTES,
)


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


class RemBertTokenizerBase(SpecialTokensMixin, ABC):
    """What both tokenizers share: special tokens, argument handling, RemBERT's special-token layout,
    padding/truncation strategy resolution, decoding clean-up and save/load."""

    model_input_names = ("input_ids", "token_type_ids", "attention_mask")
    is_fast = False
    # What from_pretrained fetches from a Hub repository (the ones it has).
    hub_files: tuple[str, ...] = (
        VOCAB_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, ADDED_TOKENS_FILE
    )
    pad_token_type_id = 0

    def __init__(
        self,
        do_lower_case: bool,
        remove_space: bool,
        keep_accents: bool,
        special_tokens: dict[str, str | dict | SpecialToken],
        model_max_length: int = VERY_LARGE_INTEGER,
        padding_side: str | None = None,
        truncation_side: str | None = None,
        clean_up_tokenization_spaces: bool = True,
        additional_special_tokens: Sequence[str | dict | SpecialToken] | None = None,
        added_tokens_decoder: dict[Any, dict | SpecialToken] | None = None,
    ) -> None:
        check_positive_int("model_max_length", model_max_length, optional=False)
        self.do_lower_case = do_lower_case
        self.remove_space = remove_space
        self.keep_accents = keep_accents
        self.model_max_length = model_max_length
        # tokenizer_config.json keeps a side given here (as 4.37.2 keeps its init arguments), with the
        # value it has when saved; a side only set later is not saved.
        sides = {"padding_side": padding_side, "truncation_side": truncation_side}
        self._sides_given = [name for name, side in sides.items() if side is not None]
        self.padding_side = padding_side or "right"
        self.truncation_side = truncation_side or "right"
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self._special = {name: SpecialToken.coerce(name, value) for name, value in special_tokens.items()}
        self._token_objects: set[str] = set()
        # tokenizer_config.json's added tokens (id -> token), restored by the subclass.
        self._saved_added_tokens = {
            int(index): SpecialToken.coerce("added_tokens_decoder", token)
            for index, token in (added_tokens_decoder or {}).items()
        }
        self._additional = [
            SpecialToken.coerce("additional_special_tokens", token)
            for token in additional_special_tokens or []
        ]
        # [MASK] behaves like a word: it takes the space before it (4.37.2 wraps a plain string this way).
        if isinstance(special_tokens["mask_token"], str):
            self._special["mask_token"] = SpecialToken(
                special_tokens["mask_token"], lstrip=True, normalized=True
            )
        self._warned: set[str] = set()

    @property
    def padding_side(self) -> str:
        """"right" or "left" (settable): where padding goes."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, side: str) -> None:
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left'; got {side!r}")
        self._padding_side = side

    @property
    def truncation_side(self) -> str:
        """"right" or "left" (settable): which end truncation cuts."""
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, side: str) -> None:
        if side not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left'; got {side!r}")
        self._truncation_side = side

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
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Encode a string, a pair, or a batch of either (a list of strings, a list of (str, str)
        tuples, or two lists); with `is_split_into_words`, each text is a list of words (a batch: a
        list of such lists). Arguments as transformers' `PreTrainedTokenizerBase.__call__`:
        `return_length` adds `length` (tokens per row); `return_overflowing_tokens` returns the tokens
        truncation cut, with `stride` tokens of the row before: the fast tokenizer as further rows of
        at most `max_length` tokens with `overflow_to_sample_mapping` (the input each row came from),
        the slow one as `overflowing_tokens` / `num_truncated_tokens` per row (4.37.2's forms)."""
        pairs, batched = normalize_inputs(text, text_pair, is_split_into_words)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0:
            raise ValueError(f"stride must be an int >= 0; got {stride!r}")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(
                f"return_tensors must be 'pt' (torch), 'np' (numpy) or None (lists); got {return_tensors!r}"
            )
        padding_strategy, truncation_strategy, max_length = resolve_strategies(
            padding,
            truncation,
            max_length,
            pad_to_multiple_of,
            verbose,
            self.model_max_length,
            self._warn_once,
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
        options = EncodeOptions(
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
            stride=stride,
            is_split_into_words=is_split_into_words,
            return_overflowing_tokens=return_overflowing_tokens,
            return_length=return_length,
            batched=batched,
        )
        features, encodings = self._encode_batch(pairs, options)
        # The fast tokenizer's overflowing rows stay a batch even for one input, as in 4.37.2.
        squeeze = not batched and not (return_overflowing_tokens and self.is_fast)
        if squeeze:
            # 4.37.2's fast tokenizer leaves `length` a one-entry list for one text.
            features = {
                key: value if key == "length" and self.is_fast else value[0]
                for key, value in features.items()
            }
        return to_tensors(features, return_tensors, prepend_batch_axis=squeeze, encodings=encodings)

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
        pad_values = {
            "input_ids": self.pad_token_id,
            "token_type_ids": self.pad_token_type_id,
            "special_tokens_mask": 1,
            "attention_mask": 0,
        }
        return pad_encodings(
            encoded_inputs,
            pad_values,
            self.padding_side if padding_side is None else padding_side,
            self.model_max_length,
            padding,
            max_length,
            pad_to_multiple_of,
            return_attention_mask,
            return_tensors,
        )

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

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _warn_if_too_long(self, ids: list[int], max_length: int | None, verbose: bool) -> None:
        if max_length is None and verbose and len(ids) > self.model_max_length:
            self._warn_once(
                "sequence-too-long",
                "Token indices sequence length is longer than the specified maximum sequence length for this "
                f"model ({len(ids)} > {self.model_max_length}). Running this sequence through the model will "
                "result in indexing errors",
            )

    @abstractmethod
    def _encode_batch(
        self, pairs: list[TextPair], options: EncodeOptions
    ) -> tuple[dict[str, list], list[Any] | None]:
        """(one list per output key (`input_ids`, ...), one entry per row, padded as `options` asks;
        the rows' `tokenizers` encodings, or None when the tokenizer has none)."""

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
            str(index): {**token.to_dict(), "special": token.special}
            for index, token in self._added_tokens().items()
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
        for name in self._sides_given:
            config[name] = getattr(self, name)
        config.update(self.special_tokens_map)
        return config

    def _special_tokens_map_json(self) -> dict[str, Any]:
        """Plain strings, except tokens whose matching flags differ from the default (here [MASK])."""
        out: dict[str, Any] = {}
        for name, token in self._special.items():
            flagged = token != SpecialToken(token.content) or name in self._token_objects
            out[name] = token.to_dict() if flagged else token.content
        if self._additional:
            out["additional_special_tokens"] = [token.to_dict() for token in self._additional]
        return out

    @abstractmethod
    def _added_tokens(self) -> dict[int, SpecialToken]:
        """id -> token, for every special or added token (transformers' added_tokens_decoder)."""

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str]:
        """Write `[prefix-]sentencepiece.model` into `save_directory`; returns its path."""
        directory = as_path(save_directory, "save_directory")
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
        directory = as_path(save_directory, "save_directory")
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
    def _read_pretrained_config(
        cls, name_or_path: str | os.PathLike, kwargs: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The local directory `name_or_path` names (a Hub model id is fetched, see `rembert_fast.hub`) and
        the __init__ keywords its tokenizer_config.json / special_tokens_map.json give, updated by
        `kwargs` (the Hub's keywords taken out of it)."""
        name_or_path = as_path(name_or_path, "pretrained_model_name_or_path")
        directory = hub.resolve_directory(name_or_path, cls.hub_files, **hub.pop_hub_keywords(kwargs))
        if not os.path.exists(directory):  # a subfolder missing from a local directory
            raise FileNotFoundError(f"{cls.__name__}.from_pretrained: {directory!r} does not exist")
        if not os.path.isdir(directory):
            raise NotADirectoryError(
                f"{cls.__name__}.from_pretrained loads a directory or a Hub model id; {directory!r} is a file"
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
        # transformers' loader keywords: no effect here (as for the models).
        for name in LOADER_ONLY_KEYWORDS:
            kwargs.pop(name, None)
        init.update(kwargs)
        return directory, init

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
