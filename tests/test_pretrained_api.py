"""transformers' PreTrainedModel methods on every rembert_fast class, against transformers 5.24 where it
defines the answer: embeddings getters/setters, num_parameters, resize_token_embeddings, gradient
checkpointing (same gradients, layers recomputed), save_pretrained's Trainer/accelerate keywords."""

from __future__ import annotations

import pytest
import torch
from hf_pairs import batch_inputs, make_pair

import rembert_fast
import rembert_fast.modeling.modules
import rembert_fast.packed
from rembert_fast.checkpoint import load_pretrained

HEADS = ["RemBertModel", "RemBertForMaskedLM", "RemBertForSequenceClassification",
         "RemBertForTokenClassification", "RemBertForQuestionAnswering"]


@pytest.mark.parametrize("name", HEADS)
def test_embedding_accessors_and_parameter_counts_match_transformers(name):
    hf, ours = make_pair(name, "h60", num_labels=2)
    base = ours if name == "RemBertModel" else ours.rembert
    assert ours.get_input_embeddings() is base.embeddings.word_embeddings
    assert ours.base_model is base
    for only_trainable, exclude_embeddings in ((False, False), (True, False), (False, True)):
        assert ours.num_parameters(only_trainable, exclude_embeddings) == hf.num_parameters(
            only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
    theirs_out = hf.get_output_embeddings()
    mine_out = ours.get_output_embeddings()
    assert (mine_out is None) == (theirs_out is None)
    replacement = torch.nn.Embedding(*base.embeddings.word_embeddings.weight.shape)
    ours.set_input_embeddings(replacement)
    assert base.embeddings.word_embeddings is replacement
    ours.tie_weights()  # nothing to tie: the decoder stays its own
    if mine_out is not None:
        assert ours.get_output_embeddings().weight.data_ptr() != replacement.weight.data_ptr()


@pytest.mark.parametrize("name", ["RemBertModel", "RemBertForMaskedLM"])
def test_resize_token_embeddings_keeps_old_rows_and_answers(name):
    _, ours = make_pair(name, "h60")
    batch = batch_inputs("h60")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        before = ours(**batch)[0]
    old_vocab = ours.config.vocab_size
    embedding = ours.resize_token_embeddings(old_vocab + 13, pad_to_multiple_of=8)
    size = -(-(old_vocab + 13) // 8) * 8
    assert embedding is ours.get_input_embeddings() and embedding.weight.shape[0] == size
    assert ours.config.vocab_size == size
    with torch.no_grad():
        after = ours(**batch)[0]
        ids = batch["input_ids"].clone()
        ids[0, 1] = size - 1  # a new token is a valid id now
        assert torch.isfinite(ours(input_ids=ids, attention_mask=batch["attention_mask"])[0]).all()
    if name == "RemBertModel":
        assert torch.equal(after[real], before[real])
    else:
        decoder = ours.get_output_embeddings()
        assert decoder.weight.shape[0] == size and decoder.bias.shape == (size,)
        assert after.shape[-1] == size and torch.equal(after[..., :old_vocab][real], before[real])
    ours.get_input_embeddings().weight.requires_grad_(False)  # frozen embeddings stay frozen
    small = ours.resize_token_embeddings(10)
    assert small.weight.shape[0] == 10 and ours.config.vocab_size == 10 and not small.weight.requires_grad
    padded = torch.nn.Embedding(ours.config.vocab_size, small.embedding_dim, padding_idx=8)
    ours.set_input_embeddings(padded)
    assert ours.resize_token_embeddings(5).padding_idx is None  # the padding row is gone (transformers)
    with pytest.raises(ValueError, match="new_num_tokens must be at least 1, got 0"):
        ours.resize_token_embeddings(0)


@pytest.mark.parametrize("path", ["packed", "classic"])
def test_gradient_checkpointing_gives_the_same_gradients(path, monkeypatch):
    """With dropout on (its random state is replayed in the recomputation): the same loss and gradients
    as without checkpointing, and every layer runs twice (its recomputation). Attention dropout
    sends training to the classic path, so the packed case has hidden dropout only."""
    _, ours = make_pair("RemBertForSequenceClassification", "h60", num_labels=2, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1 if path == "classic" else 0.0)
    batch = batch_inputs("h60")
    labels = torch.tensor([0, 1, 1])
    extra = {"output_attentions": True} if path == "classic" else {}
    ours.train()
    packed_calls = []
    packed = rembert_fast.packed.packed_encoder_forward
    monkeypatch.setattr(rembert_fast.packed, "packed_encoder_forward",
                        lambda *a, **k: packed_calls.append(1) or packed(*a, **k))

    def loss_and_grads():
        ours.zero_grad()
        torch.manual_seed(7)
        loss = ours(**batch, labels=labels, **extra).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    calls = []
    feed_forward = rembert_fast.modeling.modules.RemBertOutput.forward
    layer = rembert_fast.packed.packed_layer_forward
    monkeypatch.setattr(rembert_fast.modeling.modules.RemBertOutput, "forward",
                        lambda *a: calls.append(1) or feed_forward(*a))
    monkeypatch.setattr(rembert_fast.packed, "packed_layer_forward", lambda *a: calls.append(1) or layer(*a))
    ours.activation_checkpointing_enable()
    assert ours.is_activation_checkpointing
    loss_again, grads_again = loss_and_grads()
    assert len(calls) == 2 * ours.config.num_hidden_layers
    assert bool(packed_calls) == (path == "packed")  # the path the case is named after ran
    assert torch.equal(loss, loss_again) and grads.keys() == grads_again.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_again[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    ours.activation_checkpointing_disable()
    assert not ours.is_activation_checkpointing


def test_save_pretrained_keywords_of_trainer_and_accelerate(tmp_path):
    _, ours = make_pair("RemBertModel", "h60")
    state = {key: tensor * 2 for key, tensor in ours.state_dict().items()}
    ours.save_pretrained(tmp_path / "given", state_dict=state)
    again = load_pretrained(rembert_fast.RemBertModel, tmp_path / "given")
    assert all(torch.equal(again.state_dict()[key], tensor) for key, tensor in state.items())
    ours.save_pretrained(tmp_path / "other_rank", is_main_process=False)
    assert not (tmp_path / "other_rank").exists()
    with pytest.raises(ValueError, match="push_to_hub=True is not supported"):
        ours.save_pretrained(tmp_path / "hub", push_to_hub=True)
