"""`rembert_fast.optimize` on transformers models: forwards swapped, ops called, outputs equal.

Every comparison is against the same transformers model before patching, with fresh random weights
and inputs, on real (non-padding) positions: the patched path zeros padding positions and pools each
sequence's first real token, both documented.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

import rembert_fast
from rembert_fast import ops, patching

transformers = pytest.importorskip("transformers")
hf_pairs = pytest.importorskip("hf_pairs")  # tests/hf_pairs.py: randomize every parameter

HEADS = ("RemBertModel", "RemBertForSequenceClassification", "RemBertForMaskedLM",
         "RemBertForTokenClassification", "RemBertForQuestionAnswering", "RemBertForMultipleChoice")
SPIED = ("embed", "attention", "attention_padded", "layer_norm", "bias_act", "linear_bias_act",
         "linear_residual_layer_norm")
TOL = 1e-5


def tiny_config(**overrides):
    # hidden 64 / 4 heads: head_dim 16, a size the Triton attention kernel takes.
    values = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  input_embedding_size=32, output_embedding_size=48, intermediate_size=128,
                  max_position_embeddings=64, num_labels=3, bos_token_id=1, eos_token_id=2)
    values.update(overrides)
    return transformers.RemBertConfig(**values)


def make_mask(kind: str, batch: int = 3, seqlen: int = 12) -> torch.Tensor:
    lengths = torch.randint(seqlen // 2, seqlen, (batch,))
    lengths[0] = seqlen  # one full row: the batch is still ragged, not a plain (B, L) batch
    cols = torch.arange(seqlen)[None, :]
    if kind == "right":
        return (cols < lengths[:, None]).long()
    if kind == "left":
        return (cols >= (seqlen - lengths)[:, None]).long()
    mask = torch.ones(batch, seqlen, dtype=torch.long)  # "holes": padding inside the rows too
    mask[1:, 2:4] = 0
    mask[2, -3:] = 0
    return mask


def build(head: str, **overrides):
    """A transformers model with random values in every parameter (biases and LayerNorms included)."""
    if head == "RemBertForQuestionAnswering":
        overrides.setdefault("num_labels", 2)  # start and end logits
    model = getattr(transformers, head)(tiny_config(**overrides)).eval()
    hf_pairs.randomize(model, seed=int(torch.randint(0, 2**31 - 1, ())))
    return model


def inputs_for(head: str, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 101, mask.shape) * mask  # padding holds the pad id, as a tokenizer writes it
    types = torch.randint(0, 2, mask.shape)
    if head == "RemBertForMultipleChoice":  # (batch, choices, seqlen)
        return {"input_ids": ids.view(1, *mask.shape), "attention_mask": mask.view(1, *mask.shape),
                "token_type_ids": types.view(1, *mask.shape)}
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def compare(head: str, got, ref, mask: torch.Tensor) -> None:
    """Assert every output of `head` agrees on what is specified (real positions, real first tokens)."""
    real = mask.bool()
    first_real = real[:, 0]  # where transformers' pooler reads a real token

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= TOL, (a - b).abs().max().item()

    if head == "RemBertModel":
        close(got.last_hidden_state[real], ref.last_hidden_state[real])
        close(got.pooler_output[first_real], ref.pooler_output[first_real])
    elif head == "RemBertForSequenceClassification":
        close(got.logits[first_real], ref.logits[first_real])
    elif head == "RemBertForMultipleChoice":
        close(got.logits[0][first_real], ref.logits[0][first_real])  # one question, a choice per row
    elif head == "RemBertForQuestionAnswering":
        close(got.start_logits[real], ref.start_logits[real])
        close(got.end_logits[real], ref.end_logits[real])
    else:
        close(got.logits[real], ref.logits[real])


@pytest.fixture
def spies(monkeypatch):
    """Count the calls of each op of `rembert_fast.ops` (still running the real op)."""
    counts = dict.fromkeys(SPIED, 0)

    def spy(name):
        real = getattr(ops, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return wrapper

    for name in SPIED:
        monkeypatch.setattr(ops, name, spy(name))
    return counts


# ----------------------------------------------------------------------------------------- swapping
def test_forward_swapped_on_instance_only_and_marked():
    model = build("RemBertForMaskedLM")
    other = build("RemBertForMaskedLM")
    assert rembert_fast.optimize(model) is model
    assert model.rembert.forward.__func__ is patching._fast_forward
    assert model.cls.predictions.forward.__func__ is patching._lm_head_forward
    assert type(model.rembert).forward is transformers.RemBertModel.forward  # the class is untouched
    assert "forward" not in other.rembert.__dict__
    text = repr(model)
    assert patching._MARK in text and patching._HEAD_MARK in text
    assert patching._MARK not in repr(other)
    assert patching.is_optimized(model) and not patching.is_optimized(other)


def test_optimized_model_pickles_and_shows_the_original_signature(tmp_path, spies):
    """torch.save of the whole model (pickle) and deepcopy keep it optimized and answering the same;
    inspect.signature(model.forward) is transformers' (Trainer keeps dataset columns by it)."""
    model = rembert_fast.optimize(build("RemBertForMaskedLM"))
    inputs = inputs_for("RemBertForMaskedLM", make_mask("right"))
    with torch.no_grad():
        want = model(**inputs).logits
    torch.save(model, tmp_path / "model.pt")
    for again in (torch.load(tmp_path / "model.pt", weights_only=False), copy.deepcopy(model)):
        assert patching.is_optimized(again) and again.rembert.forward.__self__ is again.rembert
        assert patching._MARK in repr(again)
        before = dict(spies)
        with torch.no_grad():
            assert torch.equal(again(**inputs).logits, want)
        assert spies["layer_norm"] > before["layer_norm"]  # the packed path ran
    original = inspect.signature(transformers.RemBertModel.forward)
    assert list(inspect.signature(model.rembert.forward).parameters) == list(original.parameters)[1:]


def test_ops_called_once_per_layer(spies):
    model = rembert_fast.optimize(build("RemBertForMaskedLM"))
    layers = model.config.num_hidden_layers
    with torch.no_grad():
        model(**inputs_for("RemBertForMaskedLM", make_mask("right")))
    # embed once; per layer one varlen attention, two GEMM+LayerNorms, one GEMM+GELU; the LM head one
    # GEMM+GELU and one LayerNorm
    assert spies == {"embed": 1, "attention": layers, "attention_padded": 0, "layer_norm": 1, "bias_act": 0,
                     "linear_bias_act": layers + 1, "linear_residual_layer_norm": 2 * layers}


def test_optimize_is_idempotent(spies):
    model = build("RemBertModel")
    rembert_fast.optimize(model)
    forward = model.forward
    rembert_fast.optimize(model)
    assert model.forward is forward
    assert repr(model).count(patching._MARK) == 1
    with torch.no_grad():
        model(**inputs_for("RemBertModel", make_mask("right")))
    assert spies["embed"] == 1 and spies["attention"] == model.config.num_hidden_layers


def test_cuda_graphs_flag_leaves_cpu_calls_on_the_packed_path(spies):
    model = rembert_fast.optimize(build("RemBertModel"), cuda_graphs=True)
    mask = make_mask("right")
    with torch.no_grad():
        ref = model(**inputs_for("RemBertModel", mask))
    assert model.__dict__["_rembert_fast"] == {"cuda_graphs": True, "runner": None}  # no runner on CPU
    assert spies["attention"] == model.config.num_hidden_layers
    rembert_fast.optimize(model)  # calling again updates the flag
    assert model.__dict__["_rembert_fast"]["cuda_graphs"] is False
    assert ref.last_hidden_state.shape == (*mask.shape, 64)


# ----------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("mask_kind", ["right", "left", "holes"])
@pytest.mark.parametrize("head", HEADS)
def test_outputs_equal_unpatched(head, mask_kind, spies):
    model = build(head)
    mask = make_mask(mask_kind)
    inputs = inputs_for(head, mask)
    with torch.no_grad():
        ref = model(**inputs)
        rembert_fast.optimize(model)
        got = model(**inputs)
    assert spies["attention"] == model.config.num_hidden_layers  # the packed path ran
    compare(head, got, ref, mask)


def test_losses_equal_with_padding_ignored():
    mask = make_mask("right")
    model = build("RemBertForMaskedLM")
    inputs = inputs_for("RemBertForMaskedLM", mask)
    labels = inputs["input_ids"].masked_fill(mask == 0, -100)
    with torch.no_grad():
        ref = model(**inputs, labels=labels).loss
        got = rembert_fast.optimize(model)(**inputs, labels=labels).loss
    assert abs(got.item() - ref.item()) <= TOL


def test_hidden_states_and_tuple_outputs_equal():
    mask = make_mask("holes")
    model = build("RemBertModel")
    inputs = inputs_for("RemBertModel", mask)
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True, return_dict=False)
        got = rembert_fast.optimize(model)(**inputs, output_hidden_states=True, return_dict=False)
    assert len(got) == len(ref) == 3
    real = mask.bool()
    assert len(got[2]) == len(ref[2]) == model.config.num_hidden_layers + 1
    for a, b in zip(got[2], ref[2], strict=True):
        assert (a[real] - b[real]).abs().max().item() <= TOL
    assert (got[0][real] - ref[0][real]).abs().max().item() <= TOL


def test_inputs_embeds_and_position_ids_equal():
    mask = make_mask("left")
    model = build("RemBertModel")
    embeds = torch.randn(*mask.shape, 32)
    positions = torch.randint(0, 64, mask.shape)
    with torch.no_grad():
        ref = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        got = rembert_fast.optimize(model)(inputs_embeds=embeds, attention_mask=mask,
                                           position_ids=positions).last_hidden_state
    real = mask.bool()
    assert (got[real] - ref[real]).abs().max().item() <= TOL


# ----------------------------------------------------------------------------------------- fallbacks
def test_output_attentions_runs_the_original_forward(spies):
    mask = make_mask("right")
    model = build("RemBertModel")
    inputs = inputs_for("RemBertModel", mask)
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
        got = rembert_fast.optimize(model)(**inputs, output_attentions=True)
    assert spies["attention"] == 0 and spies["embed"] == 0
    assert len(got.attentions) == model.config.num_hidden_layers
    for a, b in zip(got.attentions, ref.attentions, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(got.last_hidden_state, ref.last_hidden_state)


def test_cache_and_attention_dropout_training_run_the_original_forward(spies):
    decoder = rembert_fast.optimize(build("RemBertForCausalLM", is_decoder=True))  # use_cache: config's True
    dropout = rembert_fast.optimize(build("RemBertModel", attention_probs_dropout_prob=0.1)).train()
    inputs = inputs_for("RemBertModel", make_mask("right"))
    with torch.no_grad():
        assert decoder(**inputs).past_key_values is not None
        dropout(**inputs)
    assert spies["attention"] == 0 and spies["embed"] == 0


@pytest.mark.parametrize("kind", ["right", "left", "holes"])
def test_decoder_without_a_cache_takes_the_packed_path_and_matches(spies, kind):
    """Causal varlen attention over each sequence's real tokens is transformers' causal mask combined
    with the padding mask, on real positions."""
    mask = make_mask(kind)
    model = build("RemBertForCausalLM", is_decoder=True)
    inputs = inputs_for("RemBertForCausalLM", mask)
    with torch.no_grad():
        ref = model(**inputs, use_cache=False)
        got = rembert_fast.optimize(model)(**inputs, use_cache=False)
    assert spies["attention"] + spies["attention_padded"] == model.config.num_hidden_layers
    compare("RemBertForCausalLM", got, ref, mask)


def test_hidden_dropout_training_takes_the_packed_path(spies):
    model = rembert_fast.optimize(build("RemBertModel", hidden_dropout_prob=0.1)).train()
    mask = make_mask("right")
    out = model(**inputs_for("RemBertModel", mask)).last_hidden_state
    assert spies["embed"] == 1 and spies["attention"] == model.config.num_hidden_layers
    out[mask.bool()].sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


# The settings a call can take, and whether each needs the classic path (same for both models).
PATH_CASES = {
    "2-D mask": ({}, {}, True),
    "4-D mask": ({}, {"mask_4d": True}, False),
    "output_attentions": ({}, {"output_attentions": True}, False),
    "config output_attentions": ({"output_attentions": True}, {}, False),
    "head_mask": ({}, {"head_mask": torch.ones(4)}, False),
    "decoder, config's use_cache": ({"is_decoder": True}, {}, False),
    "decoder, use_cache=False": ({"is_decoder": True}, {"use_cache": False}, True),
    "encoder, use_cache=True": ({}, {"use_cache": True}, True),
    "hidden dropout, training": ({"hidden_dropout_prob": 0.1}, {"train": True}, True),
    "attention dropout, training": ({"attention_probs_dropout_prob": 0.1}, {"train": True}, False),
    "attention dropout, eval": ({"attention_probs_dropout_prob": 0.1}, {}, True),
    # transformers' gradient_checkpointing_enable puts a forward hook on word_embeddings
    # (enable_input_require_grads), and a hook sends an optimized model's call to the original forward.
    "gradient checkpointing, training": ({}, {"train": True, "checkpointing": True}, (True, False)),
    "cross-attention": ({"is_decoder": True, "add_cross_attention": True},
                        {"use_cache": False, "encoder_hidden_states": torch.randn(3, 5, 64)}, False),
}


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_rembert_fast_and_optimized_transformers_take_the_same_path(monkeypatch, case):
    """One rule (`packed.packable`) decides for both models: the packed encoder runs in exactly the
    same cases."""
    from rembert_fast import packed

    config_overrides, call, expected = PATH_CASES[case]
    call = dict(call)
    hf = rembert_fast.optimize(build("RemBertModel", **config_overrides))
    ours = rembert_fast.RemBertModel(rembert_fast.RemBertConfig(**tiny_config(**config_overrides).to_dict()))
    ours.load_state_dict(hf.state_dict())
    mask = make_mask("right")
    inputs = inputs_for("RemBertModel", mask)
    if call.pop("mask_4d", False):
        inputs["attention_mask"] = mask.bool()[:, None, None, :].expand(-1, 1, mask.shape[1], -1).contiguous()
    training, checkpointing = call.pop("train", False), call.pop("checkpointing", False)
    runs = []
    real = packed.packed_encoder_forward
    monkeypatch.setattr(packed, "packed_encoder_forward", lambda *a, **k: runs.append(1) or real(*a, **k))
    took = []
    for model in (ours, hf):
        model.train(training)
        if checkpointing:
            model.gradient_checkpointing_enable()
        runs.clear()
        with torch.no_grad():
            model(**inputs, **call)
        took.append(bool(runs))
    assert tuple(took) == (expected if isinstance(expected, tuple) else (expected, expected))


def test_activation_without_an_op_runs_the_original_forward(spies):
    model = build("RemBertForMaskedLM", hidden_act="silu")
    inputs = inputs_for("RemBertForMaskedLM", make_mask("right"))
    with torch.no_grad():
        ref = model(**inputs).logits
        got = rembert_fast.optimize(model)(**inputs).logits
    assert "forward" not in model.cls.predictions.__dict__  # the LM head keeps its activation
    assert all(count == 0 for count in spies.values())
    assert torch.equal(got, ref)


@pytest.mark.parametrize("head", ["RemBertModel", "RemBertForMaskedLM"])
def test_float64_model_runs_the_original_forward(head, spies):
    """The ops run float32/float16/bfloat16: a float64 model (and its LM head) keeps transformers' forward."""
    model = build(head).double()
    inputs = inputs_for(head, make_mask("right"))
    with torch.no_grad():
        ref = model(**inputs)[0]
        got = rembert_fast.optimize(model)(**inputs)[0]
    assert got.dtype == torch.float64 and torch.equal(got, ref)
    assert all(count == 0 for count in spies.values())


class _LoRA(nn.Module):
    """A PEFT-LoRA-shaped wrapper: exposes its base layer's weight and bias, adds its own term."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Parameter(torch.randn(2, base.in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, 2) * 0.1)

    weight = property(lambda self: self.base_layer.weight)
    bias = property(lambda self: self.base_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + x @ self.lora_A.T @ self.lora_B.T


@pytest.mark.parametrize("where", ["layer hook", "query pre-hook", "embeddings hook", "LM head dense hook",
                                   "LoRA intermediate", "LoRA query", "LoRA LM head dense"])
def test_hooks_and_wrapped_layers_are_honoured(where, spies):
    """The packed path reads weights instead of calling modules: a forward hook on one of them, or a
    layer replaced by a wrapper with its own forward (PEFT LoRA), makes the call take transformers'
    forward, so hooks fire and adapters apply (and get gradients), as without optimize()."""
    reference = build("RemBertForMaskedLM")
    optimized = rembert_fast.optimize(copy.deepcopy(reference))
    inputs = inputs_for("RemBertForMaskedLM", make_mask("right"))
    fired = []
    for model in (reference, optimized):
        layer = model.rembert.encoder.layer[0]
        if where == "layer hook":
            layer.register_forward_hook(lambda m, i, o: (fired.append(1), (o[0] * 2, *o[1:]))[1])
        elif where == "query pre-hook":
            query = layer.attention.self.query
            query.register_forward_pre_hook(lambda m, i: (fired.append(1), (i[0] + 1,))[1])
        elif where == "embeddings hook":
            model.rembert.embeddings.register_forward_hook(lambda m, i, o: (fired.append(1), o * 0.5)[1])
        elif where == "LM head dense hook":
            model.cls.predictions.dense.register_forward_hook(lambda m, i, o: (fired.append(1), o + 1)[1])
        else:
            torch.manual_seed(0)
            parent, name = {"LoRA intermediate": (layer.intermediate, "dense"),
                            "LoRA query": (layer.attention.self, "query"),
                            "LoRA LM head dense": (model.cls.predictions, "dense")}[where]
            setattr(parent, name, _LoRA(getattr(parent, name)))
    labels = torch.randint(0, 101, inputs["input_ids"].shape).masked_fill(inputs["attention_mask"] == 0, -100)
    want = reference(**inputs, labels=labels)
    got = optimized(**inputs, labels=labels)
    compare("RemBertForMaskedLM", got, want, inputs["attention_mask"])
    assert abs(got.loss.item() - want.loss.item()) <= TOL
    if "LoRA" in where:
        got.loss.backward()
        want.loss.backward()
        adapters = [m for m in (reference, optimized) for m in m.modules() if isinstance(m, _LoRA)]
        assert all(a.lora_A.grad is not None for a in adapters)
        torch.testing.assert_close(adapters[1].lora_A.grad, adapters[0].lora_A.grad, rtol=1e-4, atol=1e-6)
    else:
        assert len(fired) == 2  # once per model


@pytest.mark.parametrize("empty_rows", ["all", "one"])
def test_a_row_without_real_tokens_runs_the_original_forward(empty_rows):
    """The packed path has no answer for a sequence without tokens: the call gets transformers' own."""
    model = build("RemBertModel")
    mask = torch.zeros(2, 6, dtype=torch.long)
    if empty_rows == "one":
        mask[0, :4] = 1
    ids = torch.randint(3, 101, (2, 6))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = rembert_fast.optimize(model)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(got, ref)


# ----------------------------------------------------------------------------------------- weights
def test_state_dict_unchanged_and_save_load_round_trip(tmp_path):
    model = build("RemBertForTokenClassification")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = make_mask("holes")
    inputs = inputs_for("RemBertForTokenClassification", mask)
    rembert_fast.optimize(model)
    with torch.no_grad():
        expected = model(**inputs).logits  # the forward builds the fused QKV buffer
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)

    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved == set(before)  # a plain transformers checkpoint: no new or renamed keys
    loaded = transformers.RemBertForTokenClassification.from_pretrained(tmp_path).eval()
    assert not patching.is_optimized(loaded)
    with torch.no_grad():
        got = loaded(**inputs).logits
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= TOL


# ----------------------------------------------------------------------------------------- refusal
def test_refuses_non_rembert_models():
    with pytest.raises(TypeError, match="Linear"):
        rembert_fast.optimize(nn.Linear(4, 4))
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64))
    with pytest.raises(TypeError, match=r"BertModel.*'bert'"):
        rembert_fast.optimize(bert)
    with pytest.raises(TypeError, match="str"):
        rembert_fast.optimize("google/rembert")


def test_rembert_fast_model_is_returned_as_is():
    fast = rembert_fast.RemBertModel(rembert_fast.RemBertConfig(**tiny_config().to_dict()))
    assert rembert_fast.optimize(fast) is fast
    assert "forward" not in fast.__dict__


# ----------------------------------------------------------------------------------------- triton
@pytest.mark.parametrize("head", ["RemBertModel", "RemBertForMaskedLM"])
def test_triton_backend_matches_transformers(head, spies):
    """The fast path with the Triton kernels (the interpreter on CPU, real CUDA on a GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter runs on CPU tensors
    mask = make_mask("holes")
    inputs = {k: v.to(device) for k, v in inputs_for(head, mask).items()}
    mask = mask.to(device)
    model = build(head).to(device)
    with torch.no_grad():
        ref = model(**inputs)
        rembert_fast.optimize(model)
        with ops.use_backend("triton"):
            got = model(**inputs)
    assert spies["attention"] == model.config.num_hidden_layers
    real = mask.bool()
    out_got = got.last_hidden_state if head == "RemBertModel" else got.logits
    out_ref = ref.last_hidden_state if head == "RemBertModel" else ref.logits
    assert (out_got[real] - out_ref[real]).abs().max().item() <= 1e-4
