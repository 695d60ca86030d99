"""rembert_fast's classes on transformers' bases (`rembert_fast.hf_base`): isinstance, Trainer's save and
reload, transformers' own save_pretrained, the suite-level differences (config vs model checks, dtype
strings, pad_to_multiple_of), and the standalone base when transformers is hidden."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers

import rembert_fast
import rembert_fast.modeling as modeling
from rembert_fast.configuration import RemBertConfig
from tests.hf_pairs import config_kwargs, make_pair, randomize

CLASSES = ["RemBertModel", "RemBertForMaskedLM", "RemBertForCausalLM", "RemBertForSequenceClassification",
           "RemBertForTokenClassification", "RemBertForQuestionAnswering", "RemBertForMultipleChoice"]


def test_config_and_every_model_are_transformers_classes():
    config = RemBertConfig(**config_kwargs("h60"))
    assert isinstance(config, transformers.PreTrainedConfig) and config.model_type == "rembert"
    for name in CLASSES:
        model = getattr(rembert_fast, name)(config)
        assert isinstance(model, transformers.PreTrainedModel), name
        assert isinstance(model, transformers.GenerationMixin) == (name == "RemBertForCausalLM"), name
        assert model.config is config and model.base_model_prefix == "rembert"
        assert model.device == torch.device("cpu") and model.dtype == torch.float32
    # rembert_fast's loader and errors, not transformers'
    theirs = transformers.PreTrainedConfig.from_pretrained.__func__
    assert RemBertConfig.from_pretrained.__func__ is not theirs
    with pytest.raises(ValueError, match="config must be a rembert_fast.RemBertConfig"):
        modeling.RemBertModel(transformers.RemBertConfig(**config_kwargs("h60")))


OUTPUT_CLASSES = {
    "RemBertModel": "BaseModelOutputWithPoolingAndCrossAttentions", "RemBertForMaskedLM": "MaskedLMOutput",
    "RemBertForCausalLM": "CausalLMOutputWithCrossAttentions",
    "RemBertForSequenceClassification": "SequenceClassifierOutput",
    "RemBertForTokenClassification": "TokenClassifierOutput",
    "RemBertForQuestionAnswering": "QuestionAnsweringModelOutput",
    "RemBertForMultipleChoice": "MultipleChoiceModelOutput",
}


@torch.no_grad()
@pytest.mark.parametrize("name", CLASSES)
def test_outputs_are_the_output_classes_transformers_returns(name):
    """Pipelines and Trainer test `isinstance(output, transformers.utils.ModelOutput)`."""
    theirs, ours = make_pair(name, "h60", seed=5, is_decoder=name == "RemBertForCausalLM")
    ids = torch.randint(3, 97, (2, 3, 6) if name == "RemBertForMultipleChoice" else (2, 6),
                        generator=torch.Generator().manual_seed(6))
    got, expected = ours(input_ids=ids), theirs(input_ids=ids)
    assert type(got) is type(expected) is getattr(transformers.modeling_outputs, OUTPUT_CLASSES[name])
    assert isinstance(got, transformers.utils.ModelOutput) and list(got.keys()) == list(expected.keys())
    if name == "RemBertForCausalLM":  # the decoder returns its KV cache by default
        assert "cache" in got and got.cache is got.past_key_values


def test_trainer_save_model_writes_config_and_reloads_the_trained_weights(tmp_path):
    pytest.importorskip("accelerate")  # transformers' Trainer needs it (a dev extra)
    torch.manual_seed(0)
    config = RemBertConfig(**config_kwargs("h60", num_labels=3))
    model = rembert_fast.RemBertForSequenceClassification(config)
    randomize(model, seed=1)
    gen = torch.Generator().manual_seed(2)
    rows = [{"input_ids": torch.randint(3, 97, (7,), generator=gen), "labels": int(i % 3)} for i in range(8)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=3,
                                          per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
                                          use_cpu=True, save_strategy="no", disable_tqdm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    assert not torch.equal(before["classifier.weight"], model.state_dict()["classifier.weight"])
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == "rembert" and len(saved["id2label"]) == 3
    reloaded = rembert_fast.RemBertForSequenceClassification.from_pretrained(tmp_path / "saved")
    trained = model.state_dict()
    assert set(reloaded.state_dict()) == set(trained)
    for key, value in reloaded.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)
    ids = rows[0]["input_ids"][None]
    with torch.no_grad():
        expected_logits = model.eval()(ids.to(model.device)).logits.cpu()
        torch.testing.assert_close(reloaded.eval()(ids).logits, expected_logits)


@pytest.mark.parametrize("which", ["rembert_fast", "optimized_transformers"])
def test_transformers_save_pretrained_keeps_every_key(which, tmp_path):
    """q/k/v views of one fused buffer: transformers' save must write three separate tensors."""
    hf_model, ours = make_pair("RemBertForMaskedLM", "h60", seed=3)
    model = ours if which == "rembert_fast" else rembert_fast.optimize(hf_model)
    with torch.no_grad():
        model(torch.randint(3, 97, (2, 6)))  # the packed path fuses q/k/v on first use
    attention = model.rembert.encoder.layer[0].attention.self
    storage = attention.query.weight.untyped_storage().data_ptr()
    assert storage == attention.key.weight.untyped_storage().data_ptr()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.PreTrainedModel.save_pretrained(model, tmp_path)
        reloaded = transformers.RemBertForMaskedLM.from_pretrained(tmp_path)
    got = reloaded.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    ours_reloaded = rembert_fast.RemBertForMaskedLM.from_pretrained(tmp_path)
    for key, value in ours_reloaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_config_accepts_what_transformers_accepts_and_the_model_raises_its_error():
    kwargs = config_kwargs("h60", hidden_size=32, num_attention_heads=5)
    config = RemBertConfig(**kwargs)  # accepted, as transformers' config accepts it
    assert config.hidden_size == 32
    with pytest.raises(ValueError) as theirs:
        transformers.RemBertModel(transformers.RemBertConfig(**kwargs))
    with pytest.raises(ValueError) as ours:
        modeling.RemBertModel(config)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("key", ["torch_dtype", "dtype"])
def test_dtype_strings_become_torch_dtypes(key, tmp_path):
    config = RemBertConfig(**config_kwargs("h60"), **{key: "float16"})
    assert config.dtype is torch.float16
    assert transformers.RemBertConfig(**{key: "float16"}).dtype is torch.float16
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float16"
    assert RemBertConfig.from_pretrained(tmp_path).dtype is torch.float16
    with pytest.raises(ValueError, match="'float17'"):
        RemBertConfig(dtype="float17")


@pytest.mark.parametrize("bad", [1.3, "8"])
def test_resize_pad_to_multiple_of_is_validated_as_transformers_does(bad):
    hf_model, ours = make_pair("RemBertForMaskedLM", "h60")
    with pytest.raises(ValueError) as theirs:
        hf_model.resize_token_embeddings(120, pad_to_multiple_of=bad)
    with pytest.raises(ValueError) as got:
        ours.resize_token_embeddings(120, pad_to_multiple_of=bad)
    assert str(got.value) == str(theirs.value)
    assert ours.get_input_embeddings().num_embeddings == 97
    with pytest.raises(ValueError, match="pad_to_multiple_of=0 must be a positive integer"):
        ours.resize_token_embeddings(120, pad_to_multiple_of=0)  # transformers: ZeroDivisionError


def test_without_transformers_the_standalone_base_runs_a_forward():
    code = """
import sys, warnings
sys.modules['transformers'] = None
warnings.simplefilter('error')
import torch
import rembert_fast
from rembert_fast import hf_base
assert not hf_base.TRANSFORMERS and hf_base.ModelBase is rembert_fast.standalone_base.StandaloneModel
config = rembert_fast.RemBertConfig(vocab_size=50, hidden_size=24, num_attention_heads=4, num_hidden_layers=2,
                                    intermediate_size=40, input_embedding_size=8, output_embedding_size=12)
assert type(config).__mro__[1] is object
model = rembert_fast.RemBertForCausalLM(config).eval()
assert type(model).__mro__[-2:] == (torch.nn.Module, object)
out = model(torch.randint(1, 50, (2, 5)), attention_mask=torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]))
assert out.logits.shape == (2, 5, 50) and torch.isfinite(out.logits).all()
assert 'transformers' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_without_transformers_checkpointing_and_post_init_work_as_with_it():
    """The standalone base's activation checkpointing: the gradients of plain autograd (reference: the same
    model without checkpointing), each checkpointed layer run twice, every_n_layers, a config's
    `gradient_checkpointing: true`; post_init keeps initialised weights."""
    code = """
import sys
sys.modules['transformers'] = None
import torch
import rembert_fast
from rembert_fast import packed
config = rembert_fast.RemBertConfig(vocab_size=50, hidden_size=24, num_attention_heads=4, num_hidden_layers=3,
                                    intermediate_size=40, input_embedding_size=8, output_embedding_size=12,
                                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)
model = rembert_fast.RemBertForSequenceClassification(config).train()
ids, mask = torch.randint(1, 50, (2, 6)), torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
runs = []
layer = packed.packed_layer_forward
packed.packed_layer_forward = lambda *a: runs.append(1) or layer(*a)
def grads():
    model.zero_grad()
    torch.manual_seed(3)
    model(ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]
plain = grads()
for every, reentrant, recomputed in ((1, False, 3), (2, True, 2)):
    model.activation_checkpointing_enable({"use_reentrant": reentrant}, every_n_layers=every)
    flags = [layer.gradient_checkpointing for layer in model.rembert.encoder.layer]
    assert flags == [i % every == 0 for i in range(3)]
    runs.clear()
    again = grads()
    assert len(runs) == 3 + recomputed, runs
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, again, strict=True))
model.activation_checkpointing_disable()
assert not model.is_activation_checkpointing
on = rembert_fast.RemBertModel(rembert_fast.RemBertConfig(**config.to_dict(), gradient_checkpointing=True))
assert on.is_gradient_checkpointing and 'gradient_checkpointing' not in on.config.to_json_string()
before = [p.detach().clone() for p in on.parameters()]
on.post_init()
assert all(torch.equal(a, b) for a, b in zip(before, on.parameters()))
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_an_unsupported_transformers_version_warns_once_and_falls_back():
    code = """
import sys, types, warnings
fake = types.ModuleType('transformers'); fake.__version__ = '3.5.1'
import importlib.machinery
fake.__spec__ = importlib.machinery.ModuleSpec('transformers', None)
sys.modules['transformers'] = fake
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    from rembert_fast import hf_base
    import rembert_fast.modeling
assert not hf_base.TRANSFORMERS
assert len(caught) == 1 and '3.5.1' in str(caught[0].message), [str(w.message) for w in caught]
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _trainer(model, output_dir, rows, **options):
    args = transformers.TrainingArguments(output_dir=str(output_dir), max_steps=4,
                                          per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
                                          use_cpu=True, save_strategy="steps", save_steps=2,
                                          disable_tqdm=True, seed=3, **options)
    return transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)


def test_trainer_resume_from_checkpoint_and_load_best_model_at_end(tmp_path):
    pytest.importorskip("accelerate")

    def fresh():
        config = RemBertConfig(**config_kwargs("h60", num_labels=3))
        model = rembert_fast.RemBertForSequenceClassification(config)
        randomize(model, seed=4)
        return model

    gen = torch.Generator().manual_seed(5)
    rows = [{"input_ids": torch.randint(3, 97, (7,), generator=gen), "labels": i % 3} for i in range(8)]
    straight = fresh()
    _trainer(straight, tmp_path / "straight", rows).train()
    resumed = fresh()
    _trainer(resumed, tmp_path / "resumed", rows).train(resume_from_checkpoint=str(tmp_path / "straight" /
                                                                                   "checkpoint-2"))
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)

    best = fresh()
    trainer = _trainer(best, tmp_path / "best", rows, eval_strategy="steps", eval_steps=2,
                       load_best_model_at_end=True, metric_for_best_model="loss")
    trainer.train()
    best_dir = trainer.state.best_model_checkpoint
    chosen = rembert_fast.RemBertForSequenceClassification.from_pretrained(best_dir)
    for key, value in chosen.state_dict().items():
        torch.testing.assert_close(best.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_the_hf_extra_asks_for_the_transformers_majors_the_bases_subclass():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    from rembert_fast.hf_base import SUPPORTED_MAJOR

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    for extra in ("hf", "dev"):
        (spec,) = [Requirement(r).specifier for r in project["optional-dependencies"][extra]
                   if Requirement(r).name == "transformers"]
        for major in range(min(SUPPORTED_MAJOR) - 1, max(SUPPORTED_MAJOR) + 2):
            for version in (f"{major}.0.0", f"{major}.99.0"):
                assert spec.contains(version) == (major in SUPPORTED_MAJOR), (extra, version, spec)
    assert "datasets" in {Requirement(r).name for r in project["optional-dependencies"]["dev"]}
