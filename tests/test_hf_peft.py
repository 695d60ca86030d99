"""PEFT's LoRA on rembert_fast's models: the adapters train (the packed path, which reads weights instead
of calling modules, steps aside for wrapped layers), the outputs equal transformers' model with the same
adapters, and merge_and_unload gives back a plain model with the same outputs on the packed path."""

from __future__ import annotations

import pytest
import torch

from rembert_fast import packed
from tests.hf_pairs import make_pair

peft = pytest.importorskip("peft")


def test_lora_trains_matches_transformers_and_merges():
    theirs, ours = make_pair("RemBertForSequenceClassification", "h60", seed=12, num_labels=2)
    options = dict(r=4, lora_alpha=8, target_modules=["query", "value", "dense"], task_type="SEQ_CLS")
    ours_peft = peft.get_peft_model(ours, peft.LoraConfig(**options))
    theirs_peft = peft.get_peft_model(theirs, peft.LoraConfig(**options))
    gen = torch.Generator().manual_seed(13)
    ids = torch.randint(3, 97, (4, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = torch.tensor([0, 1, 0, 1])
    assert not packed.plain_modules(ours_peft.base_model.model.rembert)
    ours_peft.train()
    optimizer = torch.optim.AdamW([p for p in ours_peft.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        ours_peft(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lora_b = [p for name, p in ours_peft.named_parameters() if "lora_B" in name]
    assert lora_b and all(float(p.detach().abs().max()) > 0 for p in lora_b)
    theirs_peft.load_state_dict(ours_peft.state_dict(), strict=True)
    ours_peft.eval()
    theirs_peft.eval()
    with torch.no_grad():
        expected = theirs_peft(input_ids=ids, attention_mask=mask).logits
        got = ours_peft(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        merged = ours_peft.merge_and_unload()
        assert type(merged).__module__.startswith("rembert_fast.")
        assert packed.plain_modules(merged.rembert)
        torch.testing.assert_close(merged(input_ids=ids, attention_mask=mask).logits, expected,
                                   rtol=1e-5, atol=1e-5)
