"""The LM losses without the (tokens x vocab) logits (rembert_fast/modeling/lm_loss.py) and the loss
keywords of every head (modeling/losses.py), against autograd through the whole logits and against
transformers' heads and loss functions, with fresh random weights and inputs.

The vocabulary (1000 here; several chunks through a small CHUNK_ELEMENTS) is large enough that the
chunk loop runs several times, with chunk sizes that do not divide the row count.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from transformers.loss.loss_utils import ForCausalLMLoss, ForMaskedLMLoss, fixed_cross_entropy

import rembert_fast.modeling as modeling
from rembert_fast.configuration import RemBertConfig
from rembert_fast.modeling import lm_loss
from rembert_fast.modeling.lm_loss import linear_cross_entropy, linear_cross_entropy_ref
from tests.hf_pairs import randomize

VOCAB = 1000
CONFIG = dict(vocab_size=VOCAB, hidden_size=48, num_attention_heads=4, num_hidden_layers=2,
              intermediate_size=60, input_embedding_size=20, output_embedding_size=28,
              max_position_embeddings=64, pad_token_id=0,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [0, 1, 7, 37])
@pytest.mark.parametrize("chunk_rows", [1, 3, 5, 64])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("divisor", ["mean", 53])
def test_linear_cross_entropy_matches_autograd_through_the_logits(rows, chunk_rows, with_bias, divisor):
    gen = torch.Generator().manual_seed(rows * 100 + chunk_rows)
    x = torch.randn(rows, 28, generator=gen, requires_grad=True)
    weight = (torch.randn(VOCAB, 28, generator=gen) * 0.3).requires_grad_()
    bias = (torch.randn(VOCAB, generator=gen) * 0.3).requires_grad_() if with_bias else None
    targets = torch.randint(0, VOCAB, (rows,), generator=gen)
    items = rows if divisor == "mean" else divisor
    upstream = torch.rand((), generator=gen) + 0.5  # a backward that is not 1 rescales the gradients

    inputs = [x, weight] + ([bias] if with_bias else [])
    loss = linear_cross_entropy(x, weight, bias, targets, items, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(loss * upstream, inputs)
    ref = linear_cross_entropy_ref(x, weight, bias, targets, items)
    ref_grads = torch.autograd.grad(ref * upstream, inputs, allow_unused=True)
    torch.testing.assert_close(loss, ref, equal_nan=True, **TOL)
    for got, expected in zip(grads, ref_grads, strict=True):
        expected = torch.zeros_like(got) if expected is None else expected
        torch.testing.assert_close(got, torch.nan_to_num(expected, nan=0.0) if rows == 0 else expected, **TOL)


def test_linear_cross_entropy_backward_twice_raises():
    x = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    loss = linear_cross_entropy(x, weight, None, torch.randint(0, 50, (4,)), 4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once"):
        loss.backward()


def test_linear_cross_entropy_bad_shapes_raise():
    with pytest.raises(ValueError, match="targets has shape"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(50, 8), None, torch.zeros(3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(50, 8), None, torch.zeros(4, dtype=torch.long), 4,
                             chunk_rows=0)


def _pair(class_name: str, seed: int, **overrides):
    kwargs = dict(CONFIG, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(transformers, class_name)(transformers.RemBertConfig(attn_implementation="eager",
                                                                                 **kwargs))
    randomize(reference, seed)
    ours = getattr(modeling, class_name)(RemBertConfig(**kwargs))
    ours.load_state_dict(reference.state_dict())
    return reference.train(), ours.train()


def _batch(seed: int, labelled: str, causal: bool = False):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 13), generator=gen)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    chosen = {"some": torch.rand(3, 13, generator=gen) < 0.3, "none": torch.zeros(3, 13, dtype=torch.bool),
              "all": torch.ones(3, 13, dtype=torch.bool)}[labelled]
    if labelled != "all" or not causal:
        chosen &= mask.bool()  # labels at padding send a call to the padded path: tested elsewhere
    labels = torch.where(chosen, torch.randint(0, VOCAB, (3, 13), generator=gen), -100)
    if causal and labelled == "all":
        labels = labels.masked_fill(torch.roll(mask == 0, 1, dims=1) & (mask == 0), -100)
    return {"input_ids": ids, "attention_mask": mask}, labels


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("class_name", ["RemBertForMaskedLM", "RemBertForCausalLM"])
@pytest.mark.parametrize("labelled", ["some", "none", "all"])
def test_lm_training_loss_and_gradients_equal_transformers(class_name, labelled, monkeypatch):
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 5 * VOCAB)  # chunks of 5 rows
    causal = class_name == "RemBertForCausalLM"
    overrides = dict(is_decoder=True) if causal else {}
    reference, ours = _pair(class_name, seed=1, **overrides)
    inputs, labels = _batch(seed=2, labelled=labelled, causal=causal)
    expected = reference(**inputs, labels=labels)
    got = ours(**inputs, labels=labels)
    assert got.logits is None  # training with labels: no (tokens x vocab) logits
    torch.testing.assert_close(got.loss, expected.loss, equal_nan=True, **TOL)
    if labelled == "none":
        assert torch.isnan(got.loss)
        return
    expected.loss.backward()
    got.loss.backward()
    _assert_same_grads(_grads(ours), _grads(reference))


@pytest.mark.parametrize("class_name", ["RemBertForMaskedLM", "RemBertForCausalLM"])
def test_lm_logits_in_eval_and_on_request(class_name):
    overrides = dict(is_decoder=True) if class_name == "RemBertForCausalLM" else {}
    reference, ours = _pair(class_name, seed=3, **overrides)
    inputs, labels = _batch(seed=4, labelled="some")
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        expected = reference(**inputs, labels=labels)
        requested = ours(**inputs, labels=labels, return_logits=True)
        evaluated = ours.eval()(**inputs, labels=labels)
    for out in (requested, evaluated):
        torch.testing.assert_close(out.loss, expected.loss, **TOL)
        torch.testing.assert_close(out.logits[real], expected.logits[real], rtol=1e-4, atol=2e-5)


def test_mlm_masked_positions_with_labels_in_training(monkeypatch):
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 3 * VOCAB)
    reference, ours = _pair("RemBertForMaskedLM", seed=5)
    inputs, labels = _batch(seed=6, labelled="some")
    chosen = torch.rand(3, 13, generator=torch.Generator().manual_seed(7)) < 0.6
    positions = inputs["attention_mask"].bool() & chosen
    got = ours(**inputs, labels=labels, masked_positions=positions)
    expected = reference(**inputs).logits[positions]
    picked = labels[positions]
    torch.testing.assert_close(got.loss, torch.nn.functional.cross_entropy(expected, picked), **TOL)


def test_num_items_in_batch_and_shift_labels_follow_transformers_loss_functions(monkeypatch):
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 4 * VOCAB)
    items = torch.tensor(41)
    reference, ours = _pair("RemBertForCausalLM", seed=8, is_decoder=True)
    inputs, labels = _batch(seed=9, labelled="some")
    gen = torch.Generator().manual_seed(10)
    shifted = torch.where(torch.rand(3, 13, generator=gen) < 0.4,
                          torch.randint(0, VOCAB, (3, 13), generator=gen), -100)
    shifted = shifted.masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        logits = reference(**inputs).logits
    for keywords in ({"num_items_in_batch": items}, {"shift_labels": shifted},
                     {"shift_labels": shifted, "num_items_in_batch": items}):
        expected = ForCausalLMLoss(logits, labels, VOCAB, **keywords)
        for mode in (ours.train(), ours.eval()):
            torch.testing.assert_close(mode(**inputs, labels=labels, **keywords).loss, expected, **TOL)
    reference, ours = _pair("RemBertForMaskedLM", seed=11)
    with torch.no_grad():
        logits = reference(**inputs).logits
    expected = ForMaskedLMLoss(logits, labels, VOCAB, num_items_in_batch=items)
    for mode in (ours.train(), ours.eval()):
        got = mode(**inputs, labels=labels, num_items_in_batch=items).loss
        torch.testing.assert_close(got, expected, **TOL)
    with pytest.raises(ValueError, match="shift_labels is the causal LM's"):
        ours(**inputs, labels=labels, shift_labels=labels)


@pytest.mark.parametrize("class_name", ["RemBertForTokenClassification", "RemBertForSequenceClassification",
                                        "RemBertForMultipleChoice", "RemBertForQuestionAnswering"])
def test_num_items_in_batch_divides_the_summed_loss(class_name):
    reference, ours = _pair(class_name, seed=12, num_labels=3 if "Question" not in class_name else 2)
    reference.eval()
    ours.eval()
    inputs, _ = _batch(seed=13, labelled="none")
    gen = torch.Generator().manual_seed(14)
    if class_name == "RemBertForMultipleChoice":
        inputs = {k: v[None].expand(2, -1, -1).contiguous() for k, v in inputs.items()}  # (2, 3 choices, 13)
    with torch.no_grad():
        out = reference(**inputs)
    items = 7
    if class_name == "RemBertForQuestionAnswering":
        start, end = torch.randint(0, 13, (3,), generator=gen), torch.randint(0, 13, (3,), generator=gen)
        keywords = {"start_positions": start, "end_positions": end}
        expected = (fixed_cross_entropy(out.start_logits, start, items, ignore_index=13)
                    + fixed_cross_entropy(out.end_logits, end, items, ignore_index=13)) / 2
    else:
        shape = {"RemBertForTokenClassification": (3, 13), "RemBertForSequenceClassification": (3,),
                 "RemBertForMultipleChoice": (2,)}[class_name]
        labels = torch.randint(0, 3, shape, generator=gen)  # 3 labels, or 3 choices
        if class_name == "RemBertForTokenClassification":
            labels = labels.masked_fill(inputs["attention_mask"] == 0, -100)
        keywords = {"labels": labels}
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        expected = fixed_cross_entropy(logits, labels.reshape(-1), items)
    got = ours(**inputs, **keywords, num_items_in_batch=items)
    torch.testing.assert_close(got.loss, expected, **TOL)
    with pytest.raises(ValueError, match="shift_labels is the causal LM's"):
        ours(**inputs, **keywords, shift_labels=torch.zeros(3, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['shift_label'\\]"):
        ours(**inputs, **keywords, shift_label=torch.zeros(3, 13, dtype=torch.long))


def test_heads_tell_trainer_they_take_loss_keywords():
    for name in ("RemBertForMaskedLM", "RemBertForCausalLM", "RemBertForTokenClassification",
                 "RemBertForSequenceClassification", "RemBertForMultipleChoice",
                 "RemBertForQuestionAnswering"):
        assert getattr(modeling, name).accepts_loss_kwargs is True, name
