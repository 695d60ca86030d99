"""rembert_fast's own models on the packed fast path with the Triton kernels, against transformers.

On CPU the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1); on a GPU the
same tests run them for real, on CUDA tensors. Every head, fresh random weights (biases and LayerNorm affine
included), ragged batches, real positions only, max abs error <= 1e-4 in float32. Spies on the kernel
modules prove the kernels ran (an op that fell back to eager would pass the numbers silently).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import rembert_fast
from rembert_fast import ops

transformers = pytest.importorskip("transformers")
hf_pairs = pytest.importorskip("hf_pairs")  # tests/hf_pairs.py: randomize every parameter

# head_dim 16 and 32 (sizes the attention kernel takes), exact and tanh GELU, 3 token types.
CONFIGS = {
    "d16": dict(vocab_size=101, hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                intermediate_size=128, input_embedding_size=32, output_embedding_size=48,
                max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu"),
    "d32": dict(vocab_size=89, hidden_size=96, num_attention_heads=3, num_hidden_layers=2,
                intermediate_size=160, input_embedding_size=24, output_embedding_size=40,
                max_position_embeddings=40, type_vocab_size=3, hidden_act="gelu_new"),
}
COMMON = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)
HEADS = ("RemBertModel", "RemBertForMaskedLM",
         pytest.param("RemBertForCausalLM", marks=hf_pairs.needs_causal_reference),
         "RemBertForSequenceClassification", "RemBertForMultipleChoice", "RemBertForTokenClassification",
         "RemBertForQuestionAnswering")
CASES = [("d16", "hole"), ("d32", "right")]
TOL = 1e-4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_pair(head: str, config: str, **overrides):
    kwargs = dict(CONFIGS[config], **COMMON, **overrides)
    if head == "RemBertForCausalLM":
        kwargs["is_decoder"] = True
    if head == "RemBertForQuestionAnswering":
        kwargs["num_labels"] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = getattr(transformers, head)(transformers.RemBertConfig(**kwargs)).eval()
    hf_pairs.randomize(hf, seed=int(torch.randint(0, 2**31 - 1, ())))
    ours = getattr(rembert_fast, head)(rembert_fast.RemBertConfig(**kwargs)).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf.to(DEVICE), ours.to(DEVICE)


def make_inputs(config: str, pattern: str, batch: int = 3, seqlen: int = 11) -> dict[str, torch.Tensor]:
    cfg = CONFIGS[config]
    lengths = torch.tensor([seqlen, seqlen - 4, 3])[:batch]
    mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
    if pattern == "hole":
        mask[0, 2:5] = 0
        mask[1, 1] = 0
    ids = torch.randint(3, cfg["vocab_size"], (batch, seqlen)) * mask
    types = torch.randint(0, cfg["type_vocab_size"], (batch, seqlen))
    return {name: t.to(DEVICE) for name, t in (("input_ids", ids), ("attention_mask", mask),
                                                ("token_type_ids", types))}


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count the calls into the Triton kernel modules (the real kernels still run)."""
    from rembert_fast.kernels import activation, attention, layer_norm

    counts = {}
    for module, name in ((attention, "attention_varlen"), (attention, "attention_padded"),
                         (layer_norm, "layer_norm"), (activation, "bias_act")):
        real = getattr(module, name)
        counts[name] = 0

        def spy(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return counts


def assert_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape
    error = (got - ref).abs().max().item()
    assert error <= TOL, error


@pytest.mark.parametrize("config,pattern", CASES)
@pytest.mark.parametrize("head", HEADS)
def test_every_head_matches_transformers_on_the_triton_backend(head, config, pattern, kernel_calls):
    hf, ours = make_pair(head, config)
    inputs = make_inputs(config, pattern)
    mask = inputs["attention_mask"]
    real = mask.bool()
    labels = {}
    if head in ("RemBertForMaskedLM", "RemBertForTokenClassification"):
        top = CONFIGS[config]["vocab_size"] if head == "RemBertForMaskedLM" else 2
        labels["labels"] = torch.randint(0, top, mask.shape, device=DEVICE).masked_fill(~real, -100)
    elif head == "RemBertForSequenceClassification":
        labels["labels"] = torch.randint(0, 2, (mask.shape[0],), device=DEVICE)
    if head == "RemBertForMultipleChoice":  # one question, each row of the batch a choice
        inputs = {k: v[None] for k, v in inputs.items()}
        labels["labels"] = torch.tensor([1], device=DEVICE)
    with torch.no_grad():
        ref = hf(**inputs, **labels)
        with ops.use_backend("triton"):
            got = ours(**inputs, **labels)

    layers = CONFIGS[config]["num_hidden_layers"]
    if head != "RemBertForCausalLM":  # decoders take the classic path (causal masks, caches)
        assert kernel_calls["attention_varlen"] == layers
        assert kernel_calls["layer_norm"] >= 2 * layers and kernel_calls["bias_act"] >= layers
    if head == "RemBertModel":
        assert_close(got.last_hidden_state[real], ref.last_hidden_state[real])
        assert_close(got.pooler_output, ref.pooler_output)  # every row starts with a real token
    elif head == "RemBertForQuestionAnswering":
        assert_close(got.start_logits[real], ref.start_logits[real])
        assert_close(got.end_logits[real], ref.end_logits[real])
    elif head in ("RemBertForSequenceClassification", "RemBertForMultipleChoice"):
        assert_close(got.logits, ref.logits)
    else:
        assert_close(got.logits[real], ref.logits[real])
    if labels:
        assert abs(got.loss.item() - ref.loss.item()) <= TOL


@pytest.mark.parametrize("backend", ["triton", pytest.param("auto", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("model", ["rembert_fast", "optimize(transformers)"])
def test_float32_model_under_autocast_runs_the_kernels(model, backend, kernel_calls):
    """An fp32 model under torch.autocast(bfloat16): the GEMMs return bf16 while the Linear biases stay
    fp32, and the kernels take the bias in x's dtype. The Triton path must run (not raise) and stay
    within twice transformers' own autocast error against its fp32 answer, plus 1e-2. On a GPU, `auto`
    adds the extension's embedding, whose projection (at::linear) autocast also runs in bf16."""
    hf, ours = make_pair("RemBertForMaskedLM", "d16")
    if model != "rembert_fast":
        ours = rembert_fast.optimize(copy.deepcopy(hf))
    inputs = make_inputs("d16", "hole")
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        ref32 = hf(**inputs, output_hidden_states=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            ref16 = hf(**inputs, output_hidden_states=True)
            with ops.use_backend(backend):
                got = ours(**inputs, output_hidden_states=True)
    assert kernel_calls["bias_act"] >= 2 and kernel_calls["layer_norm"] >= 4
    for name, pick in (("last hidden state", lambda out: out.hidden_states[-1]),
                       ("logits", lambda out: out.logits)):
        want, theirs = pick(ref32)[real].float(), pick(ref16)[real].float()
        error = (pick(got)[real].float() - want).abs().max().item()
        assert error <= 2 * (theirs - want).abs().max().item() + 1e-2, (name, error)


def test_linear_bias_goes_into_the_gemm_only_where_the_next_op_runs_eagerly(monkeypatch):
    """The eager ops would add a Linear's bias in a pass of their own: the layer hands it to the GEMM
    there (one addmm), and to the fused Triton kernels everywhere else. Checked on the ops the layer
    actually calls: the bias they receive."""
    hf, ours = make_pair("RemBertModel", "d32")
    inputs = make_inputs("d32", "right")
    received = []
    from rembert_fast.kernels import activation, layer_norm

    # What serves each epilogue: the eager references (x_bias by keyword) or the kernels (positional).
    for owner, name, bias_at in ((ops, "layer_norm_ref", "x_bias"), (ops, "bias_act_ref", 0),
                                 (layer_norm, "layer_norm", 4), (activation, "bias_act", 0)):
        original = getattr(owner, name)

        def spy(x, *args, _original=original, _at=bias_at, **kwargs):
            bias = kwargs.get(_at) if isinstance(_at, str) else args[_at] if len(args) > _at else None
            received.append(bias is not None)
            return _original(x, *args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    layers = CONFIGS["d32"]["num_hidden_layers"]
    with torch.no_grad():
        ref = hf(**inputs).last_hidden_state
        for backend, bias_to_op in (("eager", False), ("triton", True)):
            received.clear()
            with ops.use_backend(backend):
                got = ours(**inputs).last_hidden_state
            per_layer = received[-3 * layers:]  # two LayerNorms with x_bias and one bias_act per layer
            assert per_layer == [bias_to_op] * (3 * layers), backend
            real = inputs["attention_mask"].bool()
            assert_close(got[real], ref[real])


def test_unpadded_batch_takes_the_padded_kernel(kernel_calls):
    """A batch without padding is a plain (B, L) batch: the padded attention entry, no mask."""
    hf, ours = make_pair("RemBertModel", "d16")
    ids = torch.randint(3, CONFIGS["d16"]["vocab_size"], (2, 13), device=DEVICE)
    with torch.no_grad():
        ref = hf(input_ids=ids).last_hidden_state
        with ops.use_backend("triton"):
            got = ours(input_ids=ids).last_hidden_state
    assert kernel_calls["attention_padded"] == CONFIGS["d16"]["num_hidden_layers"]
    assert kernel_calls["attention_varlen"] == 0
    assert_close(got, ref)


def test_optimized_transformers_model_matches_rembert_fast_model():
    """optimize(transformers model) and rembert_fast's own model run the same fast path."""
    hf, ours = make_pair("RemBertForTokenClassification", "d32")
    inputs = make_inputs("d32", "hole")
    real = inputs["attention_mask"].bool()
    with torch.no_grad(), ops.use_backend("triton"):
        got_ours = ours(**inputs).logits
        got_hf = rembert_fast.optimize(hf)(**inputs).logits
    assert_close(got_hf[real], got_ours[real])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_models_on_the_gpu_match_transformers(dtype):
    """The whole fast path in bf16/fp16 on CUDA (Triton kernels and the extension, `auto` dispatch):
    hidden states, pooler and masked-LM logits (all positions, and only `masked_positions`) within twice
    transformers' own error in that dtype against its fp32 model, plus 1e-2."""
    hf, ours = make_pair("RemBertForMaskedLM", "d32")
    inputs = make_inputs("d32", "hole", batch=3, seqlen=40)
    real = inputs["attention_mask"].bool()
    half_hf, half_ours = copy.deepcopy(hf).to(dtype), copy.deepcopy(ours).to(dtype)
    with torch.inference_mode(), ops.use_backend("auto"):
        ref32 = hf(**inputs, output_hidden_states=True)
        ref16 = half_hf(**inputs, output_hidden_states=True)
        got = half_ours(**inputs, output_hidden_states=True)
        picked = half_ours(**inputs, masked_positions=real).logits  # (real tokens, vocab)

    def bound(ref16_t: torch.Tensor, ref32_t: torch.Tensor) -> float:
        return 2 * (ref16_t.float() - ref32_t).abs().max().item() + 1e-2

    last32, last16 = ref32.hidden_states[-1][real], ref16.hidden_states[-1][real]
    assert (got.hidden_states[-1][real].float() - last32).abs().max().item() <= bound(last16, last32)
    logits32, logits16 = ref32.logits[real], ref16.logits[real]
    assert (got.logits[real].float() - logits32).abs().max().item() <= bound(logits16, logits32)
    assert (picked.float() - logits32).abs().max().item() <= bound(logits16, logits32)
