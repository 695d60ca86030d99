"""Bad input to the public surface: a ValueError/TypeError naming the value, never a torch traceback from
deep inside an op, and never a silent wrong answer. Tiny random models on the eager backend."""

from __future__ import annotations

import codecs
import json
import shutil

import numpy as np
import pytest
import torch

import rembert_fast.inference as inference
from rembert_fast import (
    RemBertConfig,
    RemBertForCausalLM,
    RemBertForMaskedLM,
    RemBertForMultipleChoice,
    RemBertForQuestionAnswering,
    RemBertForSequenceClassification,
    RemBertForTokenClassification,
    RemBertModel,
    ops,
)
from rembert_fast.padding import NoRealTokensError

TINY = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, input_embedding_size=8,
            output_embedding_size=12, intermediate_size=20, max_position_embeddings=16)


def tiny(**overrides) -> RemBertConfig:
    return RemBertConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def model() -> RemBertModel:
    torch.manual_seed(0)
    return RemBertModel(tiny()).eval()


def ids(batch: int = 2, seqlen: int = 5) -> torch.Tensor:
    return torch.randint(1, TINY["vocab_size"], (batch, seqlen))


# ----------------------------------------------------------------------------------------- model inputs
@pytest.mark.parametrize("value", [2, 0.5, -1, -10000.0])
def test_mask_values_other_than_0_1_raise_on_both_paths(model, value):
    mask = torch.ones(2, 5)
    mask[1, 3] = value
    for kwargs in ({}, {"output_attentions": True}):  # packed path, classic path
        with pytest.raises(ValueError, match=f"attention_mask contains {value:g}"):
            model(ids(), attention_mask=mask, **kwargs)


def test_bool_and_0_1_masks_of_any_dtype_agree(model):
    x = ids()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ref = model(x, attention_mask=mask.bool()).last_hidden_state
    for dtype in (torch.int32, torch.float32):
        got = model(x, attention_mask=mask.to(dtype)).last_hidden_state
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [[[1, 2, 3]], "numpy"])
def test_non_tensor_ids_raise_type_error(model, bad):
    if bad == "numpy":
        bad = ids().numpy()
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor, got (list|ndarray)"):
        model(bad)


@pytest.mark.parametrize("name", ["attention_mask", "token_type_ids", "position_ids", "input_ids"])
def test_input_on_another_device_raises(model, name):
    kwargs = {"input_ids": ids(), "attention_mask": torch.ones(2, 5, dtype=torch.long),
              "token_type_ids": torch.zeros(2, 5, dtype=torch.long), "position_ids": torch.arange(5)[None]}
    kwargs[name] = kwargs[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} is on meta but the model is on cpu"):
        model(**kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int64])
def test_inputs_embeds_of_another_dtype_raise(model, dtype):
    with pytest.raises(ValueError, match=f"inputs_embeds is {dtype} but the model is torch.float32"):
        model(inputs_embeds=torch.randn(2, 5, 8).to(dtype))


def test_half_model_with_fp32_embeds_names_the_cast():
    half = RemBertModel(tiny()).eval().to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"cast it with .to\(torch.bfloat16\)"):
        half(inputs_embeds=torch.randn(2, 5, 8))


def test_seqlen_zero_raises_and_empty_batch_returns_empty(model):
    with pytest.raises(ValueError, match=r"seqlen 0 \(shape \(2, 0\)\)"):
        model(torch.zeros(2, 0, dtype=torch.long))
    for mask in (None, torch.zeros(0, 5)):
        out = model(torch.zeros(0, 5, dtype=torch.long), attention_mask=mask)
        assert out.last_hidden_state.shape == (0, 5, 16) and out.pooler_output.shape == (0, 16)


@pytest.mark.parametrize("classic", [False, True])
@pytest.mark.parametrize("row", [0, 2])
def test_a_row_without_real_tokens_raises_naming_it(row, classic):
    """One empty row is as much an error as an all-zero mask (the whole batch), on both paths and in
    every head: no score is made up for a sequence that has no token."""
    config = tiny(num_labels=2)
    x = torch.randint(3, 50, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0
    mask[row] = 0
    extra = {"output_attentions": True} if classic else {}
    for model in (RemBertModel(config).eval(), RemBertForSequenceClassification(config).eval(),
                  RemBertForTokenClassification(config).eval()):
        with pytest.raises(NoRealTokensError, match=f"attention_mask row {row} marks no token as real"):
            model(x, attention_mask=mask, **extra)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8])
def test_token_type_and_position_ids_of_wrong_dtype_raise(model, dtype):
    with pytest.raises(ValueError, match=f"token_type_ids must be int64 or int32, got {dtype}"):
        model(ids(), token_type_ids=torch.zeros(2, 5, dtype=dtype))
    with pytest.raises(ValueError, match=f"position_ids must be int64 or int32, got {dtype}"):
        model(ids(), position_ids=torch.arange(5, dtype=dtype)[None])


# ----------------------------------------------------------------------------------------- labels
def heads_and_labels():
    """(head class, config overrides, bad labels, message) for every head."""
    b, seqlen = 2, 5
    long = torch.long
    return [
        (RemBertForSequenceClassification, {}, torch.tensor([0, 5]), "labels contains 5, outside \\[0, 2\\)"),
        # float labels mean multi-label (transformers' rule), which needs one target per label
        (RemBertForSequenceClassification, {}, torch.tensor([0.0, 1.0]),
         "shape \\(2,\\); expected \\(2, 2\\)"),
        (RemBertForSequenceClassification, {"problem_type": "single_label_classification"},
         torch.tensor([0.0, 1.0]), "must be int64 class ids, got torch.float32"),
        (RemBertForSequenceClassification, {}, torch.tensor([0, 1, 1]), "shape \\(3,\\); expected \\(2,\\)"),
        (RemBertForSequenceClassification, {"num_labels": 3, "problem_type": "regression"},
         torch.zeros(b), "shape \\(2,\\); expected \\(2, 3\\)"),
        (RemBertForSequenceClassification, {"num_labels": 3, "problem_type": "multi_label_classification"},
         torch.zeros(b), "shape \\(2,\\); expected \\(2, 3\\)"),
        (RemBertForTokenClassification, {}, torch.full((b, seqlen), 7), "labels contains 7"),
        (RemBertForTokenClassification, {}, torch.zeros(b, seqlen - 1, dtype=long), "expected \\(2, 5\\)"),
        (RemBertForMaskedLM, {}, torch.full((b, seqlen), 50), "labels contains 50, outside \\[0, 50\\)"),
        (RemBertForMaskedLM, {}, torch.zeros(b, seqlen), "must be int64 class ids, got torch.float32"),
        (RemBertForCausalLM, {"is_decoder": True}, torch.full((b, seqlen), -3), "labels contains -3"),
        (RemBertForCausalLM, {"is_decoder": True}, torch.zeros(b, 4, dtype=long), "expected \\(2, 5\\)"),
        # int32 class ids: cross_entropy would fail with a RuntimeError deep inside (transformers does)
        (RemBertForSequenceClassification, {}, torch.tensor([0, 1], dtype=torch.int32),
         "must be int64 class ids, got torch.int32 \\(use .long\\(\\)\\)"),
        (RemBertForTokenClassification, {}, torch.zeros(b, seqlen, dtype=torch.int32), "got torch.int32"),
        (RemBertForMaskedLM, {}, torch.zeros(b, seqlen, dtype=torch.int32), "got torch.int32"),
        (RemBertForCausalLM, {"is_decoder": True}, torch.zeros(b, seqlen, dtype=torch.int32),
         "got torch.int32"),
    ]


@pytest.mark.parametrize("cls, overrides, labels, message", heads_and_labels())
@pytest.mark.parametrize("return_dict", [True, False])
def test_bad_labels_raise_for_every_head(cls, overrides, labels, message, return_dict):
    head = cls(tiny(**overrides)).eval()
    with pytest.raises(ValueError, match=message):
        head(ids(), labels=labels, return_dict=return_dict)


def test_ignored_labels_stay_allowed_and_multi_label_accepts_int_targets():
    head = RemBertForTokenClassification(tiny()).eval()
    labels = torch.tensor([[0, 1, -100, -100, 1], [-100, 0, 0, 1, 1]])
    loss = head(ids(), labels=labels).loss
    assert torch.isfinite(loss)
    multi_config = tiny(num_labels=3, problem_type="multi_label_classification")
    multi = RemBertForSequenceClassification(multi_config).eval()
    x, targets = ids(), torch.tensor([[1, 0, 1], [0, 0, 1]])
    out = multi(x, labels=targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets.float())
    torch.testing.assert_close(out.loss, expected)


def test_masked_positions_with_labels_of_wrong_shape_raise():
    mlm = RemBertForMaskedLM(tiny()).eval()
    with pytest.raises(ValueError, match=r"labels has shape \(3,\); expected \(2, 5\)"):
        mlm(ids(), masked_positions=torch.tensor([[0, 1]]), labels=torch.zeros(3, dtype=torch.long))


def test_multiple_choice_labels_and_input_ranks():
    mc = RemBertForMultipleChoice(tiny()).eval()
    x = torch.randint(1, 50, (2, 3, 5))
    with pytest.raises(ValueError, match=r"labels contains 3, outside \[0, 3\)"):
        mc(x, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels must be int64 class ids, got torch.int32"):
        mc(x, labels=torch.tensor([0, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\); multiple-choice"):
        mc(x, attention_mask=torch.ones(2, 5))
    flat = mc(x, attention_mask=torch.ones(6, 5)).logits  # transformers' flattened form stays accepted
    torch.testing.assert_close(flat, mc(x, attention_mask=torch.ones(2, 3, 5)).logits)


def test_question_answering_positions_and_num_labels():
    qa = RemBertForQuestionAnswering(tiny()).eval()
    with pytest.raises(ValueError, match="start_positions must be int64 token positions, got torch.float32"):
        qa(ids(), start_positions=torch.tensor([1.0, 2.0]), end_positions=torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="end_positions must be int64 token positions, got torch.int32"):
        qa(ids(), start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([2, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"end_positions has shape \(3,\); expected \(2,\)"):
        qa(ids(), start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([2, 3, 4]))
    with pytest.raises(ValueError, match="needs num_labels=2 .* got 3"):
        RemBertForQuestionAnswering(tiny(num_labels=3))
    with pytest.raises(ValueError, match="needs num_labels >= 1, got 0"):
        RemBertForTokenClassification(tiny(num_labels=0))


# ----------------------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda k: ((k,),), r"past_key_values\[0\] must be a tuple of 2 tensors .* tuple of length 1"),
        (lambda k: ((k, k[:, :, :4]),), r"past_key_values\[0\]\[1\] has shape \(2, 2, 4, 8\)"),
        (lambda k: ((k[..., :7], k[..., :7]),), r"past_key_values\[0\]\[0\] has shape \(2, 2, 5, 7\)"),
        (lambda k: ((k, "v"),), r"past_key_values\[0\]\[1\] must be a torch.Tensor, got str"),
    ],
)
def test_malformed_cache_raises_naming_the_layer(make, message):
    dec = RemBertForCausalLM(tiny(is_decoder=True)).eval()
    key = torch.randn(2, 2, 5, 8)
    with pytest.raises((ValueError, TypeError), match=message):
        dec(ids(2, 1), past_key_values=make(key))


# ----------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    RemBertModel(tiny()).save_pretrained(path)
    return path


def test_from_pretrained_on_a_file_names_the_directory(saved):
    with pytest.raises(ValueError, match="is a file; pass the model directory"):
        RemBertModel.from_pretrained(saved / "model.safetensors")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "must hold a JSON object, got list"),
        ('{"model_type": "rembert", "id2label": ["a", "b"]}', "id2label must be a JSON object"),
        ('{"model_type": "rembert", "id2label": {"x": "a"}}', r"id2label keys must be label indices"),
        ('{"model_type": "rembert", "layer_norm_eps": "x"}', "layer_norm_eps='x' must be a positive number"),
        ('{"model_type": "rembert", "is_decoder": "false"}', "is_decoder='false' must be true or false"),
        ('{"model_type": "rembert", "hidden_dropout_prob": 2}', r"hidden_dropout_prob=2 must be a number in"),
        ('{"model_type": "rembert", "vocab_size": 50, "pad_token_id": 99}', r"pad_token_id=99 must be None"),
    ],
)
def test_bad_config_json_raises_naming_the_field(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        RemBertConfig.from_pretrained(tmp_path)


def test_binary_config_raises_value_error(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\xa0\xff\x00")
    with pytest.raises(ValueError, match="as JSON"):
        RemBertConfig.from_pretrained(tmp_path)


def test_integer_tensors_in_safetensors_raise_naming_the_key(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    state = {k: (v * 100).to(torch.int32) for k, v in load_file(bad / "model.safetensors").items()}
    save_file(state, bad / "model.safetensors")
    with pytest.raises(ValueError, match=r"'embeddings\..*' is torch.int32 in the checkpoint"):
        RemBertModel.from_pretrained(bad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, "float64", "fp16"])
def test_unsupported_dtypes_raise(saved, dtype):
    with pytest.raises(ValueError, match=f"dtype={dtype!r} is not"):
        RemBertModel.from_pretrained(saved, dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "meta"])
def test_unusable_device_raises_value_error(saved, device):
    with pytest.raises(ValueError, match=f"device='{device}'"):
        RemBertModel.from_pretrained(saved, device=device)


# ----------------------------------------------------------------------------------------- batch input
def test_input_lines_drop_a_leading_bom_and_keep_every_line():
    import io

    raw = codecs.BOM_UTF8 + b"first\r\nsecond \xef\xbb\xbf kept\n\xff\xfe bad\nlast without newline"
    lines = list(inference.iter_lines(io.BytesIO(raw)))
    assert lines[:2] == ["first", "second \ufeff kept"]  # only the stream's opening mark is dropped
    assert isinstance(lines[2], inference.LineError) and "not valid UTF-8" in lines[2].message
    assert lines[3] == "last without newline" and len(lines) == 4


@pytest.mark.parametrize("device", ["gpu", "gpu:0"], ids=["word", "indexed"])  # id "gpu" would skip
def test_engine_device_names_raise_value_error(device):
    with pytest.raises(ValueError, match=f"device {device!r} is not a device name"):
        inference.resolve_device(device)


# ----------------------------------------------------------------------------------------- ops
BACKENDS = ["eager", "triton"]  # triton runs under the interpreter on CPU (conftest)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_and_bias_act_reject_mixed_dtypes_alike_on_every_backend(backend):
    x, w, b = torch.randn(4, 32), torch.randn(32), torch.randn(32)
    with ops.use_backend(backend):
        with pytest.raises(ValueError, match="residual has dtype torch.float16; expected torch.float32"):
            ops.layer_norm(x, w, b, 1e-5, residual=x.half())
        with pytest.raises(ValueError, match="x_bias has dtype torch.bfloat16"):
            ops.layer_norm(x, w, b, 1e-5, x_bias=b.bfloat16())
        with pytest.raises(ValueError, match="weight has dtype torch.int64; expected torch.float32$"):
            ops.layer_norm(x, w.long(), b, 1e-5)
        with pytest.raises(ValueError, match="x is a 0-d tensor"):
            ops.layer_norm(torch.tensor(1.0), w[:1], b[:1], 1e-5)
        with pytest.raises(ValueError, match="bias has dtype torch.float16"):
            ops.bias_act(x, b.half())
        half = x.half()  # a float32 LayerNorm weight with half x stays allowed (the kernel reads it)
        torch.testing.assert_close(ops.layer_norm(half, w, b, 1e-5).float(),
                                   ops.layer_norm_ref(x, w, b, 1e-5), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "offsets, max_seqlen, message",
    [
        ([1, 2, 6], 4, r"must start at 0 \(got 1\)"),
        ([0, 2, 5], 4, r"end at 6 \(got 5\)"),
        ([0, 2, 9], 7, r"end at 6 \(got 9\)"),
        ([0, 4, 2, 6], 4, r"smallest step -2"),
        ([0, 2, 6], 2, r"largest 4"),
    ],
)
def test_attention_rejects_bad_offsets_instead_of_reading_out_of_range(backend, offsets, max_seqlen, message):
    q = torch.randn(6, 2, 16)
    cu = torch.tensor(offsets, dtype=torch.int32)
    with ops.use_backend(backend), pytest.raises(ValueError, match=message):
        ops.attention(q, q, q, cu, cu, max_seqlen, max_seqlen)


def test_attention_rejects_float_offsets_and_accepts_int64():
    q = torch.randn(6, 2, 16)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_q is torch.float32 on cpu; expected int32"):
        ops.attention(q, q, q, cu.float(), cu.float(), 4, 4)
    torch.testing.assert_close(ops.attention(q, q, q, cu.long(), cu.long(), 4, 4),
                               ops.attention_ref(q, q, q, cu, cu, 4, 4))


def test_embed_checks_table_shapes_and_dtypes():
    ids = torch.tensor([1, 2, 3])
    pos, types = torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long)
    word, position, type_table = torch.randn(10, 8), torch.randn(4, 8), torch.randn(2, 8)
    ln_w, ln_b = torch.ones(8), torch.zeros(8)
    with pytest.raises(ValueError, match=r"ln_weight has shape \(4,\); expected \(8,\)"):
        ops.embed(ids, pos, types, word, position, type_table, ln_w[:4], ln_b, 1e-5)
    with pytest.raises(ValueError, match=r"proj_weight has shape \(5, 7\); expected \(5, 8\)"):
        ops.embed(ids, pos, types, word, position, type_table, ln_w, ln_b, 1e-5, torch.randn(5, 7), None)
    with pytest.raises(ValueError, match="position_weight has dtype torch.float16"):
        ops.embed(ids, pos, types, word, position.half(), type_table, ln_w, ln_b, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_attention_checks_its_inputs_on_every_backend(backend):
    """What the kernel refuses, the eager path (CPU's default, and CUDA's for other head_dims) refuses
    too: no silent broadcast of k/v, no v of another head_dim, no mask on another device."""
    q = torch.randn(2, 5, 2, 16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with ops.use_backend(backend):
        with pytest.raises(ValueError, match="shapes disagree"):
            ops.attention_padded(q, q[:1], q[:1])
        with pytest.raises(ValueError, match="shapes disagree"):
            ops.attention_padded(q, q, torch.randn(2, 5, 2, 32))
        with pytest.raises(ValueError, match="k is torch.float16 on cpu; q is torch.float32 on cpu"):
            ops.attention_padded(q, q.half(), q)
        with pytest.raises(ValueError, match="key_padding_mask is on meta; q is on cpu"):
            ops.attention_padded(q, q, q, mask.to("meta"))
        with pytest.raises(ValueError, match=r"must be \(batch, seqlen, heads, head_dim\)"):
            ops.attention_padded(q[0], q[0], q[0])
        torch.testing.assert_close(ops.attention_padded(q, q, q, mask), ops.attention_padded_ref(q, q, q),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_alike_on_every_backend(backend):
    """A numpy scalar or 0-d tensor eps works (as a float) on every backend; a negative or non-finite eps
    is refused, where it would give NaN."""
    x, w, b = torch.randn(3, 8), torch.randn(8), torch.randn(8)
    want = ops.layer_norm_ref(x, w, b, 1e-5)
    with ops.use_backend(backend):
        for eps in (np.float32(1e-5), torch.tensor(1e-5), 1e-5):
            torch.testing.assert_close(ops.layer_norm(x, w, b, eps), want, rtol=1e-5, atol=1e-5)
        for eps in (-1.0, float("nan"), float("inf"), "small"):
            with pytest.raises(ValueError, match="eps must be a"):
                ops.layer_norm(x, w, b, eps)


def test_embed_checks_devices_eps_and_a_lone_projection_bias():
    ids = torch.tensor([1, 2, 3])
    pos, types = torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long)
    tables = [torch.randn(10, 8), torch.randn(4, 8), torch.randn(2, 8), torch.ones(8), torch.zeros(8)]
    with pytest.raises(ValueError, match="input_ids is on cpu but word_weight is on meta"):
        ops.embed(ids, pos, types, *[t.to("meta") for t in tables], 1e-5)
    with pytest.raises(ValueError, match="position_ids is on meta but word_weight is on cpu"):
        ops.embed(ids, pos.to("meta"), types, *tables, 1e-5)
    with pytest.raises(ValueError, match="proj_bias was given without proj_weight"):
        ops.embed(ids, pos, types, *tables, 1e-5, None, torch.randn(12))
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -1.0"):
        ops.embed(ids, pos, types, *tables, -1.0)


def test_resume_refuses_the_output_of_another_command(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"line": 1, "embedding": [0.5, 1.0]}\n{"line": 2, "error": "line is not valid UTF-8"}\n')
    with pytest.raises(inference.ResumeError, match=r"fields \['line', 'embedding'\], not 'label'"):
        inference.JsonlWriter(out, resume=True, result_key="label")
    writer = inference.JsonlWriter(out, resume=True, result_key="embedding")  # its own output continues
    assert writer.done_through == 2 and writer.prior_errors == 1
    writer.close()


@pytest.mark.parametrize("task, model_dir", [("fill-mask", "cls"), ("classify", "mlm")])
def test_engine_refuses_a_checkpoint_without_the_task_head(task, model_dir):
    from batch_fixtures import tiny_model_dirs

    with pytest.raises(ValueError, match=f"has no trained weights for {task}: .* are not in the checkpoint"):
        inference.InferenceEngine(tiny_model_dirs()[model_dir], task, device="cpu")


@pytest.mark.parametrize(
    "states, message",
    [
        (torch.randn(2, 3, 15), r"has shape \(2, 3, 15\); expected \(2, encoder_seqlen, 16\)"),
        (torch.randn(3, 16), r"encoder_hidden_states has shape \(3, 16\)"),
        (torch.randn(2, 3, 16).double(), "encoder_hidden_states is torch.float64 on cpu; the model runs"),
    ],
)
def test_cross_attention_inputs_are_checked(states, message):
    dec = RemBertForCausalLM(tiny(is_decoder=True, add_cross_attention=True)).eval()
    with pytest.raises(ValueError, match=message):
        dec(ids(), encoder_hidden_states=states)
    with pytest.raises(ValueError, match="encoder_attention_mask contains 2"):
        dec(ids(), encoder_hidden_states=torch.randn(2, 3, 16), encoder_attention_mask=torch.full((2, 3), 2))


def test_other_classic_path_arguments_are_checked(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3, 5, 5\)"):
        model(ids(), attention_mask=torch.ones(2, 3, 5, 5, dtype=torch.bool))  # 3 heads, the model has 2
    with pytest.raises(ValueError, match="head_mask must be a tensor on cpu, got meta"):
        model(ids(), head_mask=torch.ones(2, device="meta"))
    with pytest.raises(TypeError, match="masked_positions must be a torch.Tensor, got list"):
        RemBertForMaskedLM(tiny()).eval()(ids(), masked_positions=[[0, 1]])


def test_pad_and_unpad_check_their_indices_and_devices():
    from rembert_fast import padding

    with pytest.raises(ValueError, match=r"indices contains 9, outside \[0, 6\)"):
        padding.pad_input(torch.randn(2, 4), torch.tensor([0, 9]), 2, 3)
    with pytest.raises(ValueError, match="indices is torch.int32 on cpu; expected int64"):
        padding.pad_input(torch.randn(2, 4), torch.tensor([0, 1], dtype=torch.int32), 2, 3)
    with pytest.raises(ValueError, match="attention_mask is on meta but hidden_states is on cpu"):
        padding.unpad_input(torch.randn(2, 3, 4), torch.ones(2, 3, device="meta"))


@pytest.mark.parametrize(
    "weight_map, message",
    [([1], "is not a mapping of names to shard file names"),
     ({"embeddings.LayerNorm.bias": "../x.safetensors"}, "names '../x.safetensors', which is not a file")],
)
def test_shard_index_must_name_files_beside_it(saved, tmp_path, weight_map, message):
    sharded = tmp_path / "sharded"
    shutil.copytree(saved, sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00001.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=message):
        RemBertModel.from_pretrained(sharded)
