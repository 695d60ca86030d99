"""Checkpoints: transformers <-> rembert_fast both ways, every file format, dtypes, and every load error.

Reference: transformers' RemBert* classes (same keys, same on-disk formats). Every model here gets fresh
random weights (LayerNorms and biases too), so a tensor that is not loaded cannot pass by accident.
"""

import json
import logging
import re

import hf_pairs
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import rembert_fast
from rembert_fast.checkpoint import load_state_dict

CONFIG = {
    "vocab_size": 100,
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "input_embedding_size": 16,
    "output_embedding_size": 24,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "num_labels": 3,
}
# Output fields compared per class; per-token fields on real positions only.
HEADS = {
    "RemBertModel": ("last_hidden_state", "pooler_output"),
    "RemBertForMaskedLM": ("logits",),
    "RemBertForCausalLM": ("logits",),
    "RemBertForSequenceClassification": ("logits",),
    "RemBertForMultipleChoice": ("logits",),
    "RemBertForTokenClassification": ("logits",),
    "RemBertForQuestionAnswering": ("start_logits", "end_logits"),
}
ATOL = 1e-5


def _config_kwargs(name: str) -> dict:
    # transformers' question-answering head splits its logits in two: it needs num_labels=2.
    num_labels = 2 if name == "RemBertForQuestionAnswering" else CONFIG["num_labels"]
    return {**CONFIG, "num_labels": num_labels, "is_decoder": name == "RemBertForCausalLM"}


def _hf_model(name: str) -> torch.nn.Module:
    """A transformers model with random weights everywhere (not the ones/zeros LayerNorm init)."""
    model = getattr(transformers, name)(transformers.RemBertConfig(**_config_kwargs(name))).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    return model


def _inputs(name: str) -> dict:
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.randint(0, 2, ids.shape)}
    if name == "RemBertForMultipleChoice":
        inputs = {key: value[None].expand(2, -1, -1).contiguous() for key, value in inputs.items()}
    return inputs


def _assert_same_outputs(name: str, ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    if name == "RemBertForCausalLM" and not hf_pairs.transformers_decoder_is_causal():
        pytest.skip(f"outputs not compared (the weights were): {hf_pairs.NON_CAUSAL_REFERENCE}")
    inputs = _inputs(name)
    real = inputs["attention_mask"].bool()
    with torch.inference_mode():
        got, want = ours(**inputs), theirs(**inputs)
    for field in HEADS[name]:
        a, b = getattr(got, field), getattr(want, field)
        if a.shape[: real.dim()] == real.shape:
            a, b = a[real], b[real]
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"{name}.{field}")


def _assert_state_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


def _ours(name: str):
    return getattr(rembert_fast, name)


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", HEADS)
def test_transformers_checkpoint_loads_exactly(tmp_path, name):
    theirs = _hf_model(name)
    theirs.save_pretrained(tmp_path)
    ours = _ours(name).from_pretrained(tmp_path)
    assert not ours.training
    _assert_state_equal(ours.state_dict(), theirs.state_dict())
    _assert_same_outputs(name, ours, theirs)


@pytest.mark.parametrize("name", HEADS)
def test_our_checkpoint_loads_in_transformers(tmp_path, name):
    original = _hf_model(name)
    original.save_pretrained(tmp_path / "hf")
    ours = _ours(name).from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")

    # transformers' files (generation_config.json too, for the model that generates).
    written = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "hf").iterdir())
    generates = ["generation_config.json"] if name == "RemBertForCausalLM" else []
    assert written == sorted(["config.json", "model.safetensors", *generates])
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == [name] and config["dtype"] == "float32"
    # Only transformers' persistent keys reach the disk (no fused QKV, no position_ids).
    _assert_state_equal(load_file(tmp_path / "ours" / "model.safetensors"), dict(original.state_dict()))

    theirs = getattr(transformers, name).from_pretrained(tmp_path / "ours").eval()
    _assert_state_equal(theirs.state_dict(), original.state_dict())
    _assert_same_outputs(name, ours, theirs)


@pytest.mark.parametrize(
    ("safe", "shard_size"), [(True, "5GB"), (True, "4KB"), (False, "5GB"), (False, 4000)]
)
def test_formats_and_shards(tmp_path, safe, shard_size):
    name = "RemBertForMaskedLM"
    original = _hf_model(name)
    original.save_pretrained(tmp_path / "hf")
    ours = _ours(name).from_pretrained(tmp_path / "hf")
    out = tmp_path / "ours"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"stale file from an earlier save")
    ours.save_pretrained(out, safe_serialization=safe, max_shard_size=shard_size)

    files = sorted(p.name for p in out.iterdir() if p.name != "config.json")
    stem, suffix = ("model", "safetensors") if safe else ("pytorch_model", "bin")
    if shard_size == "5GB":
        assert files == [f"{stem}.{suffix}"]
    else:
        index = json.loads((out / f"{stem}.{suffix}.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        count = len(shards)
        assert count > 2
        assert shards == [f"{stem}-{i:05d}-of-{count:05d}.{suffix}" for i in range(1, count + 1)]
        assert files == sorted([*shards, f"{stem}.{suffix}.index.json"])
        assert sorted(index["weight_map"]) == sorted(original.state_dict())
        state = original.state_dict()
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())

    _assert_state_equal(_ours(name).from_pretrained(out).state_dict(), original.state_dict())
    _assert_state_equal(load_state_dict(out), dict(original.state_dict()))
    theirs = transformers.RemBertForMaskedLM.from_pretrained(out).eval()
    _assert_state_equal(theirs.state_dict(), original.state_dict())


def test_transformers_bin_checkpoint_and_safetensors_preferred(tmp_path):
    first, second = _hf_model("RemBertModel"), _hf_model("RemBertModel")
    first.config.save_pretrained(tmp_path)
    torch.save(first.state_dict(), tmp_path / "pytorch_model.bin")
    _assert_state_equal(_ours("RemBertModel").from_pretrained(tmp_path).state_dict(), first.state_dict())
    _assert_state_equal(load_state_dict(tmp_path / "pytorch_model.bin"), dict(first.state_dict()))
    # Both formats present: safetensors wins, as in transformers.
    save_file(dict(second.state_dict()), tmp_path / "model.safetensors", metadata={"format": "pt"})
    _assert_state_equal(_ours("RemBertModel").from_pretrained(tmp_path).state_dict(), second.state_dict())


# ----------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(None, torch.float32), ("auto", torch.float32), (torch.bfloat16, torch.bfloat16),
     ("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)],
)
def test_dtype_conversion(tmp_path, dtype, expected):
    original = _hf_model("RemBertForSequenceClassification")
    original.save_pretrained(tmp_path)
    ours = _ours("RemBertForSequenceClassification").from_pretrained(tmp_path, dtype=dtype, device="cpu")
    want = {key: t.to(expected) for key, t in original.state_dict().items()}
    _assert_state_equal(ours.state_dict(), want)
    assert all(p.dtype == expected and p.device.type == "cpu" for p in ours.parameters())


@pytest.mark.gpu
def test_loads_straight_to_the_gpu_in_bf16_without_an_fp32_copy(tmp_path):
    """from_pretrained(dtype=bf16, device="cuda"): every tensor lands on the GPU in bf16, the GPU never
    holds more than the bf16 model plus one tensor's fp32 staging, and the outputs match transformers'
    fp32 model within twice transformers' own bf16 error."""
    config = {**CONFIG, "vocab_size": 5000, "hidden_size": 256, "intermediate_size": 1024,
              "input_embedding_size": 128, "output_embedding_size": 128, "num_attention_heads": 4}
    theirs = transformers.RemBertForMaskedLM(transformers.RemBertConfig(**config)).eval()
    theirs.save_pretrained(tmp_path)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    ours = _ours("RemBertForMaskedLM").from_pretrained(tmp_path, dtype=torch.bfloat16, device="cuda")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    params = list(ours.parameters())
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in params)
    bf16_bytes = sum(p.numel() * p.element_size() for p in params)
    largest_fp32 = max(p.numel() for p in params) * 4
    assert peak <= 1.05 * bf16_bytes + largest_fp32, (peak, bf16_bytes, largest_fp32)

    inputs = {key: value.cuda() for key, value in _inputs("RemBertForMaskedLM").items()}
    real = inputs["attention_mask"].bool()
    with torch.inference_mode():
        ref32 = theirs.cuda()(**inputs).logits[real]
        got = ours(**inputs).logits[real].float()
        ref16 = theirs.to(torch.bfloat16)(**inputs).logits[real].float()
    hf_error = (ref16 - ref32).abs().max().item()
    assert (got - ref32).abs().max().item() <= 2 * hf_error + 1e-2


def test_auto_dtype_follows_the_checkpoint(tmp_path):
    original = _hf_model("RemBertModel")
    original.save_pretrained(tmp_path / "hf")
    ours = _ours("RemBertModel").from_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    ours.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / "bf16" / "model.safetensors").values())
    again = _ours("RemBertModel").from_pretrained(tmp_path / "bf16", dtype="auto")
    assert all(p.dtype == torch.bfloat16 for p in again.parameters())
    as_fp32 = _ours("RemBertModel").from_pretrained(tmp_path / "bf16")
    want = {key: t.to(torch.bfloat16).float() for key, t in original.state_dict().items()}
    _assert_state_equal(as_fp32.state_dict(), want)


# --------------------------------------------------------------------- heads and base models mixed
def test_head_from_base_checkpoint_initialises_head_with_warning(tmp_path, caplog):
    base = _hf_model("RemBertModel")
    base.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="rembert_fast.checkpoint"):
        ours = _ours("RemBertForSequenceClassification").from_pretrained(tmp_path)
    assert "newly initialised" in caplog.text
    assert "classifier.weight" in caplog.text and "classifier.bias" in caplog.text
    assert "pooler" not in caplog.text and "encoder" not in caplog.text
    state = ours.state_dict()
    _assert_state_equal({k[len("rembert."):]: t for k, t in state.items() if k.startswith("rembert.")},
                        dict(base.state_dict()))
    weight = state["classifier.weight"]
    assert weight.shape == (3, 48) and torch.count_nonzero(weight) == weight.numel()
    assert 0.005 < weight.std().item() < 0.05  # normal(0, initializer_range=0.02), as in transformers
    assert torch.equal(state["classifier.bias"], torch.zeros(3))
    # transformers keeps the same base weights.
    theirs = transformers.RemBertForSequenceClassification.from_pretrained(tmp_path)
    _assert_state_equal({k: t for k, t in state.items() if k.startswith("rembert.")},
                        {k: t for k, t in theirs.state_dict().items() if k.startswith("rembert.")})


def test_model_keyword_goes_to_the_model(tmp_path, caplog):
    head = _hf_model("RemBertForMaskedLM")
    head.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="rembert_fast.checkpoint"):
        ours = _ours("RemBertModel").from_pretrained(tmp_path, add_pooling_layer=False)
    assert "newly initialised" not in caplog.text
    assert not any(key.startswith("pooler.") for key in ours.state_dict())
    assert not hasattr(ours.config, "add_pooling_layer")


def test_base_from_head_checkpoint_ignores_head(tmp_path, caplog):
    head = _hf_model("RemBertForMaskedLM")
    head.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="rembert_fast.checkpoint"):
        ours = _ours("RemBertModel").from_pretrained(tmp_path)
    assert "cls.predictions.decoder.weight" in caplog.text  # ignored
    assert "pooler.dense.weight" in caplog.text  # a masked-LM model has no pooler: initialised
    want = {k[len("rembert."):]: t for k, t in head.state_dict().items() if k.startswith("rembert.")}
    got = {k: t for k, t in ours.state_dict().items() if not k.startswith("pooler.")}
    _assert_state_equal(got, want)
    theirs = transformers.RemBertModel.from_pretrained(tmp_path)
    _assert_state_equal(got, {k: t for k, t in theirs.state_dict().items() if not k.startswith("pooler.")})


# ----------------------------------------------------------------------------------------- errors
@pytest.fixture
def saved(tmp_path):
    """A transformers RemBertModel directory and its state dict."""
    model = _hf_model("RemBertModel")
    model.save_pretrained(tmp_path)
    return tmp_path, dict(model.state_dict())


def _load(path, **kwargs):
    return _ours("RemBertModel").from_pretrained(path, **kwargs)


def test_missing_directory_and_weights(saved):
    path, _ = saved
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        _load(path / "nowhere")
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        load_state_dict(path / "nowhere")
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=re.escape(
            "looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
            "pytorch_model.bin.index.json")):
        _load(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_safetensors(saved, damage):
    path, _ = saved
    file = path / "model.safetensors"
    data = file.read_bytes()
    torch.manual_seed(1)
    file.write_bytes(bytes(torch.randint(0, 256, (512,), dtype=torch.uint8).tolist()) if damage == "garbage"
                     else data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"cannot read the safetensors file {str(file)!r}")):
        _load(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_bin(saved, damage):
    path, state = saved
    (path / "model.safetensors").unlink()
    file = path / "pytorch_model.bin"
    torch.save(state, file)
    data = file.read_bytes()
    file.write_bytes(b"\x80\x02garbage" * 40 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"cannot read the weights file {str(file)!r}")):
        _load(path)


def test_index_naming_a_missing_shard(saved):
    path, state = saved
    model = _load(path)
    model.save_pretrained(path, max_shard_size="20KB")
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ValueError, match=f"shard '{shard.name}'.*model.safetensors.index.json"):
        _load(path)
    (path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="weight_map"):
        _load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("extra_encoder_key", r"unexpected keys: \['encoder.layer.2.output.dense.weight'\]"),
        ("extra_prefixed_key", r"unexpected keys: \['rembert.embeddings.extra'\]"),
        ("missing_encoder_key", r"missing keys: \['encoder.layer.1.output.dense.bias'\]"),
        ("missing_embedding_key", r"missing keys: \['embeddings.LayerNorm.weight'\]"),
        ("missing_pooler_bias", r"missing keys: \['pooler.dense.bias'\]"),
        ("wrong_shape", r"'encoder.layer.0.intermediate.dense.weight' has shape \(64, 47\) in the checkpoint "
                        r"but \(64, 48\)"),
    ],
)
def test_key_mismatches(saved, edit, message):
    path, state = saved
    if edit == "extra_encoder_key":
        state["encoder.layer.2.output.dense.weight"] = torch.randn(48, 64)
    elif edit == "extra_prefixed_key":
        state["rembert.embeddings.extra"] = torch.randn(3)
    elif edit == "missing_encoder_key":
        del state["encoder.layer.1.output.dense.bias"]
    elif edit == "missing_embedding_key":
        del state["embeddings.LayerNorm.weight"]
    elif edit == "missing_pooler_bias":
        del state["pooler.dense.bias"]
    else:
        state["encoder.layer.0.intermediate.dense.weight"] = torch.randn(64, 47)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=message):
        _load(path)


def test_missing_head_key_in_a_head_checkpoint(tmp_path):
    model = _hf_model("RemBertForQuestionAnswering")
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["qa_outputs.bias"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: \['qa_outputs.bias'\]"):
        _ours("RemBertForQuestionAnswering").from_pretrained(tmp_path)


def test_config_override_shape_mismatch(saved):
    path, _ = saved
    with pytest.raises(ValueError, match=r"embeddings.word_embeddings.weight' has shape \(100, 16\) in the "
                                         r"checkpoint but \(101, 16\)"):
        _load(path, vocab_size=101)


@pytest.mark.parametrize("dtype", ["int8", torch.int64, "half-ish"])
def test_bad_dtype(saved, dtype):
    with pytest.raises(ValueError, match=re.escape(f"dtype={dtype!r}")):
        _load(saved[0], dtype=dtype)


def test_auto_dtype_with_a_bad_config_dtype(saved):
    path, _ = saved
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "dtype": "int8"}))
    with pytest.raises(ValueError, match="dtype='auto' found dtype='int8' in config.json"):
        _load(path, dtype="auto")


def test_auto_dtype_of_a_float64_checkpoint_without_a_config_dtype(tmp_path):
    """A float64 checkpoint whose config names no dtype: 'auto' would load float64, which the ops do not
    run, so it is refused at load, naming the tensor; an explicit dtype converts it."""
    original = _hf_model("RemBertModel").double()
    original.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"dtype='auto': .* as torch\.float64, .*dtype=torch\.float32"):
        _ours("RemBertModel").from_pretrained(tmp_path, dtype="auto")
    as_fp32 = _ours("RemBertModel").from_pretrained(tmp_path, dtype=torch.float32)
    _assert_state_equal(as_fp32.state_dict(), {k: t.float() for k, t in original.state_dict().items()})


def test_bad_save_arguments(saved):
    path, _ = saved
    model = _load(path)
    with pytest.raises(ValueError, match="max_shard_size='lots'"):
        model.save_pretrained(path / "out", max_shard_size="lots")
    with pytest.raises(ValueError, match="it is a file"):
        model.save_pretrained(path / "config.json")


# ------------------------------------------------------------------- transformers' loading keywords
def test_transformers_loading_keywords_work_and_stay_out_of_the_config(tmp_path):
    """torch_dtype (dtype's old name), device_map and the Hub's keywords, as a transformers user passes
    them: the dtype and device are honoured, the rest dropped, and config.json stays clean."""
    original = _hf_model("RemBertForSequenceClassification")
    original.save_pretrained(tmp_path / "hf")
    model = _ours("RemBertForSequenceClassification").from_pretrained(
        tmp_path / "hf", torch_dtype=torch.float16, device_map="auto", local_files_only=True, revision="main",
        cache_dir=str(tmp_path / "cache"), low_cpu_mem_usage=True, attn_implementation="eager",
        trust_remote_code=False)
    assert model.dtype == torch.float16 and model.device == torch.device("cpu")  # no GPU here
    model.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["dtype"] == "float16"
    for name in ("torch_dtype", "device_map", "local_files_only", "revision", "cache_dir",
                 "low_cpu_mem_usage", "attn_implementation", "trust_remote_code"):
        assert name not in saved and name not in vars(model.config), name
    with pytest.raises(ValueError, match="dtype=torch.float32 and torch_dtype=torch.float16 disagree"):
        _ours("RemBertModel").from_pretrained(tmp_path / "hf", dtype=torch.float32, torch_dtype=torch.float16)
    same = _ours("RemBertModel").from_pretrained(tmp_path / "hf", dtype="float16", torch_dtype=torch.float16,
                                                 device="cpu:0", device_map="cpu")  # one thing, two names
    assert same.dtype == torch.float16 and same.device == torch.device("cpu")
    with pytest.raises(ValueError, match="spreads the model over several devices"):
        _ours("RemBertModel").from_pretrained(tmp_path / "hf", device_map={"embeddings": 0, "encoder": "cpu"})


def test_config_object_and_loading_info_as_in_transformers(tmp_path):
    """config= replaces config.json (ours or transformers' class); output_loading_info returns the same
    keys as transformers, listing the head a base checkpoint lacks."""
    _hf_model("RemBertModel").save_pretrained(tmp_path)
    hf_config = transformers.RemBertConfig.from_pretrained(tmp_path, num_labels=2,
                                                           id2label={0: "neg", 1: "pos"},
                                                           problem_type="multi_label_classification")
    for config in (hf_config, rembert_fast.RemBertConfig.from_dict(hf_config.to_dict())):
        model, info = _ours("RemBertForSequenceClassification").from_pretrained(
            tmp_path, config=config, output_loading_info=True)
        assert model.config.id2label == {0: "neg", 1: "pos"} and model.num_labels == 2
        assert model.config.problem_type == "multi_label_classification"
        _, hf_info = transformers.RemBertForSequenceClassification.from_pretrained(
            tmp_path, config=hf_config, output_loading_info=True)
        assert set(info) >= {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
        assert sorted(info["missing_keys"]) == sorted(hf_info["missing_keys"])
        model.save_pretrained(tmp_path / "again")  # the config object is not stored inside the config
    with pytest.raises(ValueError, match="config must be a RemBertConfig, got dict"):
        _ours("RemBertModel").from_pretrained(tmp_path, config={"hidden_size": 48})


def test_ignore_mismatched_sizes_renews_a_head_of_another_size(tmp_path):
    """A 3-label classifier loaded as a 5-label one: refused by default; with ignore_mismatched_sizes the
    classifier is initialised anew (listed in mismatched_keys and newly_initialized_keys) and every other
    weight is the checkpoint's, as transformers does."""
    original = _hf_model("RemBertForSequenceClassification")
    original.save_pretrained(tmp_path)
    cls = _ours("RemBertForSequenceClassification")
    refused = r"'classifier\.(weight|bias)' has shape \(3,( 48)?\) in the checkpoint but \(5"
    with pytest.raises(ValueError, match=refused):
        cls.from_pretrained(tmp_path, num_labels=5)
    model, info = cls.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True,
                                      output_loading_info=True)
    _, hf_info = transformers.RemBertForSequenceClassification.from_pretrained(
        tmp_path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    assert sorted(key for key, *_ in info["mismatched_keys"]) == ["classifier.bias", "classifier.weight"]
    assert sorted(info["mismatched_keys"]) == sorted(hf_info["mismatched_keys"])
    assert sorted(info["missing_keys"]) == sorted(hf_info["missing_keys"]) == []  # renewed, not missing
    assert sorted(model.newly_initialized_keys) == ["classifier.bias", "classifier.weight"]
    assert model.classifier.weight.shape == (5, 48) and torch.isfinite(model.classifier.weight).all()
    state = model.state_dict()
    for key, tensor in original.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(state[key], tensor), key
