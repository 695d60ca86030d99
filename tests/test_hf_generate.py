"""`RemBertForCausalLM.generate()` (transformers' GenerationMixin, its DynamicCache) gives the same ids as
transformers' own RemBertForCausalLM.generate on the same weights, and decodes with the KV cache."""

from __future__ import annotations

import pytest
import torch

from tests.hf_pairs import make_pair, needs_causal_reference

pytestmark = needs_causal_reference


def _prompt(seed: int, left_padding: bool = False) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    if left_padding:
        mask[1, :2] = 0
        mask[2, :4] = 0
        ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize(("mode", "options"), [
    ("greedy", dict(do_sample=False)),
    ("beam", dict(do_sample=False, num_beams=3)),
    ("sampling", dict(do_sample=True, top_k=20, temperature=0.9)),
])
def test_generate_gives_transformers_ids(mode, options):
    hf_model, ours = make_pair("RemBertForCausalLM", "h60", seed=5, is_decoder=True)
    prompt = _prompt(seed=6)
    kwargs = dict(max_new_tokens=8, pad_token_id=0, eos_token_id=None, **options)
    torch.manual_seed(7)
    expected = hf_model.generate(**prompt, **kwargs)
    torch.manual_seed(7)
    got = ours.generate(**prompt, **kwargs)
    assert got.shape == (3, 14)
    assert torch.equal(got, expected), mode


def test_generate_decodes_one_token_per_step_with_the_cache():
    hf_model, ours = make_pair("RemBertForCausalLM", "h60", seed=8, is_decoder=True)
    lengths = []
    record = lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1])  # noqa: E731
    handle = ours.register_forward_pre_hook(record, with_kwargs=True)
    prompt = _prompt(seed=9, left_padding=True)
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    got = ours.generate(**prompt, **options)
    handle.remove()
    assert lengths == [6, 1, 1, 1, 1]
    expected = hf_model.generate(**prompt, **options)
    assert torch.equal(got, expected)
