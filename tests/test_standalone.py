"""rembert_fast in a venv without transformers: the same imports on the standalone base.

CI's second job (`.ci/run`) runs this file in a venv that has the core dependencies and pytest only. In
the main venv, where transformers is installed, the module is skipped: there the same imports are checked
with transformers hidden in a subprocess (tests/test_transformers_base.py). The references here are
independent of the code under test: the classic padded path (attention probabilities requested) for the
packed path, and sentencepiece itself for the tokenizer.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("transformers") is not None:
    pytest.skip("runs in CI's venv without transformers", allow_module_level=True)

import rembert_fast  # noqa: E402
from rembert_fast import (  # noqa: E402
    RemBertConfig,
    RemBertForCausalLM,
    RemBertForMaskedLM,
    RemBertForMultipleChoice,
    RemBertForQuestionAnswering,
    RemBertForSequenceClassification,
    RemBertForTokenClassification,
    RemBertModel,
    RemBertTokenizer,
    RemBertTokenizerFast,
)

DATA = Path(__file__).parent / "data"
HEADS = (RemBertForMaskedLM, RemBertForCausalLM, RemBertForSequenceClassification,
         RemBertForTokenClassification, RemBertForQuestionAnswering)


def _config(**overrides) -> RemBertConfig:
    options = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=48, input_embedding_size=16, output_embedding_size=24,
                   max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    options.update(overrides)
    return RemBertConfig(**options)


def _batch(generator: torch.Generator, batch: int = 3, seqlen: int = 11):
    ids = torch.randint(1, 97, (batch, seqlen), generator=generator)
    lengths = torch.randint(2, seqlen + 1, (batch,), generator=generator)
    lengths[0] = seqlen
    mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
    return ids, mask


def test_transformers_is_absent_and_the_classes_stand_alone():
    with pytest.raises(ImportError):
        import transformers  # noqa: F401
    assert not rembert_fast.hf_base.TRANSFORMERS
    assert all(base.__module__.split(".")[0] in ("torch", "rembert_fast", "builtins")
               for cls in (RemBertModel, *HEADS) for base in cls.__mro__)
    assert isinstance(RemBertModel(_config()), torch.nn.Module)


@torch.no_grad()
def test_packed_forward_matches_the_classic_path_on_real_positions():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = RemBertModel(_config()).eval()
    ids, mask = _batch(generator)
    packed = model(input_ids=ids, attention_mask=mask).last_hidden_state
    classic = model(input_ids=ids, attention_mask=mask, output_attentions=True).last_hidden_state
    real = mask.bool()
    assert (packed[real] - classic[real]).abs().max().item() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("head", HEADS, ids=lambda cls: cls.__name__)
def test_every_head_runs_and_round_trips_through_save_pretrained(head, tmp_path):
    torch.manual_seed(torch.seed() % 2**31)
    labels = 2 if head is RemBertForQuestionAnswering else 3
    model = head(_config(num_labels=labels, is_decoder=head is RemBertForCausalLM)).eval()
    ids, mask = _batch(torch.Generator().manual_seed(7))
    out = model(input_ids=ids, attention_mask=mask)
    model.save_pretrained(tmp_path)
    again = head.from_pretrained(tmp_path).eval()(input_ids=ids, attention_mask=mask)
    key = "logits" if hasattr(out, "logits") else "start_logits"
    assert torch.equal(getattr(out, key), getattr(again, key))


@torch.no_grad()
def test_multiple_choice_runs():
    model = RemBertForMultipleChoice(_config()).eval()
    ids = torch.randint(1, 97, (2, 3, 7))
    assert model(input_ids=ids).logits.shape == (2, 3)


@torch.no_grad()
def test_outputs_name_the_kv_cache_cache_as_transformers_5_does():
    model = RemBertForCausalLM(_config(is_decoder=True)).eval()
    ids, mask = _batch(torch.Generator().manual_seed(8))
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    assert list(out.keys()) == ["logits", "cache"]
    assert out.cache is out.past_key_values is out["cache"] is out["past_key_values"] is out[1]
    assert "past_key_values" in out and len(out.cache) == 2 and len(out.cache[0]) == 2
    # the cache feeds the next step under either name
    step = model(input_ids=ids[:, :1], attention_mask=torch.cat([mask, mask[:, :1]], 1), cache=out.cache)
    again = model(input_ids=ids[:, :1], attention_mask=torch.cat([mask, mask[:, :1]], 1),
                  past_key_values=out.past_key_values)
    assert torch.equal(step.logits, again.logits) and step.cache[0][0].shape[2] == ids.shape[1] + 1
    assert "cache" not in model(input_ids=ids, attention_mask=mask, use_cache=False)


def test_slow_tokenizer_gives_sentencepiece_ids(tmp_path):
    import sentencepiece

    shutil.copy(DATA / "tiny_sentencepiece.model", tmp_path / "sentencepiece.model")
    tokenizer = RemBertTokenizer.from_pretrained(tmp_path)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sentencepiece.model"))
    for text in (DATA / "multilingual.txt").read_text(encoding="utf-8").splitlines()[:20]:
        ids = tokenizer(text)["input_ids"]
        assert ids == [tokenizer.cls_token_id, *processor.encode(text), tokenizer.sep_token_id], text
    fast = RemBertTokenizerFast.from_pretrained(tmp_path)
    assert fast("hallo welt")["input_ids"][0] == fast.cls_token_id
