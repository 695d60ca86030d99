"""transformers' pipelines given rembert_fast's model and tokenizer objects give the numbers they give
with transformers' model on the same weights (and the same tokenizer)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import transformers
from tokenizer_fixtures import train_tiny_sentencepiece

import rembert_fast
from tests.hf_pairs import config_kwargs, needs_causal_reference, randomize


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> rembert_fast.RemBertTokenizerFast:
    model_file = train_tiny_sentencepiece(tmp_path_factory.mktemp("spm"))
    return rembert_fast.RemBertTokenizerFast(vocab_file=model_file)


def _pair(class_name: str, vocab_size: int, seed: int, **overrides) -> tuple[Any, Any]:
    """(transformers model, rembert_fast model) of `class_name`, eval mode, the same random weights."""
    kwargs = config_kwargs("h60", vocab_size=vocab_size, max_position_embeddings=64, num_labels=3,
                           **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(transformers, class_name)(transformers.RemBertConfig(attn_implementation="eager",
                                                                              **kwargs)).eval()
    randomize(theirs, seed)
    ours = getattr(rembert_fast, class_name)(rembert_fast.RemBertConfig(**kwargs)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _assert_same(got, expected, path="out"):
    """Equal structure and strings; scores within 1e-5."""
    if isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_same(g, e, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert set(got) == set(expected), path
        for key in expected:
            _assert_same(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, str) or isinstance(expected, (int,)) and not isinstance(expected, bool):
        assert got == expected, path
    else:
        assert abs(float(got) - float(expected)) <= 1e-5, (path, got, expected)


@pytest.mark.parametrize(("task", "class_name", "options", "texts"), [
    ("fill-mask", "RemBertForMaskedLM", {}, ["hello world, this is a [MASK]", "une [MASK] phrase"]),
    ("text-classification", "RemBertForSequenceClassification", dict(top_k=None),
     ["hello world, this is a test", "another sentence", "noch ein Satz, etwas länger als die anderen"]),
    ("token-classification", "RemBertForTokenClassification", dict(aggregation_strategy="simple"),
     ["hello world, this is a test", "another sentence"]),
    ("token-classification", "RemBertForTokenClassification", {}, ["hello world, this is a test"]),
])
def test_pipeline_with_rembert_fast_objects_gives_transformers_numbers(tokenizer, task, class_name, options,
                                                                       texts):
    theirs, ours = _pair(class_name, len(tokenizer), seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = transformers.pipeline(task, model=theirs, tokenizer=tokenizer, **options)(texts)
        got = transformers.pipeline(task, model=ours, tokenizer=tokenizer, **options)(texts)
    assert len(got) == len(texts)
    _assert_same(got, expected)


@needs_causal_reference
def test_text_generation_pipeline_gives_transformers_text(tokenizer):
    theirs, ours = _pair("RemBertForCausalLM", len(tokenizer), seed=14, is_decoder=True)
    options = dict(max_new_tokens=6, do_sample=False)
    texts = ["hello world", "une phrase"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = transformers.pipeline("text-generation", model=theirs, tokenizer=tokenizer)(texts,
                                                                                                **options)
        got = transformers.pipeline("text-generation", model=ours, tokenizer=tokenizer)(texts, **options)
    assert got == expected
    assert all(item[0]["generated_text"].startswith(text) for item, text in zip(got, texts, strict=True))


def test_feature_extraction_pipeline_gives_transformers_features(tokenizer):
    theirs, ours = _pair("RemBertModel", len(tokenizer), seed=17)
    texts = ["hello world, this is a longer test than the other", "une phrase"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = transformers.pipeline("feature-extraction", model=theirs, tokenizer=tokenizer)(texts)
        got = transformers.pipeline("feature-extraction", model=ours, tokenizer=tokenizer)(texts)
        batched_expected = transformers.pipeline("feature-extraction", model=theirs,
                                                 tokenizer=tokenizer)(texts, batch_size=2)
        batched = transformers.pipeline("feature-extraction", model=ours, tokenizer=tokenizer)(texts,
                                                                                              batch_size=2)
    for text, features, reference in zip(texts, got, expected, strict=True):
        features, reference = torch.tensor(features), torch.tensor(reference)
        length = len(tokenizer(text)["input_ids"])
        assert features.shape == reference.shape == (1, length, ours.config.hidden_size)
        assert (features - reference).abs().max().item() <= 1e-5
    # Batched, the pipeline pads to the longest text (on the tokenizer's padding side): real positions are
    # transformers' numbers, padding positions zeros (RemBertModel's documented difference; transformers'
    # are meaningless there).
    longest = max(len(tokenizer(text)["input_ids"]) for text in texts)
    for text, features, reference in zip(texts, batched, batched_expected, strict=True):
        features, reference = torch.tensor(features)[0], torch.tensor(reference)[0]
        length = len(tokenizer(text)["input_ids"])
        real = torch.arange(longest) < length
        if tokenizer.padding_side == "left":
            real = real.flip(0)
        assert features.shape == reference.shape == (longest, ours.config.hidden_size)
        assert (features[real] - reference[real]).abs().max().item() <= 1e-5
        assert torch.equal(features[~real], torch.zeros_like(features[~real]))
