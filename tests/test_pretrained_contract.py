"""transformers' PreTrainedModel contract where users meet it, against transformers itself: activation
checkpointing (API and gradients), from_pretrained's parameters and loading info, generation_config,
post_init after loading or resizing, hidden states that take gradients, config fields, the meta device."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers
from hf_pairs import batch_inputs, config_kwargs, make_pair

import rembert_fast
import rembert_fast.modeling.modules as modules
from rembert_fast import packed

HEADS = ["RemBertModel", "RemBertForMaskedLM", "RemBertForCausalLM", "RemBertForMultipleChoice",
         "RemBertForQuestionAnswering", "RemBertForSequenceClassification", "RemBertForTokenClassification"]


def _config(**overrides):
    return rembert_fast.RemBertConfig(**config_kwargs("h60", **overrides))


# ------------------------------------------------------------------------------ activation checkpointing
@pytest.mark.parametrize("name", HEADS)
def test_checkpointing_switches_as_in_transformers(name):
    """A config with `gradient_checkpointing: true` turns it on (and the key is consumed, not saved); the
    layers are transformers' GradientCheckpointingLayer; enable/disable and every_n_layers set the same
    layer flags as on transformers' model."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    config = _config(num_hidden_layers=3, gradient_checkpointing=True)
    ours = getattr(rembert_fast, name)(config)
    assert ours.is_activation_checkpointing
    assert "gradient_checkpointing" not in config.to_json_string()
    layers = [m for m in ours.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 3
    hf, ours = make_pair(name, "h60", num_hidden_layers=3)
    for model in (hf, ours):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers 5.25's old name
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        assert model.is_activation_checkpointing
        model.activation_checkpointing_disable()
        assert not model.is_activation_checkpointing
        model.activation_checkpointing_enable(every_n_layers=2)
    flags = [[layer.gradient_checkpointing for layer in model.base_model.encoder.layer]
             for model in (hf, ours)]
    assert flags[0] == flags[1] == [True, False, True]


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("path", ["packed", "classic"])
def test_checkpointing_gives_transformers_gradients(path, reentrant, monkeypatch):
    """With checkpointing on in both libraries: the same loss and parameter gradients as transformers,
    and each layer really runs twice (forward, then its recomputation), on the path named."""
    hf, ours = make_pair("RemBertForSequenceClassification", "h60", num_labels=2)
    batch = batch_inputs("h60")
    labels = torch.tensor([0, 1, 1])
    extra = {"output_attentions": True} if path == "classic" else {}
    layer_runs = []
    real_layer = packed.packed_layer_forward
    monkeypatch.setattr(packed, "packed_layer_forward",
                        lambda *a: layer_runs.append("packed") or real_layer(*a))
    real_output = modules.RemBertOutput.forward
    monkeypatch.setattr(modules.RemBertOutput, "forward",
                        lambda self, *a: layer_runs.append("classic") or real_output(self, *a))
    results = []
    for model in (hf, ours):
        model.train()
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        layer_runs.clear()
        loss = model(**batch, labels=labels, **extra).loss
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    assert layer_runs == [path] * (2 * ours.config.num_hidden_layers)
    (hf_loss, hf_grads), (loss, grads) = results
    torch.testing.assert_close(loss, hf_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == hf_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, hf_grads[name], rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------- hidden states take gradients
@pytest.mark.parametrize("path", ["packed", "classic"])
def test_hidden_states_take_the_gradients_transformers_gives(path):
    """Each returned hidden state is in the autograd graph (what saliency / integrated gradients read):
    its gradient is transformers' (on a loss over real positions, padding on the right)."""
    hf, ours = make_pair("RemBertModel", "h60")
    batch = batch_inputs("h60")
    real = batch["attention_mask"][..., None]
    extra = {"output_attentions": True} if path == "classic" else {}
    grads = []
    for model in (hf, ours):
        out = model(**batch, output_hidden_states=True, **extra)
        for state in out.hidden_states:
            state.retain_grad()
        ((out.last_hidden_state * real).sum() + out.pooler_output.sum()).backward()
        grads.append([state.grad for state in out.hidden_states])
    assert len(grads[1]) == len(grads[0]) == ours.config.num_hidden_layers + 1
    for layer, (got, want) in enumerate(zip(grads[1], grads[0], strict=True)):
        assert got is not None, f"hidden_states[{layer}] took no gradient"
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=f"hidden_states[{layer}]")


def test_hidden_states_gradient_of_a_classifier_head():
    """Attribution on a classifier: d logit / d hidden_states[0], as transformers."""
    hf, ours = make_pair("RemBertForSequenceClassification", "h60", num_labels=3)
    batch = batch_inputs("h60")
    grads = []
    for model in (hf, ours):
        out = model(**batch, output_hidden_states=True)
        out.hidden_states[0].retain_grad()
        out.logits[:, 1].sum().backward()
        grads.append(out.hidden_states[0].grad)
    assert grads[1] is not None and grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ hooks
def test_hooks_on_encoder_layers_run_as_in_transformers():
    """A forward hook or pre-hook on a layer (activation capture, FSDP) runs, and a hook that changes the
    layer's output changes the model's as in transformers: the packed path, which would skip it, is not
    taken then."""
    hf, ours = make_pair("RemBertModel", "h60")
    batch = batch_inputs("h60")
    real = batch["attention_mask"].bool()
    outputs, captured = [], []
    for model in (hf, ours):
        layers = model.encoder.layer
        handles = [layers[0].register_forward_hook(lambda m, i, o: (o[0] * 1.5, *o[1:])),
                   layers[1].register_forward_pre_hook(lambda m, i: captured.append(i[0]))]
        with torch.no_grad():
            outputs.append(model(**batch).last_hidden_state)
        for handle in handles:
            handle.remove()
    assert len(captured) == 2
    torch.testing.assert_close(captured[1][real], captured[0][real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[1][real], outputs[0][real], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ from_pretrained
def test_from_pretrained_takes_transformers_parameter_names(tmp_path):
    """`pretrained_model_name_or_path=` by keyword, and `None` with `config=` and `state_dict=`, as
    transformers; the state dict follows the same strict key rules as files."""
    _, ours = make_pair("RemBertForMaskedLM", "h60")
    ours.save_pretrained(tmp_path)
    by_keyword = rembert_fast.RemBertForMaskedLM.from_pretrained(pretrained_model_name_or_path=tmp_path)
    state = ours.state_dict()
    from_state = rembert_fast.RemBertForMaskedLM.from_pretrained(None, config=ours.config, state_dict=state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.RemBertForMaskedLM.from_pretrained(None, config=transformers.RemBertConfig(
            **ours.config.to_dict()), state_dict=state)
    for model in (by_keyword, from_state):
        got = model.state_dict()
        assert all(torch.equal(got[key], tensor) for key, tensor in theirs.state_dict().items())
    # A state dict and a directory: the weights come from the state dict.
    doubled = {key: tensor * 2 for key, tensor in state.items()}
    both = rembert_fast.RemBertForMaskedLM.from_pretrained(tmp_path, state_dict=doubled)
    assert torch.equal(both.cls.predictions.decoder.weight, doubled["cls.predictions.decoder.weight"])
    with pytest.raises(ValueError, match="missing keys: .*rembert.embeddings.word_embeddings.weight"):
        rembert_fast.RemBertForMaskedLM.from_pretrained(None, config=ours.config, state_dict={
            key: tensor for key, tensor in state.items() if "word_embeddings" not in key})
    with pytest.raises(ValueError, match=r"from_pretrained\(None, ...\) needs config= and state_dict="):
        rembert_fast.RemBertForMaskedLM.from_pretrained(None, config=ours.config)
    with pytest.raises(ValueError, match="state_dict must map key names to tensors, got list"):
        rembert_fast.RemBertForMaskedLM.from_pretrained(None, config=ours.config, state_dict=[1])


def test_a_shape_mismatch_raises_what_transformers_raises(tmp_path):
    """transformers raises a RuntimeError for a weight of another shape; rembert_fast's error is both that
    and a ValueError naming the key and the shapes."""
    hf, _ = make_pair("RemBertForSequenceClassification", "h60", num_labels=3)
    hf.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError):
            transformers.RemBertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    message = r"'classifier.bias' has shape \(3,\) in the checkpoint but \(5,\)"
    with pytest.raises(RuntimeError, match=message):
        rembert_fast.RemBertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    with pytest.raises(ValueError, match=message):
        rembert_fast.RemBertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)


@pytest.mark.parametrize("name", ["RemBertModel", "RemBertForSequenceClassification"])
def test_loading_info_has_transformers_types(tmp_path, name):
    """output_loading_info: sets of keys, as transformers returns them (a head from a base checkpoint)."""
    hf_base, _ = make_pair("RemBertModel", "h60")
    hf_base.save_pretrained(tmp_path)
    _, info = getattr(rembert_fast, name).from_pretrained(tmp_path, output_loading_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, hf_info = getattr(transformers, name).from_pretrained(tmp_path, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert type(info[key]) is type(hf_info[key]) is set, key
    assert info["missing_keys"] == hf_info["missing_keys"]


def test_generation_config_is_saved_and_loaded_as_in_transformers(tmp_path):
    _, ours = make_pair("RemBertForCausalLM", "h60", is_decoder=True)
    ours.generation_config.max_new_tokens = 7
    ours.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "generation_config.json").is_file()
    reloaded = rembert_fast.RemBertForCausalLM.from_pretrained(tmp_path / "ours")
    assert reloaded.generation_config.max_new_tokens == 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.RemBertForCausalLM.from_pretrained(tmp_path / "ours")
    assert theirs.generation_config.max_new_tokens == 7
    theirs.generation_config.max_new_tokens = 11
    theirs.save_pretrained(tmp_path / "theirs")
    reloaded = rembert_fast.RemBertForCausalLM.from_pretrained(tmp_path / "theirs")
    assert reloaded.generation_config.max_new_tokens == 11


def test_from_pretrained_under_the_meta_device_raises_as_transformers(tmp_path):
    from rembert_fast.checkpoint import MetaDeviceContextError

    _, ours = make_pair("RemBertModel", "h60")
    ours.save_pretrained(tmp_path)
    with torch.device("meta"):
        with pytest.raises(RuntimeError, match="with a meta device context manager"):
            rembert_fast.RemBertModel.from_pretrained(tmp_path)
        with pytest.raises(ValueError, match=r"Build an empty model with `Model\(config\)`"):
            rembert_fast.RemBertModel.from_pretrained(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(RuntimeError, match="with a meta device context manager"):
                transformers.RemBertModel.from_pretrained(tmp_path)
    assert issubclass(MetaDeviceContextError, ValueError)


# ------------------------------------------------------------------------------ post_init and resizing
def test_post_init_keeps_loaded_and_resized_weights(tmp_path):
    """post_init() initialises only what is not initialised yet (transformers): not the weights of a
    loaded model, nor rows added by resize_token_embeddings; `vocab_size` follows as in transformers."""
    hf, ours = make_pair("RemBertForMaskedLM", "h60")
    ours.save_pretrained(tmp_path)
    loaded = rembert_fast.RemBertForMaskedLM.from_pretrained(tmp_path)
    loaded.resize_token_embeddings(128)
    hf.resize_token_embeddings(128)
    assert loaded.vocab_size == hf.vocab_size == 128
    before = {key: tensor.clone() for key, tensor in loaded.state_dict().items()}
    loaded.post_init()
    after = loaded.state_dict()
    assert all(torch.equal(after[key], tensor) for key, tensor in before.items())
    torch.manual_seed(0)
    fresh = rembert_fast.RemBertForMaskedLM(loaded.config)
    # A new model is still initialised as transformers' init does: N(0, 0.02) weights, LN 1/0.
    head = fresh.cls.predictions
    assert abs(float(head.decoder.weight.detach().std()) - fresh.config.initializer_range) < 0.005
    assert torch.equal(head.LayerNorm.weight, torch.ones_like(head.LayerNorm.weight))


# ------------------------------------------------------------------------------------------- config
def test_config_fields_transformers_keeps():
    """label2id kept as given; attn_implementation sets `_attn_implementation` (not a config.json key);
    each as transformers' RemBertConfig does."""
    kwargs = {"id2label": {0: "a"}, "label2id": {"a": "0"}, "attn_implementation": "eager"}
    ours, theirs = rembert_fast.RemBertConfig(**kwargs), transformers.RemBertConfig(**kwargs)
    assert ours.label2id == theirs.label2id == {"a": "0"}
    assert ours._attn_implementation == theirs._attn_implementation == "eager"
    saved = json.loads(ours.to_json_string())
    assert "attn_implementation" not in saved and saved["label2id"] == {"a": "0"}


@pytest.mark.parametrize("name", HEADS)
def test_transformers_model_builds_from_a_rembert_fast_config(name):
    """A rembert_fast model leaves its config usable by transformers: its attention is 'eager' as
    transformers' RemBERT sets it, so transformers builds a model from it and output_attentions can be
    turned on."""
    ours = getattr(rembert_fast, name)(_config(is_decoder=name == "RemBertForCausalLM"))
    assert ours.config._attn_implementation == "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(transformers, name)(ours.config)
    assert theirs.config._attn_implementation == "eager"
    ours.config.output_attentions = True
    assert ours.config.output_attentions
