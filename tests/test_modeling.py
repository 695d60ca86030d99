"""Model parity with transformers 5.24 (the independent reference), on the eager backend, fp32.

Two small random configs (hidden 60 / 5 heads -> head_dim 12, hidden 72 / 4 heads -> head_dim 18),
every parameter random (see hf_pairs). Batches with right padding, left padding and a hole in the
mask; outputs are compared at real positions only (padding positions are unspecified by design).

Sequence-level heads (pooler, sequence classification, multiple choice) under LEFT padding are compared
with transformers run on each sequence alone, without padding but with the same position ids: our
pooler reads each sequence's first real token ([CLS]) where transformers reads position 0, which is
a padding position under left padding (a deliberate, documented difference).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hf_pairs import (
    NON_CAUSAL_REFERENCE,
    SMALL_CONFIGS,
    batch_inputs,
    config_kwargs,
    make_pair,
    needs_causal_reference,
    randomize,
    transformers_decoder_is_causal,
)

import rembert_fast
import rembert_fast.modeling as modeling
from rembert_fast.configuration import RemBertConfig

CONFIGS = list(SMALL_CONFIGS)
PATTERNS = ["right", "left", "hole"]
TOL = 1e-5


def max_err(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    return (a - b).abs().max().item()


def real(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["attention_mask"].bool()


def hf_per_sequence(hf_model, batch: dict[str, torch.Tensor], **kwargs) -> list:
    """transformers on each sequence alone: real tokens only, original position ids."""
    outs = []
    for row in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][row].bool()
        outs.append(
            hf_model(
                input_ids=batch["input_ids"][row, keep][None],
                token_type_ids=batch["token_type_ids"][row, keep][None],
                position_ids=torch.nonzero(keep).flatten()[None],
                **kwargs,
            )
        )
    return outs


@pytest.fixture(scope="module", params=CONFIGS)
def base_pair(request):
    return request.param, *make_pair("RemBertModel", request.param, seed=1)


# ----------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    "class_name",
    [
        "RemBertModel",
        "RemBertForMaskedLM",
        "RemBertForCausalLM",
        "RemBertForSequenceClassification",
        "RemBertForMultipleChoice",
        "RemBertForTokenClassification",
        "RemBertForQuestionAnswering",
    ],
)
def test_state_dict_round_trip_both_ways(class_name):
    overrides = (
        {"is_decoder": True, "add_cross_attention": True} if class_name == "RemBertForCausalLM" else {}
    )
    hf, ours = make_pair(class_name, "h60", seed=2, **overrides)  # hf -> ours with strict=True inside
    hf_state, our_state = hf.state_dict(), ours.state_dict()
    assert list(our_state) == list(hf_state)
    assert not any(k.endswith("position_ids") for k in our_state)
    randomize(ours, seed=3)
    hf.load_state_dict(ours.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(hf.state_dict()[key], value), key


# ----------------------------------------------------------------------------------------- base model
@pytest.mark.parametrize("pattern", PATTERNS)
def test_base_model_matches_transformers(base_pair, pattern):
    name, hf, ours = base_pair
    batch = batch_inputs(name, pattern=pattern, seed=4)
    mask = real(batch)
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True, output_attentions=True)
        fast = ours(**batch, output_hidden_states=True)
        classic = ours(**batch, output_hidden_states=True, output_attentions=True)
    for out in (fast, classic):
        assert max_err(out.last_hidden_state, ref.last_hidden_state, mask) <= TOL
        assert (
            len(out.hidden_states) == len(ref.hidden_states) == SMALL_CONFIGS[name]["num_hidden_layers"] + 1
        )
        for mine, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
            assert max_err(mine, theirs, mask) <= TOL
    assert fast.attentions is None
    for mine, theirs in zip(classic.attentions, ref.attentions, strict=True):
        assert mine.shape == theirs.shape
        assert max_err(mine.transpose(1, 2), theirs.transpose(1, 2), mask) <= TOL  # real query rows
    # Padding positions are zeros on the packed path (documented).
    assert torch.count_nonzero(fast.last_hidden_state[~mask]) == 0
    if pattern == "left":
        refs = hf_per_sequence(hf, batch)
        pooled_ref = torch.cat([r.pooler_output for r in refs])
        assert max_err(fast.pooler_output, ref.pooler_output) > 1e-3  # transformers pools a padding token
    else:
        pooled_ref = ref.pooler_output
    assert max_err(fast.pooler_output, pooled_ref) <= TOL
    assert max_err(classic.pooler_output, pooled_ref) <= TOL


def test_no_mask_inputs_embeds_and_position_ids(base_pair):
    name, hf, ours = base_pair
    batch = batch_inputs(name, pattern="right", seed=5)
    embeds = torch.randn(3, 9, SMALL_CONFIGS[name]["input_embedding_size"])
    positions = torch.randint(0, SMALL_CONFIGS[name]["max_position_embeddings"], (3, 9))
    with torch.no_grad():
        for kwargs in (
            {"input_ids": batch["input_ids"]},
            {"inputs_embeds": embeds, "token_type_ids": batch["token_type_ids"]},
            {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"], "position_ids": positions},
            {"input_ids": batch["input_ids"], "position_ids": positions[:1]},
        ):
            ref, out = hf(**kwargs), ours(**kwargs)
            mask = kwargs.get("attention_mask", torch.ones(3, 9)).bool()
            assert max_err(out.last_hidden_state, ref.last_hidden_state, mask) <= TOL
            assert max_err(out.pooler_output, ref.pooler_output) <= TOL


def test_masks_3d_4d_and_packed_vs_classic(base_pair):
    name, hf, ours = base_pair
    batch = batch_inputs(name, pattern="hole", seed=6)
    mask = real(batch)
    mask3 = mask[:, None, :].expand(-1, 9, -1).long()  # (B, L, L) pairs: same as the 2-D mask
    additive4 = torch.zeros(3, 1, 9, 9).masked_fill(~mask[:, None, None, :], torch.finfo(torch.float32).min)
    ids = {k: v for k, v in batch.items() if k != "attention_mask"}
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        packed = ours(**batch).last_hidden_state
        sdpa_3d = ours(**ids, attention_mask=mask3).last_hidden_state
        ref_4d = hf(**ids, attention_mask=additive4).last_hidden_state
        ours_4d = ours(**ids, attention_mask=additive4).last_hidden_state
        ours_4d_bool = ours(
            **ids, attention_mask=mask[:, None, None, :].expand(-1, 1, 9, -1)
        ).last_hidden_state
        explicit = ours(
            **batch, head_mask=torch.ones(SMALL_CONFIGS[name]["num_attention_heads"])
        ).last_hidden_state
    for out in (packed, sdpa_3d, ours_4d, ours_4d_bool, explicit):
        assert max_err(out, ref, mask) <= TOL
    assert max_err(ours_4d, ref_4d, mask) <= TOL
    assert max_err(sdpa_3d, packed, mask) <= TOL


def test_head_mask_silences_a_head(base_pair):
    """Zeroing head h's probabilities equals zeroing head h's value projection in transformers."""
    name, hf, ours = base_pair
    cfg = SMALL_CONFIGS[name]
    heads, head_dim = cfg["num_attention_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
    batch = batch_inputs(name, pattern="right", seed=7)
    head_mask = torch.ones(cfg["num_hidden_layers"], heads)
    head_mask[0, 1] = 0.0
    silenced = make_pair("RemBertModel", name, seed=1)[0]
    with torch.no_grad():
        value = silenced.encoder.layer[0].attention.self.value
        value.weight[head_dim : 2 * head_dim] = 0.0
        value.bias[head_dim : 2 * head_dim] = 0.0
        ref = silenced(**batch).last_hidden_state
        out = ours(**batch, head_mask=head_mask, output_attentions=True)
        unmasked = ours(**batch).last_hidden_state
    assert max_err(out.last_hidden_state, ref, real(batch)) <= TOL
    assert max_err(unmasked, ref, real(batch)) > 1e-3
    assert torch.count_nonzero(out.attentions[0][:, 1]) == 0
    assert torch.count_nonzero(out.attentions[0][:, 0]) > 0


# ----------------------------------------------------------------------------------------- heads
def labels_at_real(batch: dict[str, torch.Tensor], high: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, high, batch["input_ids"].shape, generator=gen)
    return labels.masked_fill(~real(batch), -100)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_masked_lm(name, pattern):
    hf, ours = make_pair("RemBertForMaskedLM", name, seed=8)
    batch = batch_inputs(name, pattern=pattern, seed=9)
    labels = labels_at_real(batch, SMALL_CONFIGS[name]["vocab_size"], seed=10)
    with torch.no_grad():
        ref = hf(**batch, labels=labels)
        out = ours(**batch, labels=labels)
        tup = ours(**batch, labels=labels, return_dict=False)
        subset = ours(**batch, labels=labels, masked_positions=real(batch) & (labels % 2 == 0))
    assert max_err(out.logits, ref.logits, real(batch)) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    assert len(tup) == 2 and torch.equal(tup[0], out.loss) and torch.equal(tup[1], out.logits)
    chosen = real(batch) & (labels % 2 == 0)
    assert subset.logits.shape == (int(chosen.sum()), SMALL_CONFIGS[name]["vocab_size"])
    assert max_err(subset.logits, ref.logits[chosen]) <= TOL
    masked_labels = labels.masked_fill(~chosen, -100)
    assert abs(subset.loss.item() - hf(**batch, labels=masked_labels).loss.item()) <= TOL


def test_masked_lm_positions_as_index_pairs():
    hf, ours = make_pair("RemBertForMaskedLM", "h72", seed=11)
    batch = batch_inputs("h72", pattern="left", seed=12)
    pairs = torch.tensor([[0, 3], [2, 8], [1, 0]])  # (1, 0) is a padding position: a zero hidden row
    with torch.no_grad():
        ref = hf(**batch).logits
        subset = ours(**batch, masked_positions=pairs).logits
        zero_row = ours.cls(torch.zeros(1, SMALL_CONFIGS["h72"]["hidden_size"]))
    assert max_err(subset[0], ref[0, 3]) <= TOL and max_err(subset[1], ref[2, 8]) <= TOL
    assert max_err(subset[2], zero_row[0]) <= TOL


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_token_classification(name, pattern):
    hf, ours = make_pair("RemBertForTokenClassification", name, seed=13, num_labels=5)
    batch = batch_inputs(name, pattern=pattern, seed=14)
    labels = labels_at_real(batch, 5, seed=15)
    with torch.no_grad():
        ref = hf(**batch, labels=labels, output_hidden_states=True)
        out = ours(**batch, labels=labels, output_hidden_states=True)
        tup = ours(**batch, labels=labels, output_hidden_states=True, return_dict=False)
    assert max_err(out.logits, ref.logits, real(batch)) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    assert (
        len(tup) == 3 and torch.equal(tup[2][-1], out.hidden_states[-1]) and torch.equal(out[1], out.logits)
    )


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_question_answering(name, pattern):
    hf, ours = make_pair("RemBertForQuestionAnswering", name, seed=16)
    batch = batch_inputs(name, pattern=pattern, seed=17)
    with torch.no_grad():
        ref, out = hf(**batch), ours(**batch)
    assert max_err(out.start_logits, ref.start_logits, real(batch)) <= TOL
    assert max_err(out.end_logits, ref.end_logits, real(batch)) <= TOL
    # The loss's softmax runs over every position, padding included, whose logits are unspecified here:
    # compare it on a batch without padding (positions 20 and 30 lie outside and are ignored).
    ids = {k: v for k, v in batch.items() if k != "attention_mask"}
    start, end = torch.tensor([1, 4, 20]), torch.tensor([3, 30, 8])
    with torch.no_grad():
        ref = hf(**ids, start_positions=start.clone(), end_positions=end.clone())
        out = ours(**ids, start_positions=start, end_positions=end, return_dict=False)
    assert abs(out[0].item() - ref.loss.item()) <= TOL
    assert torch.equal(start, torch.tensor([1, 4, 20]))  # inputs are not clamped in place
    assert max_err(out[1], ref.start_logits) <= TOL and max_err(out[2], ref.end_logits) <= TOL


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_question_answering_loss_on_padded_features_is_transformers_loss(name, pattern):
    """The QA guide pads features to max_length; transformers' softmax reads the padding logits."""
    hf, ours = make_pair("RemBertForQuestionAnswering", name, seed=26)
    hf.train(), ours.train()  # dropout is off in these configs
    batch = batch_inputs(name, pattern=pattern, seed=27)
    start, end = torch.tensor([1, 4, 0]), torch.tensor([3, 5, 0])
    ref = hf(**batch, start_positions=start, end_positions=end)
    out = ours(**batch, start_positions=start, end_positions=end)
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    assert max_err(out.start_logits, ref.start_logits) <= TOL
    assert max_err(out.end_logits, ref.end_logits) <= TOL
    ref.loss.backward(), out.loss.backward()
    theirs = dict(hf.named_parameters())
    for key, param in ours.named_parameters():
        assert max_err(param.grad, theirs[key].grad) <= TOL, key
    # the same through optimize(transformers' model)
    optimized = copy.deepcopy(hf)
    optimized.zero_grad()
    rembert_fast.optimize(optimized)
    again = optimized(**batch, start_positions=start, end_positions=end)
    assert abs(again.loss.item() - ref.loss.item()) <= TOL
    assert max_err(again.start_logits, ref.start_logits) <= TOL
    with torch.no_grad():  # without positions the packed path runs: real positions agree
        assert max_err(optimized(**batch).start_logits, ref.start_logits, real(batch)) <= TOL


TOKEN_HEADS = {"RemBertForMaskedLM": {}, "RemBertForTokenClassification": {"num_labels": 5},
               "RemBertForCausalLM": {"is_decoder": True}}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("head", list(TOKEN_HEADS))
def test_token_labels_at_padding_positions_give_transformers_loss(name, pattern, head):
    """labels=input_ids on a padded batch (a perplexity loop's habit) scores padding positions: transformers
    computes their logits, so the loss reads them; labels of -100 there leave the packed path in use."""
    if head == "RemBertForCausalLM" and not transformers_decoder_is_causal():
        pytest.skip(NON_CAUSAL_REFERENCE)
    hf, ours = make_pair(head, name, seed=28, **TOKEN_HEADS[head])
    batch = batch_inputs(name, pattern=pattern, seed=29)
    classes = TOKEN_HEADS[head].get("num_labels", SMALL_CONFIGS[name]["vocab_size"])
    labels = torch.randint(0, classes, batch["input_ids"].shape, generator=torch.Generator().manual_seed(30))
    optimized = rembert_fast.optimize(copy.deepcopy(hf))
    if head == "RemBertForCausalLM":  # transformers' head keeps its cache on with labels: no packing then
        batch["use_cache"] = False
    with torch.no_grad():
        ref = hf(**batch, labels=labels)
        for model in (ours, optimized):
            out = model(**batch, labels=labels)
            assert abs(out.loss.item() - ref.loss.item()) <= TOL, type(model).__module__
            assert max_err(out.logits, ref.logits) <= TOL  # every position: the padded path ran
            # Labels of -100 wherever a padding logit would be read: the packed path, whose padding logits
            # are not transformers' (zeros, or the head applied to a zero row under optimize).
            shift = 1 if head == "RemBertForCausalLM" else 0
            unread = labels.clone()
            unread[:, shift:] = unread[:, shift:].masked_fill(~real(batch)[:, :labels.shape[1] - shift], -100)
            packed = model(**batch, labels=unread)
            expected = hf(**batch, labels=unread).loss
            assert abs(packed.loss.item() - expected.item()) <= TOL
            assert max_err(packed.logits, ref.logits, real(batch)) <= TOL
            assert max_err(packed.logits, ref.logits, ~real(batch)) > 1e-3


@pytest.mark.parametrize("masked", [False, True], ids=["packed", "padded"])
def test_the_padding_row_gets_no_gradient_as_in_transformers(masked):
    """nn.Embedding(padding_idx) gives the padding row no gradient, wherever the padding id is fed."""
    hf, ours = make_pair("RemBertForMaskedLM", "h60", seed=28)
    optimized = rembert_fast.optimize(copy.deepcopy(hf))
    batch = batch_inputs("h60", pattern="right", seed=29)
    batch["input_ids"][:, 1] = SMALL_CONFIGS["h60"]["pad_token_id"]  # the padding id at a real position
    if not masked:  # no mask: every position real, the packed path
        del batch["attention_mask"]
    labels = torch.randint(3, SMALL_CONFIGS["h60"]["vocab_size"], batch["input_ids"].shape,
                           generator=torch.Generator().manual_seed(30))
    if masked:  # padding positions unscored, as transformers' collators label them
        labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    grads = []
    for model in (hf, ours, optimized):
        model.train()  # dropout is off in these configs
        model(**batch, labels=labels).loss.backward()
        grads.append(model.get_input_embeddings().weight.grad)
    reference, *others = grads
    assert reference[0].abs().max().item() == 0 and reference[5:].abs().max().item() > 0
    for grad in others:
        assert max_err(grad, reference) <= TOL


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize(
    "problem", ["regression", "single_label_classification", "multi_label_classification"]
)
def test_sequence_classification(name, problem):
    num_labels = 1 if problem == "regression" else 4
    hf, ours = make_pair("RemBertForSequenceClassification", name, seed=18, num_labels=num_labels)
    gen = torch.Generator().manual_seed(19)
    labels = {
        "regression": torch.randn(3, generator=gen),
        "single_label_classification": torch.randint(0, 4, (3,), generator=gen),
        "multi_label_classification": torch.randint(0, 2, (3, 4), generator=gen).float(),
    }[problem]
    for pattern in PATTERNS:
        batch = batch_inputs(name, pattern=pattern, seed=20)
        with torch.no_grad():
            out = ours(**batch, labels=labels)
            if pattern == "left":
                logits = torch.cat([r.logits for r in hf_per_sequence(hf, batch)])
                ref_loss = None
            else:
                ref = hf(**batch, labels=labels)
                logits, ref_loss = ref.logits, ref.loss
        assert ours.config.problem_type == hf.config.problem_type == problem
        assert max_err(out.logits, logits) <= TOL
        if ref_loss is not None:
            assert abs(out.loss.item() - ref_loss.item()) <= TOL


@pytest.mark.parametrize("name", CONFIGS)
def test_multiple_choice(name):
    hf, ours = make_pair("RemBertForMultipleChoice", name, seed=21)
    batches = [batch_inputs(name, batch=3, pattern="right", seed=22 + i) for i in range(2)]  # 2 examples
    choice = {k: torch.stack([b[k] for b in batches]) for k in batches[0]}  # (2, 3 choices, L)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        ref = hf(**choice, labels=labels)
        out = ours(**choice, labels=labels)
    assert out.logits.shape == (2, 3)
    assert max_err(out.logits, ref.logits) <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL
    # Left padding: the scores equal transformers' on each choice alone.
    left = {k: torch.stack([batch_inputs(name, batch=3, pattern="left", seed=30)[k]]) for k in batches[0]}
    flat = {k: v[0] for k, v in left.items()}
    with torch.no_grad():
        scores = ours(**left).logits
        per_seq = torch.cat([hf.classifier(r.pooler_output) for r in hf_per_sequence(hf.rembert, flat)])
    assert max_err(scores[0], per_seq[:, 0]) <= TOL


# ----------------------------------------------------------------------------------------- decoders
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("pattern", PATTERNS)
@needs_causal_reference
def test_causal_lm_matches_transformers(name, pattern):
    hf, ours = make_pair("RemBertForCausalLM", name, seed=31, is_decoder=True)
    batch = batch_inputs(name, pattern=pattern, seed=32)
    labels = labels_at_real(batch, SMALL_CONFIGS[name]["vocab_size"], seed=33)
    # A label is predicted from the previous position's logits: ignore labels whose predecessor is
    # padding (its logits are unspecified here, and predicting from padding is meaningless anyway).
    labels[:, 1:] = labels[:, 1:].masked_fill(~real(batch)[:, :-1], -100)
    with torch.no_grad():
        ref = hf(**batch, labels=labels, use_cache=False)
        packed = ours(**batch, labels=labels)  # labels turn the cache off: packed causal path
        cached = ours(**batch, use_cache=True)  # classic path, returns the cache
        hf_cached = hf(**batch, use_cache=True)
    assert max_err(packed.logits, ref.logits, real(batch)) <= TOL
    assert max_err(cached.logits, ref.logits, real(batch)) <= TOL
    assert abs(packed.loss.item() - ref.loss.item()) <= TOL
    assert (
        packed.past_key_values is None
        and len(cached.past_key_values) == SMALL_CONFIGS[name]["num_hidden_layers"]
    )
    for i, (key, value) in enumerate(cached.past_key_values):
        layer = hf_cached.cache.self_attention_cache.layers[i]
        assert max_err(key, layer.keys) <= TOL and max_err(value, layer.values) <= TOL
    assert cached.cache is cached.past_key_values and cached["cache"] is cached.past_key_values


@pytest.mark.parametrize("name", CONFIGS)
def test_incremental_decoding_equals_full_forward(name):
    _, ours = make_pair("RemBertForCausalLM", name, seed=34, is_decoder=True)
    batch = batch_inputs(name, pattern="left", seed=35)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        full = ours(input_ids=ids, attention_mask=mask, use_cache=False).logits
        step = ours(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        logits, past = [step.logits], step.past_key_values
        for t in range(5, ids.shape[1]):
            step = ours(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=past)
            logits.append(step.logits)
            past = step.past_key_values
    assert past[0][0].shape[2] == ids.shape[1]
    assert max_err(torch.cat(logits, dim=1), full, real(batch)) <= TOL


@pytest.mark.parametrize("name", CONFIGS)
@needs_causal_reference
def test_cross_attention_decoder(name):
    overrides = dict(is_decoder=True, add_cross_attention=True)
    hf, ours = make_pair("RemBertForCausalLM", name, seed=36, **overrides)
    batch = batch_inputs(name, pattern="right", seed=37)
    gen = torch.Generator().manual_seed(38)
    encoder_states = torch.randn(3, 6, SMALL_CONFIGS[name]["hidden_size"], generator=gen)
    encoder_mask = torch.ones(3, 6, dtype=torch.long)
    encoder_mask[1, 4:] = 0
    kwargs = dict(encoder_hidden_states=encoder_states, encoder_attention_mask=encoder_mask)
    with torch.no_grad():
        ref = hf(**batch, **kwargs, output_attentions=True, use_cache=False)
        out = ours(**batch, **kwargs, output_attentions=True, use_cache=True)
        hf_base = make_pair("RemBertModel", name, seed=36, **overrides)
        base_ref = hf_base[0](**batch, **kwargs).last_hidden_state
        base_out = hf_base[1](**batch, **kwargs).last_hidden_state
    mask = real(batch)
    assert max_err(out.logits, ref.logits, mask) <= TOL
    assert max_err(base_out, base_ref, mask) <= TOL
    for mine, theirs in zip(out.cross_attentions, ref.cross_attentions, strict=True):
        assert max_err(mine.transpose(1, 2), theirs.transpose(1, 2), mask) <= TOL
    assert len(out.past_key_values[0]) == 4  # self (k, v) + cross (k, v)
    # One more token through the cache (cross keys reused) equals the full forward's last position.
    full_ids = torch.cat([batch["input_ids"][:1], torch.tensor([[5]])], dim=1)
    with torch.no_grad():
        full = ours(input_ids=full_ids, encoder_hidden_states=encoder_states[:1], use_cache=False).logits
        prefix = ours(input_ids=full_ids[:, :-1], encoder_hidden_states=encoder_states[:1], use_cache=True)
        step = ours(
            input_ids=full_ids[:, -1:],
            encoder_hidden_states=encoder_states[:1],
            past_key_values=prefix.past_key_values,
        )
    assert max_err(step.logits[:, 0], full[:, -1]) <= TOL


# ----------------------------------------------------------------------------------------- errors
def bad_input_cases(name: str):
    cfg = SMALL_CONFIGS[name]
    batch = batch_inputs(name, pattern="right", seed=39)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    too_high = ids.clone()
    too_high[0, 1] = cfg["vocab_size"]
    negative = ids.clone()
    negative[1, 0] = -3
    types = batch["token_type_ids"].clone()
    types[0, 0] = cfg["type_vocab_size"]
    long_ids = torch.randint(3, cfg["vocab_size"], (1, cfg["max_position_embeddings"] + 1))
    embeds = torch.randn(3, 9, cfg["input_embedding_size"])
    return [
        (dict(input_ids=too_high, attention_mask=mask), rf"input_ids contains {cfg['vocab_size']}"),
        (dict(input_ids=negative), "input_ids contains -3"),
        (dict(input_ids=ids, token_type_ids=types), rf"token_type_ids contains {cfg['type_vocab_size']}"),
        (
            dict(inputs_embeds=embeds, token_type_ids=types),
            rf"token_type_ids contains {cfg['type_vocab_size']}",
        ),
        (dict(input_ids=long_ids), rf"sequence length {cfg['max_position_embeddings'] + 1}"),
        (dict(input_ids=ids, attention_mask=mask[:, :-1]), r"attention_mask has shape \(3, 8\)"),
        (dict(input_ids=ids, token_type_ids=types[:2]), r"token_type_ids has shape \(2, 9\)"),
        (
            dict(input_ids=ids, position_ids=torch.full((3, 9), cfg["max_position_embeddings"])),
            rf"position_ids contains {cfg['max_position_embeddings']}",
        ),
        (dict(input_ids=ids, inputs_embeds=embeds), "got both"),
        (dict(attention_mask=mask), "got neither"),
        (dict(inputs_embeds=embeds[..., :-1]), r"inputs_embeds must be .* got shape \(3, 9, "),
        (dict(input_ids=ids[0]), r"input_ids must be \(batch, seqlen\), got shape \(9,\)"),
        (dict(input_ids=ids, head_mask=torch.ones(7)), r"head_mask has shape \(7,\)"),
        (dict(input_ids=ids, attention_mask=torch.zeros_like(mask)), "no token as real"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_inputs_raise_value_error_naming_the_value(base_pair, case):
    name, _, ours = base_pair
    kwargs, match = bad_input_cases(name)[case]
    with pytest.raises(ValueError, match=match):
        ours(**kwargs)
    if "input_ids" in kwargs and "head_mask" not in kwargs:
        with pytest.raises(ValueError, match=match):  # the classic path checks the same
            ours(**kwargs, output_attentions=True)


def test_bad_cache_and_config_raise():
    _, ours = make_pair("RemBertForCausalLM", "h60", seed=40, is_decoder=True)
    ids = torch.randint(3, 90, (2, 4))
    past = ours(input_ids=ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="not both"):
        ours(input_ids=ids, past_key_values=past, cache=past)
    with pytest.raises(ValueError, match=r"\[0\]\[0\] has shape \(2, 5, 4, 12\); expected \(1, 5,"):
        ours(input_ids=ids[:1], past_key_values=past)
    with pytest.raises(ValueError, match="tuple of 2 per-layer tuples"):
        ours(input_ids=ids, past_key_values=past[:1])
    with pytest.raises(ValueError, match="no cross-attention layers"):
        ours(input_ids=ids, encoder_hidden_states=torch.randn(2, 3, 60))
    with pytest.raises(ValueError, match="hidden_act='swish'"):
        modeling.RemBertModel(RemBertConfig(**config_kwargs("h60", hidden_act="swish")))
    with pytest.raises(ValueError, match=r"masked_positions must be .* shape \(3,\)"):
        modeling.RemBertForMaskedLM(RemBertConfig(**config_kwargs("h60")))(
            input_ids=ids, masked_positions=torch.tensor([0, 1, 2])
        )


# ----------------------------------------------------------------------------------------- outputs
def test_output_access_and_tuples(base_pair):
    name, hf, ours = base_pair
    batch = batch_inputs(name, pattern="right", seed=41)
    with torch.no_grad():
        out = ours(**batch, output_hidden_states=True)
        tup = ours(**batch, output_hidden_states=True, return_dict=False)
        ref_tup = hf(**batch, output_hidden_states=True, return_dict=False)
    assert list(out.keys()) == ["last_hidden_state", "pooler_output", "hidden_states"]
    assert out[0] is out.last_hidden_state and out["pooler_output"] is out.pooler_output
    assert out[2] is out.hidden_states and len(out.to_tuple()) == 3 and out.attentions is None
    assert len(tup) == len(ref_tup) == 3
    assert torch.equal(tup[0], out.last_hidden_state) and torch.equal(tup[1], out.pooler_output)
    no_pool = modeling.RemBertModel(ours.config, add_pooling_layer=False).eval()
    assert no_pool(**batch, return_dict=False)[1] is None  # transformers keeps the None pooler slot


# ----------------------------------------------------------------------------------------- weights
def test_fused_qkv_follows_load_state_dict_and_dtype():
    hf, ours = make_pair("RemBertModel", "h72", seed=42)
    batch = batch_inputs("h72", pattern="hole", seed=43)
    attention = ours.encoder.layer[1].attention.self
    weight, bias = modeling.fused_qkv(attention)
    assert weight.shape == (3 * 72, 72) and attention.key.weight.data_ptr() == weight[72:].data_ptr()
    assert torch.equal(weight[144:], hf.encoder.layer[1].attention.self.value.weight)
    randomize(hf, seed=44)  # new weights, copied in place: the fused buffer sees them
    ours.load_state_dict(hf.state_dict(), strict=True)
    assert modeling.fused_qkv(attention)[0] is weight
    assert torch.equal(weight[:72], hf.encoder.layer[1].attention.self.query.weight)
    with torch.no_grad():
        assert max_err(ours(**batch).last_hidden_state, hf(**batch).last_hidden_state, real(batch)) <= TOL
    ours.to(torch.float32)  # a no-op conversion keeps the buffer
    assert modeling.fused_qkv(attention)[0] is weight
    ours.to(torch.bfloat16)
    hf.to(torch.bfloat16)
    weight16, bias16 = modeling.fused_qkv(attention)
    assert weight16.dtype == torch.bfloat16 and attention.value.bias.data_ptr() == bias16[144:].data_ptr()
    ours.float()
    hf.float()
    with torch.no_grad():
        assert max_err(ours(**batch).last_hidden_state, hf(**batch).last_hidden_state, real(batch)) <= TOL
    # Parameters replaced wholesale (assign=True) are re-fused on the next use.
    state = {k: v.clone() + 0.01 for k, v in hf.state_dict().items()}
    hf.load_state_dict(state)
    ours.load_state_dict(state, assign=True)
    with torch.no_grad():
        assert max_err(ours(**batch).last_hidden_state, hf(**batch).last_hidden_state, real(batch)) <= TOL
    assert attention.query.weight.data_ptr() == modeling.fused_qkv(attention)[0].data_ptr()


def test_fresh_model_is_initialised_like_transformers():
    config = RemBertConfig(**config_kwargs("h72", initializer_range=0.05))
    model = modeling.RemBertForQuestionAnswering(config)
    assert torch.count_nonzero(model.rembert.embeddings.word_embeddings.weight[config.pad_token_id]) == 0
    assert torch.equal(model.rembert.embeddings.position_ids[0], torch.arange(config.max_position_embeddings))
    for name, param in model.named_parameters():
        if name.endswith("LayerNorm.weight"):
            assert torch.equal(param, torch.ones_like(param)), name
        elif name.endswith("bias"):
            assert torch.count_nonzero(param) == 0, name
        else:
            assert abs(param.std().item() - 0.05) < 0.0125 and abs(param.mean().item()) < 0.01, name


def test_meta_construction_and_post_load():
    hf, _ = make_pair("RemBertForMaskedLM", "h60", seed=45)
    with torch.device("meta"):
        model = modeling.RemBertForMaskedLM(RemBertConfig(**config_kwargs("h60")))
    model.load_state_dict(hf.state_dict(), strict=True, assign=True)
    model._post_load()
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    model.eval()
    batch = batch_inputs("h60", pattern="left", seed=46)
    with torch.no_grad():
        assert max_err(model(**batch).logits, hf(**batch).logits, real(batch)) <= TOL


# ----------------------------------------------------------------------------------------- training
def test_train_mode_dropout_changes_outputs_and_backward_works():
    # Hidden dropout only (classifier dropout 0): the packed path itself must drop in train mode.
    overrides = dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)
    _, ours = make_pair("RemBertForTokenClassification", "h60", seed=47, **overrides)
    batch = batch_inputs("h60", pattern="right", seed=48)
    ours.train()
    first, second = ours(**batch).logits, ours(**batch).logits
    assert max_err(first, second, real(batch)) > 1e-3
    with torch.no_grad():
        assert max_err(ours.eval()(**batch).logits, ours(**batch).logits) == 0.0
    # Attention-probability dropout takes the classic path; it also changes outputs.
    for layer in ours.rembert.encoder.layer:
        layer.attention.self.dropout.p = 0.3
    ours.train()
    assert max_err(ours(**batch).logits, ours(**batch).logits, real(batch)) > 1e-3
    labels = labels_at_real(batch, 2, seed=52)
    for attention_dropout in (0.3, 0.0):  # classic path, then packed path, both under dropout
        for layer in ours.rembert.encoder.layer:
            layer.attention.self.dropout.p = attention_dropout
        ours.zero_grad()
        ours(**batch, labels=labels).loss.backward()
        for key, param in ours.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), key
            assert param.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_match_transformers(name):
    hf, ours = make_pair("RemBertForMaskedLM", name, seed=49)
    hf.train()
    ours.train()  # dropout 0: train mode is deterministic; the packed path runs under autograd
    batch = batch_inputs(name, pattern="hole", seed=50)
    labels = labels_at_real(batch, SMALL_CONFIGS[name]["vocab_size"], seed=51)
    hf(**batch, labels=labels).loss.backward()
    ours(**batch, labels=labels).loss.backward()
    hf_grads = dict(hf.named_parameters())
    for key, param in ours.named_parameters():
        assert param.grad is not None, key
        assert max_err(param.grad, hf_grads[key].grad) <= 1e-4 * max(
            1.0, hf_grads[key].grad.abs().max().item()
        ), key
