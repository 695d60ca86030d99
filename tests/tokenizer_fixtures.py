"""A tiny RemBERT-style sentencepiece model, trained at test time on tests/data/multilingual.txt.

`train_tiny_sentencepiece(directory)` is importable by any test (tokenizer tests, the batch-inference
engine's tests): it writes `<directory>/sentencepiece.model`, a Unigram model with RemBERT's special
pieces at RemBERT's ids ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4; control pieces, like
RemBERT's) and sentencepiece's default nmt_nfkc normalization (so the model carries a precompiled
charsmap, as RemBERT's does). Training takes well under a second and is deterministic (one thread).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_FILE = Path(__file__).parent / "data" / "multilingual.txt"
SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_multilingual_lines() -> list[str]:
    """The shipped multilingual test sentences, one per line."""
    return DATA_FILE.read_text(encoding="utf-8").splitlines()


def train_tiny_sentencepiece(directory: str | os.PathLike, vocab_size: int = 1000) -> str:
    """Train the tiny model into `directory`; returns the path of `sentencepiece.model`."""
    import sentencepiece as spm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "sentencepiece"
    spm.SentencePieceTrainer.train(
        input=str(DATA_FILE),
        model_prefix=str(prefix),
        model_type="unigram",
        vocab_size=vocab_size,
        # The corpus cannot always fill vocab_size pieces; take what it supports.
        hard_vocab_limit=False,
        # Leaves the rarest characters out, so the tests also meet the unknown piece.
        character_coverage=0.9995,
        pad_id=0,
        pad_piece="[PAD]",
        unk_id=1,
        unk_piece="[UNK]",
        bos_id=2,
        bos_piece="[CLS]",
        eos_id=3,
        eos_piece="[SEP]",
        control_symbols=["[MASK]"],
        num_threads=1,
        minloglevel=2,
    )
    os.remove(f"{prefix}.vocab")
    return f"{prefix}.model"
