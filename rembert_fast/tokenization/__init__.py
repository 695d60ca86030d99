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

What the task guides use works as in 4.37.2 on both classes: `is_split_into_words` (a text given as
its words), `return_length`, settable special tokens (`pad_token = eos_token`, `pad_token_id = 3`,
`additional_special_tokens`), `add_tokens` / `add_special_tokens` (new ids from `len(tokenizer)` on,
matched in text before sentencepiece, saved and read back by transformers), `get_vocab()`,
`is_fast`, settable `padding_side` / `truncation_side`. The fast tokenizer's `BatchEncoding` keeps
the `tokenizers` encodings (`word_ids(i)`, `sequence_ids(i)`, `tokens(i)`, `char_to_token`,
`word_to_tokens`, ...) and `return_overflowing_tokens` returns the windows `stride` apart as further
rows with `overflow_to_sample_mapping`; the slow one's alignment methods and offsets raise, naming
`RemBertTokenizerFast`, and its `return_overflowing_tokens` gives 4.37.2's `overflowing_tokens` and
`num_truncated_tokens` per row.

Deliberate differences from 4.37.2 (errors where it logged or misbehaved): text that is not a string
raises `TypeError` naming the type; a missing or unreadable vocabulary file raises naming the path;
`save_vocabulary` / `save_pretrained` into a path that is not a directory raise; `max_length=0`, a
truncation `max_length` shorter than the special tokens, `padding="max_length"` with no length,
`truncation="only_second"` on a text without a pair, an empty special token, and negative or
non-integer ids raise (`ValueError`, `TypeError`, `IndexError`); `from_pretrained` reads local
directories only (no Hub download); a special token cannot be set to None; the slow tokenizer's
`return_overflowing_tokens` without a max_length raises ValueError (4.37.2: TypeError); a negative index into
a BatchEncoding's alignment methods counts from the end (4.37.2 raised AttributeError); a stride
that leaves no room raises ValueError (tokenizers panics).

The package's files: `base` (what both classes share), `slow` and `fast` (the two classes),
`options` (argument and strategy resolution), `batch_encoding` / `pad` (the output and padding of
tokenized inputs), `special_tokens`, `files` and `sentencepiece_model` (reading the `.model` file).
"""

from rembert_fast.tokenization.base import RemBertTokenizerBase
from rembert_fast.tokenization.batch_encoding import BatchEncoding, CharSpan, TokenSpan
from rembert_fast.tokenization.fast import SPIECE_UNDERLINE, RemBertTokenizerFast
from rembert_fast.tokenization.files import (
    ADDED_TOKENS_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
)
from rembert_fast.tokenization.options import LARGE_INTEGER, REMBERT_MAX_POSITIONS, VERY_LARGE_INTEGER
from rembert_fast.tokenization.slow import RemBertTokenizer
from rembert_fast.tokenization.special_tokens import SPECIAL_TOKEN_ATTRIBUTES, SpecialToken

__all__ = [
    "ADDED_TOKENS_FILE",
    "LARGE_INTEGER",
    "REMBERT_MAX_POSITIONS",
    "SPECIAL_TOKENS_MAP_FILE",
    "SPECIAL_TOKEN_ATTRIBUTES",
    "SPIECE_UNDERLINE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "VERY_LARGE_INTEGER",
    "VOCAB_FILE",
    "BatchEncoding",
    "CharSpan",
    "RemBertTokenizer",
    "RemBertTokenizerBase",
    "RemBertTokenizerFast",
    "SpecialToken",
    "TokenSpan",
]
