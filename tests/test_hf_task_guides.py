"""transformers' six RemBERT task guides (tests/hf_task_guides.py), run three ways on the same tiny random
checkpoint and data: transformers' classes and tokenizer (the reference); rembert_fast's classes and
`rembert_fast.RemBertTokenizerFast` (only the import differs); transformers' classes with
`rembert_fast.optimize` applied to every model the guide loads. Training losses (every step), evaluation
losses, the inference step's logits and the pipeline's output agree, and the guide's reload gives the
class it imported.

The tiny checkpoints have dropout off (the dropout masks of two implementations are not the same random
draws), and their tokenizer_config.json names `token_type_ids` among the model inputs: without that,
transformers 5's RemBERT tokenizer leaves them out where rembert_fast's returns them (as transformers 4's
did), which changes the inputs of the pair tasks (question answering, multiple choice), not the model.
Losses and logits agree within 1e-5 relative to their size (at least 1e-5 absolute).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("datasets")
pytest.importorskip("accelerate")

import transformers  # noqa: E402
from tokenizer_fixtures import train_tiny_sentencepiece  # noqa: E402

import rembert_fast  # noqa: E402
from rembert_fast.patching import is_optimized  # noqa: E402
from tests.hf_pairs import config_kwargs, needs_causal_reference, randomize  # noqa: E402
from tests.hf_task_guides import GUIDES, WNUT_LABELS  # noqa: E402

TOL = 1e-5
INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]
NUM_LABELS = {"sequence_classification": 2, "token_classification": len(WNUT_LABELS), "question_answering": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tokenizer")
    model_file = train_tiny_sentencepiece(directory / "spm")
    rembert_fast.RemBertTokenizerFast(vocab_file=model_file).save_pretrained(directory)
    return str(directory)


def _checkpoint(guide: str, tokenizer_dir: str, directory) -> str:
    """A tiny random transformers checkpoint of the guide's class, with the tokenizer beside it."""
    _, class_name, overrides = GUIDES[guide]
    tokenizer = transformers.RemBertTokenizerFast.from_pretrained(tokenizer_dir,
                                                                  model_input_names=INPUT_NAMES)
    kwargs = config_kwargs("h60", vocab_size=len(tokenizer), max_position_embeddings=128,
                           num_labels=NUM_LABELS.get(guide, 2), **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(transformers, class_name)(transformers.RemBertConfig(**kwargs))
    randomize(model, seed=sum(map(ord, guide)))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def _run(guide: str, lib, prepare, checkpoint: str, output_dir) -> dict[str, Any]:
    function = GUIDES[guide][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(lib, checkpoint, str(output_dir), prepare)


def _assert_close(got, expected, path: str) -> None:
    """Equal structure, strings and ints; floats and tensors within TOL."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.shape == expected.shape, path
        scale = max(1.0, expected.abs().max().item())
        assert (got - expected).abs().max().item() <= TOL * scale, (path, (got - expected).abs().max().item())
    elif isinstance(expected, dict):
        assert set(got) == set(expected), path
        for key in expected:
            _assert_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), (path, got, expected)
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_close(g, e, f"{path}[{i}]")
    elif isinstance(expected, (float, np.floating)):
        assert math.isfinite(expected) and abs(got - expected) <= TOL * max(1.0, abs(expected)), (path, got,
                                                                                                 expected)
    else:
        assert got == expected, (path, got, expected)


def _identity(model):
    return model


GUIDE_PARAMS = [pytest.param(name, marks=needs_causal_reference) if name == "causal_language_modeling"
                else name for name in GUIDES]


@pytest.mark.parametrize("guide", GUIDE_PARAMS)
def test_guide_gives_transformers_numbers_with_rembert_fast(guide, tokenizer_dir, tmp_path):
    checkpoint = _checkpoint(guide, tokenizer_dir, tmp_path / "checkpoint")
    reference = _run(guide, transformers, _identity, checkpoint, tmp_path / "reference")
    assert len(reference["train_losses"]) >= 2 and len(reference["epoch_eval_losses"]) == 3
    # the training moved the weights: later losses differ from the first
    assert len(set(reference["train_losses"])) > 1
    ours = _run(guide, rembert_fast, _identity, checkpoint, tmp_path / "rembert_fast")
    optimized = _run(guide, transformers, rembert_fast.optimize, checkpoint, tmp_path / "optimized")
    # the fine-tuned model the guide reloads from save_model's directory
    class_name = GUIDES[guide][1]
    assert type(reference.pop("model")) is getattr(transformers, class_name)
    assert type(ours.pop("model")) is getattr(rembert_fast, class_name)
    reloaded = optimized.pop("model")
    assert type(reloaded) is getattr(transformers, class_name) and is_optimized(reloaded)
    _assert_close(ours, reference, f"{guide}[rembert_fast]")
    _assert_close(optimized, reference, f"{guide}[optimize]")


def test_token_classification_guide_with_the_flattening_collator(tokenizer_dir, tmp_path):
    """The guide's data allow transformers' padding-free collator (DataCollatorWithFlattening: one row,
    position ids restarting per sentence): rembert_fast's classes train on it with the numbers the
    guide's padded batches give transformers. (The other guides' data do not: sequence-level labels,
    spans, random masking, choices; the causal LM's pad = eos token makes its padded labels differ.)"""
    checkpoint = _checkpoint("token_classification", tokenizer_dir, tmp_path / "checkpoint")
    reference = _run("token_classification", transformers, _identity, checkpoint, tmp_path / "reference")
    function = GUIDES["token_classification"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = function(rembert_fast, checkpoint, str(tmp_path / "flattened"), _identity, flatten=True)
    reference.pop("model")
    assert type(ours.pop("model")) is rembert_fast.RemBertForTokenClassification
    _assert_close(ours, reference, "token_classification[flattened]")
