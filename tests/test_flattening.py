"""Padding-free batches (transformers' DataCollatorWithFlattening, rembert_fast/modeling/flattened.py):
sequences concatenated in one row run one sequence per restart, so every token's logits equal those of
transformers' model run on its sequence alone, and the loss is the loss over those logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import DataCollatorWithFlattening

from rembert_fast.modeling import lm_loss
from tests.test_lm_loss import TOL, VOCAB, _pair

LENGTHS = (5, 9, 1, 7)
LOGIT_TOL = dict(rtol=1e-4, atol=2e-5)


def _features(seed: int, classes: int | None) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    features = []
    for length in LENGTHS:
        ids = torch.randint(3, VOCAB, (length,), generator=gen).tolist()
        high = classes if classes is not None else VOCAB
        labels = torch.randint(0, high, (length,), generator=gen)
        labels = labels.masked_fill(torch.rand(length, generator=gen) < 0.3, -100).tolist()
        features.append({"input_ids": ids, "labels": labels})
    return features


def _alone(reference, features, causal: bool) -> torch.Tensor:
    """(T, classes) logits of each sequence run alone through transformers, concatenated."""
    with torch.no_grad():
        return torch.cat([reference.eval()(input_ids=torch.tensor([f["input_ids"]])).logits[0]
                          for f in features])


@pytest.mark.parametrize("flash_kwargs", [False, True])
@pytest.mark.parametrize("class_name", ["RemBertForTokenClassification", "RemBertForMaskedLM",
                                        "RemBertForCausalLM"])
def test_flattened_batch_equals_each_sequence_alone(class_name, flash_kwargs, monkeypatch):
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 4 * VOCAB)
    causal = class_name == "RemBertForCausalLM"
    classes = 5 if class_name == "RemBertForTokenClassification" else None
    overrides = {"is_decoder": True} if causal else ({"num_labels": 5} if classes else {})
    reference, ours = _pair(class_name, seed=20, **overrides)
    features = _features(21, classes)
    batch = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)(features)
    assert batch["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in batch
    expected_logits = _alone(reference, features, causal)  # (T, classes)
    labels = batch["labels"][0]
    targets = F.pad(labels[1:], (0, 1), value=-100) if causal else labels
    expected_loss = F.cross_entropy(expected_logits, targets)

    with torch.no_grad():
        evaluated = ours.eval()(**batch)
    torch.testing.assert_close(evaluated.logits[0], expected_logits, **LOGIT_TOL)
    torch.testing.assert_close(evaluated.loss, expected_loss, **TOL)
    trained = ours.train()(**batch)  # the LM heads' labelled-rows-only loss
    torch.testing.assert_close(trained.loss, expected_loss, **TOL)


def test_flattened_batch_without_position_ids_restarts_positions():
    reference, ours = _pair("RemBertForTokenClassification", seed=22, num_labels=3)
    features = _features(23, 3)
    batch = DataCollatorWithFlattening(return_position_ids=False, return_flash_attn_kwargs=True)(features)
    assert "position_ids" not in batch
    with torch.no_grad():
        got = ours.eval()(**batch).logits[0]
    torch.testing.assert_close(got, _alone(reference, features, False), **LOGIT_TOL)


def test_flattened_batch_on_the_classic_path_keeps_sequences_apart():
    """output_attentions needs the classic path: a block-diagonal mask keeps the same answer."""
    reference, ours = _pair("RemBertForTokenClassification", seed=24, num_labels=3)
    features = _features(25, 3)
    batch = DataCollatorWithFlattening()(features)
    with torch.no_grad():
        out = ours.eval()(**batch, output_attentions=True)
    torch.testing.assert_close(out.logits[0], _alone(reference, features, False), **LOGIT_TOL)
    first = out.attentions[0][0, :, : LENGTHS[0], LENGTHS[0]:]  # the first sequence's queries, later keys
    assert torch.count_nonzero(first) == 0


def test_sequence_classification_gives_one_row_per_sequence():
    reference, ours = _pair("RemBertForSequenceClassification", seed=26, num_labels=3)
    features = [{"input_ids": f["input_ids"]} for f in _features(27, 3)]
    batch = DataCollatorWithFlattening()(features)
    batch.pop("labels")
    labels = torch.randint(0, 3, (len(LENGTHS),), generator=torch.Generator().manual_seed(28))
    with torch.no_grad():
        got = ours.eval()(**batch, labels=labels)
        expected = torch.cat([reference.eval()(input_ids=torch.tensor([f["input_ids"]])).logits
                              for f in features])
    torch.testing.assert_close(got.logits, expected, **LOGIT_TOL)
    torch.testing.assert_close(got.loss, F.cross_entropy(expected, labels), **TOL)


def test_question_answering_positions_with_a_flattened_batch_raise():
    _, ours = _pair("RemBertForQuestionAnswering", seed=29, num_labels=2)
    batch = DataCollatorWithFlattening()(_features(30, 2))
    batch.pop("labels")
    with pytest.raises(ValueError, match="padding-free batch"):
        ours(**batch, start_positions=torch.tensor([1]), end_positions=torch.tensor([2]))


def test_bad_offsets_raise():
    _, ours = _pair("RemBertForTokenClassification", seed=31, num_labels=3)
    ids = torch.randint(3, VOCAB, (1, 10))
    with pytest.raises(ValueError, match="must rise strictly from 0"):
        ours(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="differs from cu_seq_lens_q"):
        ours(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 4, 10], dtype=torch.int32),
             cu_seq_lens_k=torch.tensor([0, 5, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="max_length_q=5 but the longest"):
        ours(input_ids=ids, cu_seq_lens_q=torch.tensor([0, 4, 10], dtype=torch.int32), max_length_q=5)
    with pytest.raises(ValueError, match="one flattened row without attention_mask"):
        ours(input_ids=ids.expand(2, -1), cu_seq_lens_q=torch.tensor([0, 4, 10], dtype=torch.int32))
