"""Trainer's training and evaluation loops with the LM heads' labelled-rows-only loss (logits None in
training): the same losses, gradient-accumulated steps and evaluation metrics as transformers' heads,
with padded batches and with the padding-free collator (DataCollatorWithFlattening)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")

from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments  # noqa: E402

from tests.test_lm_loss import VOCAB, _pair  # noqa: E402

LENGTHS = (6, 11, 3, 9, 12, 5, 8, 7)


def _dataset(causal: bool) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(40)
    rows = []
    for length in LENGTHS:
        ids = torch.randint(3, VOCAB, (length,), generator=gen)
        if causal:
            labels = ids.clone()
        else:
            labels = torch.where(torch.rand(length, generator=gen) < 0.4, ids, -100)
            labels[0] = ids[0]  # at least one label per row
        rows.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return rows


def _pad(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": torch.zeros(len(features), width, dtype=torch.long),
             "attention_mask": torch.zeros(len(features), width, dtype=torch.long),
             "labels": torch.full((len(features), width), -100)}
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(f["input_ids"])
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(f["labels"])
    return batch


def _accuracy(prediction) -> dict[str, float]:
    logits, labels = prediction
    scored = labels != -100
    return {"accuracy": float((logits.argmax(-1)[scored] == labels[scored]).mean())}


def _run(model, collator, output_dir, accumulation: int, **eval_args) -> dict:
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=2,
                             per_device_eval_batch_size=4, gradient_accumulation_steps=accumulation,
                             max_steps=2, learning_rate=1e-2,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                             dataloader_drop_last=False, **eval_args)
    data = _dataset(model.config.is_decoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                          data_collator=collator,
                          compute_metrics=None if eval_args.get("prediction_loss_only") else _accuracy)
        trainer.train()
        metrics = trainer.evaluate()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"losses": losses, **{k: v for k, v in metrics.items() if k in ("eval_loss", "eval_accuracy")}}


@pytest.mark.parametrize("class_name", ["RemBertForMaskedLM", "RemBertForCausalLM"])
@pytest.mark.parametrize("prediction_loss_only", [False, True])
def test_trainer_train_and_evaluate_match_transformers(class_name, prediction_loss_only, tmp_path):
    causal = class_name == "RemBertForCausalLM"
    # transformers' RemBertForMaskedLM ignores num_items_in_batch, so only one micro-batch per step compares
    accumulation = 2 if causal else 1
    reference, ours = _pair(class_name, seed=41, **({"is_decoder": True} if causal else {}))
    only = {"prediction_loss_only": prediction_loss_only}
    expected = _run(reference, _pad, tmp_path / "reference", accumulation, **only)
    got = _run(ours, _pad, tmp_path / "ours", accumulation, **only)
    assert len(expected["losses"]) == 2 and set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=2e-5, err_msg=key)


def test_trainer_with_the_flattening_collator_matches_padded_transformers(tmp_path):
    """A causal LM scores the same tokens either way (the collator's -100 falls on each first token, which a
    causal LM never scores), so the padding-free run gives the padded reference's losses."""
    reference, ours = _pair("RemBertForCausalLM", seed=42, is_decoder=True)
    expected = _run(reference, _pad, tmp_path / "reference", 2, prediction_loss_only=True)
    got = _run(ours, DataCollatorWithFlattening(), tmp_path / "ours", 2, prediction_loss_only=True)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=2e-5, err_msg=key)
