"""RemBertConfig against transformers' RemBertConfig: defaults, config.json both ways, labels, bad values."""

import json

import pytest
import transformers

from rembert_fast.configuration import _DEFAULTS, RemBertConfig

# A config far from the defaults in every field the model and heads read.
CUSTOM = {
    "vocab_size": 101,
    "hidden_size": 60,
    "num_hidden_layers": 3,
    "num_attention_heads": 5,
    "input_embedding_size": 20,
    "output_embedding_size": 28,
    "intermediate_size": 72,
    "hidden_act": "gelu_new",
    "hidden_dropout_prob": 0.15,
    "attention_probs_dropout_prob": 0.05,
    "classifier_dropout_prob": 0.3,
    "max_position_embeddings": 128,
    "type_vocab_size": 3,
    "initializer_range": 0.03,
    "layer_norm_eps": 1e-7,
    "use_cache": False,
    "pad_token_id": 3,
    "bos_token_id": 4,
    "eos_token_id": 5,
    "is_decoder": True,
    "add_cross_attention": True,
    "problem_type": "multi_label_classification",
    "id2label": {0: "neg", 1: "neutral", 2: "pos"},
}


def _fields(config) -> dict:
    """The fields both libraries define, as Python values (labels with int ids)."""
    out = {key: getattr(config, key) for key in _DEFAULTS}
    out["num_labels"] = config.num_labels
    out["id2label"] = dict(config.id2label)
    out["label2id"] = dict(config.label2id or {v: k for k, v in config.id2label.items()})
    return out


def test_defaults_equal_transformers():
    ours, theirs = RemBertConfig(), transformers.RemBertConfig()
    assert _fields(ours) == _fields(theirs)
    assert ours.head_dim == 64


def test_transformers_config_loads_here(tmp_path):
    transformers.RemBertConfig(**CUSTOM).save_pretrained(tmp_path)
    ours = RemBertConfig.from_pretrained(tmp_path)
    theirs = transformers.RemBertConfig.from_pretrained(tmp_path)
    assert _fields(ours) == _fields(theirs)
    assert _fields(ours)["id2label"] == CUSTOM["id2label"]
    assert ours.label2id == {"neg": 0, "neutral": 1, "pos": 2}


def test_our_config_loads_in_transformers(tmp_path):
    ours = RemBertConfig(**CUSTOM)
    ours.save_pretrained(tmp_path)
    theirs = transformers.RemBertConfig.from_pretrained(tmp_path)
    assert _fields(theirs) == _fields(ours)
    assert theirs.num_labels == 3 and theirs.problem_type == "multi_label_classification"


def test_unknown_keys_survive_a_round_trip(tmp_path):
    saved = {**RemBertConfig().to_dict(), "my_extra": {"a": [1, 2]}, "architectures": ["RemBertForMaskedLM"],
             "dtype": "bfloat16", "transformers_version": "5.24.0"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = RemBertConfig.from_pretrained(tmp_path)
    assert config.my_extra == {"a": [1, 2]}
    config.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == saved


def test_overrides_and_json_file_path(tmp_path):
    RemBertConfig(**CUSTOM).save_pretrained(tmp_path)
    config = RemBertConfig.from_pretrained(
        tmp_path / "config.json", hidden_dropout_prob=0.0, is_decoder=False, add_cross_attention=False
    )
    assert (config.hidden_dropout_prob, config.is_decoder, config.vocab_size) == (0.0, False, 101)


def test_num_labels_and_label_maps(tmp_path):
    config = RemBertConfig(num_labels=5)
    assert config.num_labels == 5
    assert config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert config.label2id == {f"LABEL_{i}": i for i in range(5)}
    config.num_labels = 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    # JSON keys are strings; ids come back as ints.
    assert RemBertConfig(id2label={"0": "x", "1": "y"}).id2label == {0: "x", 1: "y"}
    # A num_labels override replaces saved label names, as transformers does (a new head).
    RemBertConfig(**CUSTOM).save_pretrained(tmp_path)
    ours = RemBertConfig.from_pretrained(tmp_path, num_labels=4)
    theirs = transformers.RemBertConfig.from_pretrained(tmp_path, num_labels=4)
    assert ours.id2label == theirs.id2label == {i: f"LABEL_{i}" for i in range(4)}
    assert ours.label2id == theirs.label2id


@pytest.mark.parametrize("problem_type", ["regression", "single_label_classification",
                                          "multi_label_classification", None])
def test_problem_types(problem_type):
    assert RemBertConfig(problem_type=problem_type).problem_type == problem_type


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_attention_heads": 0}, "num_attention_heads=0"),
        ({"vocab_size": -1}, "vocab_size=-1"),
        ({"hidden_size": "48"}, "hidden_size='48'"),
        ({"problem_type": "ranking"}, "problem_type='ranking'"),
        ({"problem_type": "single_label_classification", "num_labels": 1}, "num_labels >= 2, got 1"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"num_labels": 3, "id2label": {0: "a", 1: "b"}}, "num_labels=3"),
        ({"label2id": ["a"]}, "label2id must be a JSON object"),
    ],
)
def test_bad_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        RemBertConfig(**kwargs)


def test_bad_files_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        RemBertConfig.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no config.json"):
        RemBertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        RemBertConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'"):
        RemBertConfig.from_pretrained(tmp_path)


def test_a_torch_dtype_field_is_written_by_name(tmp_path):
    """RemBertConfig(dtype=torch.float16) serialises as "float16" and reads back as torch.float16, as in
    transformers; `dtype` wins over the old name `torch_dtype`."""
    import torch

    config = RemBertConfig(dtype=torch.float16, torch_dtype=torch.bfloat16)
    assert json.loads(config.to_json_string())["dtype"] == "float16"
    config.save_pretrained(tmp_path)
    again = RemBertConfig.from_pretrained(tmp_path)
    assert again.dtype is torch.float16


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_labels": 2_000_000_000}, "num_labels=2000000000 is larger"),
        ({"vocab_size": 1 << 30}, "vocab_size=1073741824 is larger"),
        ({"num_hidden_layers": 100_000}, "num_hidden_layers=100000 is larger"),
        ({"intermediate_size": 1 << 40}, "intermediate_size=1099511627776 is larger"),
        ({"hidden_size": 1 << 16, "num_attention_heads": 16, "num_hidden_layers": 1000,
          "intermediate_size": 1 << 18}, "weights, more than"),
    ],
)
def test_sizes_no_model_can_have_are_refused_at_once(tmp_path, monkeypatch, fields, message):
    """A config.json with a huge size fails before anything of that size is built (a 2e9-label dict
    took minutes to a MemoryError)."""
    import time

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rembert", **fields}))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        RemBertConfig.from_pretrained(tmp_path)
    assert time.perf_counter() - start < 5
    config = RemBertConfig()
    with pytest.raises(ValueError, match="num_labels=2000000000 is larger"):
        config.num_labels = 2_000_000_000
    assert config.num_labels == 2
    from rembert_fast import configuration

    monkeypatch.setitem(configuration.MAX_SIZES, "num_labels", 4)  # id2label's length is bounded too
    with pytest.raises(ValueError, match="num_labels=5 is larger"):
        RemBertConfig(id2label={i: str(i) for i in range(5)})
