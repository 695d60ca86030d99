"""`RemBertTokenizer`: RemBERT's sentencepiece tokenizer, as transformers 4.37.2's class of that name."""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import replace
from typing import Any

import sentencepiece as spm

from rembert_fast.tokenization.base import RemBertTokenizerBase
from rembert_fast.tokenization.files import VOCAB_FILE, as_path
from rembert_fast.tokenization.options import EncodeOptions, TextPair
from rembert_fast.tokenization.sentencepiece_model import load_sentencepiece, read_model_bytes
from rembert_fast.tokenization.special_tokens import SPECIAL_TOKEN_ATTRIBUTES, SpecialToken

logger = logging.getLogger(__name__)


class RemBertTokenizer(RemBertTokenizerBase):
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
        self.vocab_file = as_path(vocab_file, "vocab_file")
        self.sp_model = load_sentencepiece(
            read_model_bytes(vocab_file, "RemBertTokenizer"), self.vocab_file, "RemBertTokenizer"
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
        """Give every special token an id (4.37.2's __init__ adds them as tokens): its piece id when it is
        a piece, else the next id past the vocabulary."""
        self._added_encoder: dict[str, int] = {}
        self._added_decoder: dict[int, SpecialToken] = {}
        for index, token in sorted(self._saved_added_tokens.items()):  # from_pretrained: ids as saved
            self._added_encoder[token.content] = index
            self._added_decoder[index] = token
        self._add_tokens(self._all_special_tokens_extended(), special_tokens=True)

    def _add_tokens(self, tokens: list[str | SpecialToken], special_tokens: bool) -> int:
        """transformers 4.37.2's PreTrainedTokenizer._add_tokens: a new token gets the next id, a known
        one (a piece or an added token) keeps its id; special ones join additional_special_tokens."""
        added = 0
        next_id = len(self)
        for token in tokens:
            if not token:
                continue
            if isinstance(token, str):
                if token in self._added_encoder:
                    continue
                special = special_tokens or token in self.all_special_tokens
                token = SpecialToken(token, normalized=not special, special=special)
            elif special_tokens:
                token = replace(token, special=True)
            if not token.special and token.normalized and self.do_lower_case:
                token = replace(token, content=token.content.lower())
            index = self._added_encoder.get(token.content)
            if index is None:
                piece_id = self.sp_model.piece_to_id(token.content)
                if piece_id != self.sp_model.unk_id() or token.content == self.sp_model.id_to_piece(piece_id):
                    index = piece_id
            if index is None:
                index, next_id, added = next_id, next_id + 1, added + 1
            if token.special and token.content not in self.all_special_tokens:
                self._additional.append(token)
            self._added_decoder[index] = token
            self._added_encoder[token.content] = index
        # Longest first, so that at one position the longest added token wins (transformers' Trie).
        alternatives = sorted(self._added_encoder, key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(re.escape(token) for token in alternatives) + ")")
        self._special_tokens_changed()
        return added

    def _special_tokens_changed(self) -> None:
        # do_lower_case leaves alone the special tokens and the normalized non-special added tokens
        # (4.37.2's rule; those were lowercased when added).
        kept = [*self.all_special_tokens]
        kept += [t.content for t in self._added_decoder.values() if not t.special and t.normalized]
        self._lowercase_split = re.compile("(" + "|".join(re.escape(token) for token in kept) + ")")
        self._special_ids = set(self.all_special_ids)

    def _added_tokens(self) -> dict[int, SpecialToken]:
        return dict(sorted(self._added_decoder.items()))

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
        """Pieces plus tokens added past them."""
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
        special_tokens_map.json), or a Hub model id such as "google/rembert" (the Hub keywords
        `revision`, `cache_dir`, `local_files_only`, `token`, `subfolder` apply; see `rembert_fast.hub`).
        Other keyword arguments override the saved configuration."""
        directory, init = cls._read_pretrained_config(pretrained_model_name_or_path, kwargs)
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

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        """4.37.2's slow decode: pieces through sentencepiece, with the added tokens that are not
        special (and the special ones past the vocabulary) kept whole and joined by spaces."""
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        whole = {token for token in self._added_encoder if token not in self.all_special_tokens}
        whole |= {
            token for token in self.additional_special_tokens if self._token_to_id(token) >= self.vocab_size
        }
        if not whole:
            return self.convert_tokens_to_string(tokens) if tokens else ""
        texts: list[str] = []
        pieces: list[str] = []
        for token in tokens:
            if token in whole:
                if pieces and (text := self.convert_tokens_to_string(pieces)):
                    texts.append(text)
                pieces = []
                texts.append(token)
            else:
                pieces.append(token)
        if pieces:
            texts.append(self.convert_tokens_to_string(pieces))
        return " ".join(texts)

    # -------------------------------------------------------------------------------------- encode
    def _truncate(
        self, ids: list[int], pair_ids: list[int] | None, remove: int, strategy: str, stride: int
    ) -> tuple[list[int], list[int] | None, list[int]]:
        """transformers' truncate_sequences: (ids, pair_ids, overflowing tokens: the cut tokens plus
        `stride` kept ones); an impossible cut is logged and skipped."""
        left = self.truncation_side == "left"

        def cut(seq: list[int]) -> tuple[list[int], list[int]]:
            window = min(len(seq), stride + remove)
            return (seq[remove:], seq[:window]) if left else (seq[:-remove], seq[-window:])

        if strategy == "only_first" or (strategy == "longest_first" and pair_ids is None):
            if len(ids) > remove:
                ids, overflow = cut(ids)
                return ids, pair_ids, overflow
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
            # 4.37.2 returns no overflowing tokens for pairs cut 'longest_first' (and warns so).
            if left:
                return ids[ids_cut:], pair_ids[pair_cut:], []
            return (ids[:-ids_cut] if ids_cut > 0 else ids), (
                pair_ids[:-pair_cut] if pair_cut > 0 else pair_ids
            ), []
        elif strategy == "only_second" and pair_ids is not None:
            if len(pair_ids) > remove:
                pair_ids, overflow = cut(pair_ids)
                return ids, pair_ids, overflow
            logger.error(
                f"We need to remove {remove} to truncate the input but the second sequence has a length "
                f"{len(pair_ids)}. Please select another truncation strategy."
            )
        return ids, pair_ids, []

    def _words_to_ids(self, texts: list[list[str]]) -> list[list[int]]:
        """Per text given as words: the ids of each word tokenized on its own, joined (4.37.2's
        is_split_into_words)."""
        per_word = iter(self._texts_to_ids([word for words in texts for word in words]))
        return [[index for _ in words for index in next(per_word)] for words in texts]

    def _encode_batch(self, pairs: list[TextPair], options: EncodeOptions) -> tuple[dict[str, list], None]:
        if options.return_offsets_mapping:
            raise NotImplementedError(
                "return_offsets_mapping needs RemBertTokenizerFast; the sentencepiece "
                "tokenizer does not track character offsets."
            )
        if options.return_overflowing_tokens and options.truncation == "longest_first" and any(
            pair is not None for _, pair in pairs
        ):
            raise ValueError(
                "return_overflowing_tokens cannot return the tokens truncation='longest_first' cuts from a "
                "pair of texts (as in 4.37.2); use truncation='only_second' or 'only_first'"
            )
        if options.return_overflowing_tokens and options.max_length is None:
            raise ValueError(
                "return_overflowing_tokens needs truncation with a max_length (RemBertTokenizerFast also "
                "gives overflow_to_sample_mapping)"
            )
        texts = [words for pair in pairs for words in pair if words is not None]
        if options.is_split_into_words and not all(texts):
            raise ValueError(
                "RemBertTokenizer with is_split_into_words=True needs at least one word per text (as in "
                "4.37.2); got an empty list"
            )
        max_length = options.max_length
        to_ids = self._words_to_ids if options.is_split_into_words else self._texts_to_ids
        firsts = to_ids([text for text, _ in pairs])
        seconds = iter(to_ids([pair for _, pair in pairs if pair is not None]))
        rows = []
        for ids, (_, pair) in zip(firsts, pairs, strict=True):
            pair_ids = next(seconds) if pair is not None else None
            total = len(ids) + (len(pair_ids) if pair_ids is not None else 0)
            total += self.num_special_tokens_to_add(pair_ids is not None) if options.add_special_tokens else 0
            # 4.37.2 skips truncation when max_length is 0 (`if ... and max_length and ...`).
            overflow: list[int] = []
            if options.truncation != "do_not_truncate" and max_length and total > max_length:
                ids, pair_ids, overflow = self._truncate(
                    ids, pair_ids, total - max_length, options.truncation, options.stride
                )
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
            row["length"] = len(row["input_ids"])
            # 4.37.2's slow overflow: the cut tokens of each row and how many (negative when none were).
            row["overflowing_tokens"] = overflow
            row["num_truncated_tokens"] = total - max_length if max_length is not None else 0
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
            + (["overflowing_tokens", "num_truncated_tokens"] if options.return_overflowing_tokens else [])
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
                if missing > 0 and key in pad_values:
                    fill = [pad_values[key]] * missing
                    value = fill + value if self.padding_side == "left" else value + fill
                features[key].append(value)
        if options.return_length:
            # 4.37.2 counts a batch's rows before padding them, one text after.
            features["length"] = [
                len(padded) if not options.batched else row["length"]
                for row, padded in zip(rows, features["input_ids"], strict=True)
            ]
        return features, None
