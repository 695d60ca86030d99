"""Tiny saved RemBERT model directories and an independent reference for the batch-inference tests.

`tiny_model_dirs(root)` writes three transformers-layout directories (transformers' models with a
small random config, saved with transformers' `save_pretrained`, plus the tiny sentencepiece model
of `tokenizer_fixtures`): "cls" (sequence classification, 3 named labels; its `rembert.` weights,
pooler included, also serve `embed`), "mlm" (masked LM) and "tok" (token classification, 4 labels).

`Reference` computes what a line should give by calling transformers' model on that one line alone
(no batching, no padding), with ids from rembert_fast's tokenizer `__call__`: independent of the
engine's batching, sorting, packing and post-processing.

Also a pytest plugin (`pytest_plugins = ["batch_fixtures"]`) with the fixtures `dirs` (the
directories), `ref` (a `Reference`) and `one_thread` (torch on one thread for the module).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from tokenizer_fixtures import read_multilingual_lines, train_tiny_sentencepiece

MAX_POSITIONS = 64
LABELS = {
    "cls": {0: "negative", 1: "neutral", 2: "positive"},
    "tok": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC"},
}


def sample_texts() -> list[str]:
    """Multilingual lines of several lengths (a few longer than 24 tokens), and an empty one."""
    lines = [line for line in read_multilingual_lines() if line.strip()]
    return lines[:9] + lines[40:43] + [" ".join(lines[60:63]), ""]


@functools.lru_cache(maxsize=1)
def tiny_model_dirs() -> dict[str, Path]:
    """Build the three model directories once per test process (a temporary directory, removed at exit)."""
    import transformers

    from rembert_fast.tokenization import RemBertTokenizerFast

    root = Path(tempfile.mkdtemp(prefix="rembert_fast_batch_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    spm_path = train_tiny_sentencepiece(root / "spm")
    vocab_size = len(RemBertTokenizerFast.from_pretrained(str(root / "spm")))
    config = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        input_embedding_size=16, output_embedding_size=24, intermediate_size=48,
        max_position_embeddings=MAX_POSITIONS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
    )
    heads = {
        "cls": transformers.RemBertForSequenceClassification,
        "mlm": transformers.RemBertForMaskedLM,
        "tok": transformers.RemBertForTokenClassification,
    }
    dirs = {}
    for seed, (name, cls) in enumerate(heads.items()):
        torch.manual_seed(100 + seed)
        labels = LABELS.get(name)
        extra = {} if labels is None else {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}
        model = cls(transformers.RemBertConfig(**config, **extra)).eval()
        with torch.no_grad():  # random, not init-small, weights: outputs differ clearly between lines
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.2)
        directory = root / name
        model.save_pretrained(directory)
        shutil.copy(spm_path, directory / "sentencepiece.model")
        dirs[name] = directory
    return dirs


class Reference:
    """One-line-at-a-time outputs of transformers' models (fp32, CPU) for the directories above."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        import transformers

        from rembert_fast.tokenization import RemBertTokenizerFast

        self.tokenizer = RemBertTokenizerFast.from_pretrained(str(dirs["cls"]))
        self.base = transformers.RemBertModel.from_pretrained(dirs["cls"]).eval()
        self.classifier = transformers.RemBertForSequenceClassification.from_pretrained(dirs["cls"]).eval()
        self.mlm = transformers.RemBertForMaskedLM.from_pretrained(dirs["mlm"]).eval()
        self.tagger = transformers.RemBertForTokenClassification.from_pretrained(dirs["tok"]).eval()

    def encode(self, text: str, pair: str | None = None, max_length: int = MAX_POSITIONS) -> dict:
        return self.tokenizer(text, pair, truncation=True, max_length=max_length, return_offsets_mapping=True,
                              return_special_tokens_mask=True, return_token_type_ids=True)

    def _inputs(self, encoding: dict) -> dict[str, torch.Tensor]:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return {key: torch.tensor([encoding[key]]) for key in keys}

    @torch.no_grad()
    def embedding(self, text: str, pooling: str, pair: str | None = None, max_length: int = MAX_POSITIONS):
        out = self.base(**self._inputs(self.encode(text, pair, max_length)))
        if pooling == "pooler":
            return out.pooler_output[0]
        hidden = out.last_hidden_state[0]
        return hidden[0] if pooling == "cls" else hidden.mean(0)

    @torch.no_grad()
    def class_probs(self, text: str, pair: str | None = None) -> torch.Tensor:
        return self.classifier(**self._inputs(self.encode(text, pair))).logits[0].softmax(-1)

    @torch.no_grad()
    def mask_probs(self, text: str, max_length: int = MAX_POSITIONS) -> tuple[list[int], torch.Tensor]:
        encoding = self.encode(text, max_length=max_length)
        logits = self.mlm(**self._inputs(encoding)).logits[0]
        positions = [i for i, t in enumerate(encoding["input_ids"]) if t == self.tokenizer.mask_token_id]
        return positions, logits[positions].softmax(-1)

    @torch.no_grad()
    def token_probs(self, text: str) -> tuple[dict, torch.Tensor]:
        encoding = self.encode(text)
        return encoding, self.tagger(**self._inputs(encoding)).logits[0].softmax(-1)


@pytest.fixture(scope="module")
def dirs() -> dict[str, Path]:
    return tiny_model_dirs()


@pytest.fixture(scope="module")
def ref(dirs: dict[str, Path]) -> Reference:
    return Reference(dirs)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared CPU they only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
