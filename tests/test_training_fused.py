"""Fine-tuning on the fused path: every head's loss and parameter gradients on the triton backend
(the kernels under the interpreter on CPU) equal transformers' eager ones, and the forward and backward
kernels are the ones that ran (counted per phase). Also the ops' custom-op registration (opcheck),
torch.compile of a training step (no graph break inside the encoder, gradients equal to eager) and
autocast with fp32 parameters.

head_dim 16 (hidden 64, 4 heads): a size the attention kernels take, so attention is fused too. fp32,
dropout off (train mode is then deterministic); tolerance 1e-4 of each gradient's largest magnitude.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from conftest import DEVICE, needs_triton
from hf_pairs import SMALL_CONFIGS, batch_inputs, make_pair, transformers_decoder_is_causal

from rembert_fast import ops
from rembert_fast.kernels import activation, attention, attention_backward, layer_norm
from rembert_fast.ops import library

pytestmark = needs_triton
WIDTH = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1)  # head_dim 16; one layer: fast
LAUNCHERS = ((layer_norm, "layer_norm"), (activation, "bias_act"), (attention, "attention_varlen"),
             (layer_norm, "layer_norm_backward"), (activation, "bias_act_backward"),
             (attention_backward, "attention_varlen_backward"))


@contextlib.contextmanager
def counting(monkeypatch):
    """Counts each kernel launcher's calls: {name: calls}."""
    counts = {}
    for module, name in LAUNCHERS:
        launcher = getattr(module, name)

        def counted(*args, _launcher=launcher, _name=name, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _launcher(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    yield counts


def _head_inputs(head: str, name: str) -> tuple[dict, dict]:
    """(extra config, model inputs with labels) for one head on a padded batch with a hole."""
    batch = batch_inputs(name, pattern="hole", seed=60)
    gen = torch.Generator().manual_seed(61)
    real = batch["attention_mask"].bool()
    vocab = SMALL_CONFIGS[name]["vocab_size"]
    if head in ("RemBertForMaskedLM", "RemBertForCausalLM"):
        labels = torch.randint(0, vocab, real.shape, generator=gen).masked_fill(~real, -100)
        if head == "RemBertForMaskedLM":
            return {}, {**batch, "labels": labels}
        # A causal LM scores label i against logit i - 1: no label after a padding position, so the
        # loss reads no padding logit and the packed path serves (else the head runs padded).
        labels[:, 1:] = labels[:, 1:].masked_fill(~real[:, :-1], -100)
        return {"is_decoder": True}, {**batch, "labels": labels, "use_cache": False}
    if head == "RemBertForTokenClassification":
        labels = torch.randint(0, 5, real.shape, generator=gen).masked_fill(~real, -100)
        return {"num_labels": 5}, {**batch, "labels": labels}
    if head == "RemBertForSequenceClassification":
        return {"num_labels": 3}, {**batch, "labels": torch.tensor([2, 0, 1])}
    if head == "RemBertForMultipleChoice":
        other = batch_inputs(name, pattern="right", seed=62)
        choice = {k: torch.stack([batch[k], other[k]]) for k in batch}  # (2 examples, 3 choices, L)
        return {}, {**choice, "labels": torch.tensor([2, 0])}
    assert head == "RemBertForQuestionAnswering"
    # Span positions over a padded batch make the head run padded (its softmax reads every position):
    # a full batch keeps the packed path.
    batch["attention_mask"].fill_(1)
    return {}, {**batch, "start_positions": torch.tensor([1, 0, 2]), "end_positions": torch.tensor([4, 3, 2])}


def _on_device(inputs: dict) -> dict:
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _pair(head: str, seed: int, **overrides):
    """(transformers, rembert_fast) models of `head` on DEVICE in train mode, same weights."""
    hf, ours = make_pair(head, "h60", seed=seed, **{**WIDTH, **overrides})
    return hf.to(DEVICE).train(), ours.to(DEVICE).train()


HEADS = ("RemBertForMaskedLM", "RemBertForCausalLM", "RemBertForSequenceClassification",
         "RemBertForMultipleChoice", "RemBertForTokenClassification", "RemBertForQuestionAnswering")


@pytest.mark.parametrize("head", HEADS)
def test_every_head_trains_on_the_kernels_like_transformers(head, monkeypatch):
    if head == "RemBertForCausalLM" and not transformers_decoder_is_causal():
        pytest.skip("this transformers' RemBERT decoder is not causal: no reference")
    config, inputs = _head_inputs(head, "h60")
    inputs = _on_device(inputs)
    hf, ours = _pair(head, 63, **config)
    ref = hf(**inputs)
    ref.loss.backward()
    with ops.use_backend("triton"), counting(monkeypatch) as counts:
        loss = ours(**inputs).loss
        forward_counts = dict(counts)
        counts.clear()
        loss.backward()
    assert abs(loss.item() - ref.loss.item()) <= 1e-4 * max(1.0, abs(ref.loss.item()))
    hf_params = dict(hf.named_parameters())
    for key, param in ours.named_parameters():
        truth = hf_params[key].grad
        assert param.grad is not None, key
        scale = max(1.0, truth.abs().max().item())
        assert (param.grad - truth).abs().max().item() <= 1e-4 * scale, key
    layers = ours.config.num_hidden_layers
    heads_ln = 1 if head in ("RemBertForMaskedLM", "RemBertForCausalLM") else 0  # the LM head's LN
    assert forward_counts == {"layer_norm": 2 * layers + heads_ln, "bias_act": layers + heads_ln,
                              "attention_varlen": layers}
    assert counts == {"layer_norm_backward": 2 * layers + heads_ln, "bias_act_backward": layers + heads_ln,
                      "attention_varlen_backward": layers}


def test_full_batch_attention_trains_through_the_varlen_kernels(monkeypatch):
    """Every row full: the packed path calls attention_padded, which trains on the varlen kernels."""
    hf, ours = _pair("RemBertForSequenceClassification", 64, num_labels=2)
    batch = batch_inputs("h60", pattern="right", seed=65)
    batch["attention_mask"].fill_(1)
    batch = _on_device(batch)
    labels = torch.tensor([1, 0, 1], device=DEVICE)
    hf(**batch, labels=labels).loss.backward()
    with ops.use_backend("triton"), counting(monkeypatch) as counts:
        ours(**batch, labels=labels).loss.backward()
    assert counts["attention_varlen"] == counts["attention_varlen_backward"] == ours.config.num_hidden_layers
    hf_params = dict(hf.named_parameters())
    for key, param in ours.named_parameters():
        truth = hf_params[key].grad
        assert (param.grad - truth).abs().max().item() <= 1e-4 * max(1.0, truth.abs().max().item()), key


def test_custom_ops_pass_opcheck():
    x = torch.randn(5, 33, device=DEVICE, requires_grad=True)
    w, b, xb = (torch.randn(33, device=DEVICE, requires_grad=True) for _ in range(3))
    residual = torch.randn(5, 33, device=DEVICE, requires_grad=True)
    torch.library.opcheck(library.layer_norm, (x, w, b, 1e-12, residual, xb))
    torch.library.opcheck(library.layer_norm, (x, w, None, 1e-12, None, None))
    torch.library.opcheck(library.bias_act, (x, b, "gelu"))
    torch.library.opcheck(library.bias_act, (x, None, "relu"))
    q, k, v = (torch.randn(20, 2, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 5, 5, 20], dtype=torch.int32, device=DEVICE)
    torch.library.opcheck(library.attention_varlen_lse, (q, k, v, cu, cu, 15, 15, True, None))


def _training_step(model, batch, labels):
    out = model(**batch, labels=labels)
    out.loss.backward()
    return out.loss.detach()


def test_compiled_training_step_has_no_graph_break_in_the_encoder_and_matches_eager(monkeypatch):
    """torch.compile of forward + loss + backward: the packed encoder's layers (attention, both
    GEMM + LayerNorm epilogues, the FFN) trace into graphs with their backward, without a break; the
    only breaks are where the batch is packed and embedded (host reads of the lengths and ids)."""
    _, model = _pair("RemBertForSequenceClassification", 66, num_labels=2, num_hidden_layers=2)
    batch = _on_device(batch_inputs("h60", pattern="hole", seed=67))
    labels = torch.tensor([1, 0, 1], device=DEVICE)
    compiled_model = copy.deepcopy(model)
    with ops.use_backend("triton"):
        eager_loss = _training_step(model, batch, labels)
        explanation = torch._dynamo.explain(_training_step)(copy.deepcopy(model), batch, labels)
        torch._dynamo.reset()
        with counting(monkeypatch) as counts:
            compiled_loss = torch.compile(_training_step, backend="aot_eager")(compiled_model, batch, labels)
    layers = model.config.num_hidden_layers
    assert counts.get("attention_varlen") == counts.get("attention_varlen_backward") == layers
    assert counts.get("layer_norm_backward") == 2 * layers
    inside = {"packed_layer_forward", "_packed_attention", "_linear_residual_norm"}
    for reason in explanation.break_reasons:
        names = {frame.name for frame in reason.user_stack}
        assert not names & inside, f"graph break inside the encoder: {reason.reason}"
    assert abs(compiled_loss.item() - eager_loss.item()) <= 1e-5
    for (key, a), b in zip(model.named_parameters(), compiled_model.parameters(), strict=True):
        assert (a.grad - b.grad).abs().max().item() <= 1e-5 * max(1.0, a.grad.abs().max().item()), key


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_autocast_runs_the_kernels_in_the_autocast_dtype_with_fp32_gradients(dtype, monkeypatch):
    _, model = _pair("RemBertForTokenClassification", 68, num_labels=5)
    inputs = _on_device(_head_inputs("RemBertForTokenClassification", "h60")[1])
    seen = []
    launcher = layer_norm.layer_norm_backward
    monkeypatch.setattr(layer_norm, "layer_norm_backward",
                        lambda dy, x, *a: seen.append((dy.dtype, x.dtype, a[0].dtype)) or launcher(dy, x, *a))
    with ops.use_backend("triton"), torch.autocast(torch.device(DEVICE).type, dtype=dtype):
        model(**inputs).loss.backward()
    assert seen and all(d == (dtype, dtype, torch.float32) for d in seen), seen
    for key, param in model.named_parameters():
        assert param.grad is not None and param.grad.dtype == torch.float32, key
        assert torch.isfinite(param.grad).all(), key
