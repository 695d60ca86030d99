"""`RemBertTokenizerFast`: RemBERT's tokenizer on the `tokenizers` library, as transformers 4.37.2's
class of that name."""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from tokenizers import AddedToken as _TkAddedToken
from tokenizers import Encoding, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from rembert_fast.tokenization.base import RemBertTokenizerBase
from rembert_fast.tokenization.files import TOKENIZER_FILE, VOCAB_FILE, as_path, check_file
from rembert_fast.tokenization.options import EncodeOptions, TextPair
from rembert_fast.tokenization.sentencepiece_model import load_sentencepiece, model_spec, read_model_bytes
from rembert_fast.tokenization.special_tokens import SPECIAL_TOKEN_ATTRIBUTES, SpecialToken

logger = logging.getLogger(__name__)

SPIECE_UNDERLINE = "▁"


class RemBertTokenizerFast(RemBertTokenizerBase):
    """RemBERT's fast tokenizer on the `tokenizers` library (transformers 4.37.2's `RemBertTokenizerFast`).

    Its BatchEncodings carry the `tokenizers` encodings: `word_ids(i)`, `sequence_ids(i)`, `tokens(i)`,
    `char_to_token`, `word_to_tokens`, ... and `return_overflowing_tokens` with `stride`.

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

    is_fast = True
    hub_files = (TOKENIZER_FILE, *RemBertTokenizerBase.hub_files)

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
        self.vocab_file = as_path(vocab_file, "vocab_file") if vocab_file is not None else None
        if tokenizer_file is not None:
            path = as_path(tokenizer_file, "tokenizer_file")
            check_file(path, "tokenizer file", "RemBertTokenizerFast")
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
        self._state: tuple | None = None
        self._add_special_tokens()

    def _build_from_sentencepiece(self, path: str) -> Tokenizer:
        data = read_model_bytes(path, "RemBertTokenizerFast")
        sp = load_sentencepiece(data, path, "RemBertTokenizerFast")
        model_type, byte_fallback, charsmap = model_spec(data)
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
        """Add to the backend, as 4.37.2's __init__ does, the saved added tokens (tokenizer_config.json's,
        in id order) and then the special tokens that it does not hold yet, in runs of the same kind."""
        present = {token.content for token in self._tokenizer.get_added_tokens_decoder().values()}
        missing: list[SpecialToken] = []
        saved = [token for _, token in sorted(self._saved_added_tokens.items())]
        for token in [*saved, *self._all_special_tokens_extended()]:
            if token.content not in present:
                present.add(token.content)
                missing.append(token)
        specials = set(self.all_special_tokens)
        kinds = [token.special or token.content in specials for token in missing]
        while missing:
            run = next((i for i, kind in enumerate(kinds) if kind != kinds[0]), len(kinds))
            special = kinds[0]
            kinds = kinds[run:]
            tokens = [_backend_token(token, special) for token in missing[:run]]
            if special:
                self._tokenizer.add_special_tokens(tokens)
            else:
                self._tokenizer.add_tokens(tokens)
            missing = missing[run:]
        self._index_added_tokens()

    def _index_added_tokens(self) -> None:
        decoder = self._tokenizer.get_added_tokens_decoder()
        self._added_contents = {index: token.content for index, token in decoder.items()}
        # Once special, always skipped by decode: tokenizers 0.15 (4.37.2's) keeps a token in its set of
        # special tokens when add_tokens later adds it again as a plain token.
        self._special_ids = getattr(self, "_special_ids", set())
        self._special_ids |= {index for index, token in decoder.items() if token.special}

    def _add_tokens(self, tokens: list[str | SpecialToken], special_tokens: bool) -> int:
        """The backend's add_tokens / add_special_tokens (4.37.2's fast _add_tokens)."""
        backend = [
            token if isinstance(token, str) else _backend_token(token, special_tokens) for token in tokens
        ]
        if special_tokens:
            added = self._tokenizer.add_special_tokens(backend)
        else:
            added = self._tokenizer.add_tokens(backend)
        self._index_added_tokens()
        return added

    def _special_tokens_changed(self) -> None:
        """Nothing to rebuild: as in 4.37.2, setting a special-token attribute leaves the backend alone."""

    def _added_tokens(self) -> dict[int, SpecialToken]:
        return {
            index: SpecialToken(
                token.content, token.lstrip, token.rstrip, token.single_word, token.normalized, token.special
            )
            for index, token in sorted(self._tokenizer.get_added_tokens_decoder().items())
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
        transformers. A Hub model id such as "google/rembert" loads too (the Hub keywords `revision`,
        `cache_dir`, `local_files_only`, `token`, `subfolder` apply; see `rembert_fast.hub`). Other
        keyword arguments override the saved configuration."""
        directory, init = cls._read_pretrained_config(pretrained_model_name_or_path, kwargs)
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
        """Set the backend's truncation `(max_length, strategy, stride)` and padding `(length,
        pad_to_multiple_of)` (only when they, the sides or the pad token change: setting them costs)."""
        sides = (self.truncation_side, self.padding_side)
        state = (truncation, padding, sides, self.pad_token, self.pad_token_id)
        if self._state == state:
            return
        self._state = None
        if truncation is None:
            self._tokenizer.no_truncation()
        else:
            max_length, strategy, stride = truncation
            try:
                self._tokenizer.enable_truncation(
                    max_length, stride=stride, strategy=strategy, direction=self.truncation_side
                )
            except Exception as err:  # tokenizers raises plain Exception (e.g. stride >= max_length)
                raise ValueError(
                    f"RemBertTokenizerFast: cannot truncate to max_length={max_length} with stride={stride}: "
                    f"{err}"
                ) from err
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
        self._state = state

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
    def _encode_batch(
        self, pairs: list[TextPair], options: EncodeOptions
    ) -> tuple[dict[str, list], list[Encoding]]:
        encodings = self._encode(pairs, options, with_offsets=options.return_offsets_mapping)
        rows_of = [[encoding, *encoding.overflowing] if options.return_overflowing_tokens else [encoding]
                   for encoding in encodings]
        rows = [row for group in rows_of for row in group]
        # 4.37.2's fast key order (its _convert_encoding).
        features: dict[str, list] = {"input_ids": [row.ids for row in rows]}
        if options.return_token_type_ids:
            features["token_type_ids"] = [row.type_ids for row in rows]
        if options.return_attention_mask:
            features["attention_mask"] = [row.attention_mask for row in rows]
        if options.return_special_tokens_mask:
            features["special_tokens_mask"] = [row.special_tokens_mask for row in rows]
        if options.return_offsets_mapping:
            features["offset_mapping"] = [row.offsets for row in rows]
        if options.return_length:
            features["length"] = [len(row.ids) for row in rows]
        if options.return_overflowing_tokens:
            features["overflow_to_sample_mapping"] = [i for i, group in enumerate(rows_of) for _ in group]
        for ids in features["input_ids"]:  # after padding, where 4.37.2's fast tokenizer checks
            self._warn_if_too_long(ids, options.max_length, options.verbose)
        if options.return_offsets_mapping:
            return features, rows
        return features, _EncodingsWithOffsets(rows, lambda: self._encode(pairs, options, with_offsets=True),
                                               options.return_overflowing_tokens)

    def _encode(self, pairs: list[TextPair], options: EncodeOptions, with_offsets: bool) -> list[Encoding]:
        """The backend's encodings of `pairs` under `options` (truncated and padded)."""
        truncation = options.truncation
        padding = options.padding
        self._configure(
            None if truncation == "do_not_truncate" else (options.max_length, truncation, options.stride),
            None
            if padding == "do_not_pad"
            else (options.max_length if padding == "max_length" else None, options.pad_to_multiple_of),
        )
        inputs = [text if pair is None else (text, pair) for text, pair in pairs]
        # tokenizers >= 0.20 offers encode_batch_fast, which skips offset tracking (~20% faster); the
        # ids, masks and type ids are the same, and a BatchEncoding's alignment methods encode again.
        encode_batch = self._tokenizer.encode_batch
        if not with_offsets:
            encode_batch = getattr(self._tokenizer, "encode_batch_fast", encode_batch)
        try:
            return encode_batch(
                inputs,
                add_special_tokens=options.add_special_tokens,
                is_pretokenized=options.is_split_into_words,
            )
        except BaseException as err:
            # tokenizers raises plain Exception (a truncation that cannot fit) or panics (a stride not
            # shorter than the room truncation leaves).
            if not isinstance(err, Exception) and type(err).__name__ != "PanicException":
                raise
            raise ValueError(
                f"RemBertTokenizerFast could not encode the batch "
                f"(truncation={truncation!r}, max_length={options.max_length}, stride={options.stride}): "
                f"{err}"
            ) from err


def _backend_token(token: SpecialToken, special: bool) -> _TkAddedToken:
    return _TkAddedToken(
        token.content,
        single_word=token.single_word,
        lstrip=token.lstrip,
        rstrip=token.rstrip,
        normalized=token.normalized,
        special=special or token.special,
    )


class _EncodingsWithOffsets(list):
    """The rows' encodings from `encode_batch_fast`, which keeps no character offsets, word ids or token
    strings; `with_offsets()` encodes the batch again in full, once, for the alignment methods."""

    def __init__(self, rows: list[Encoding], encode: Any, overflowing: bool) -> None:
        super().__init__(rows)
        self._encode = encode
        self._overflowing = overflowing
        self._full: list[Encoding] | None = None

    def with_offsets(self) -> list[Encoding]:
        if self._full is None:
            encodings = self._encode()
            if self._overflowing:
                encodings = [row for encoding in encodings for row in (encoding, *encoding.overflowing)]
            self._full = encodings
        return self._full
