"""The packed path under torch.compile, on CPU: where dynamo breaks the graph, and compiled == eager.

The packed forward reads the device once (the token count and max_seqlen, in `padding.unpad_input`);
that read is the only graph break: the ops are torch.library custom ops dynamo traces through.
"""

from __future__ import annotations

import torch

from rembert_fast import RemBertConfig, RemBertModel

TINY = dict(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            input_embedding_size=32, output_embedding_size=48, intermediate_size=128,
            max_position_embeddings=64)


def padded_batch(batch: int = 3, seqlen: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.randint(2, seqlen, (batch,))
    lengths[0] = seqlen  # one full row, the others padded: a ragged batch
    mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
    return torch.randint(3, TINY["vocab_size"], (batch, seqlen)), mask


def explain_packed_forward(**dynamo_config):
    torch._dynamo.reset()
    model = RemBertModel(RemBertConfig(**TINY)).eval()
    ids, mask = padded_batch()
    with torch.no_grad(), torch._dynamo.config.patch(**dynamo_config):
        return torch._dynamo.explain(model)(input_ids=ids, attention_mask=mask)


def at_the_token_count_read(reason) -> bool:
    frame = reason.user_stack[-1]
    return frame.name == "unpad_input" and frame.filename.endswith("padding.py") and "tolist" in reason.reason


def test_the_token_count_read_is_the_one_graph_break():
    # Nested graph breaks: a break inside nested calls counts once, not once per enclosing frame.
    explanation = explain_packed_forward(nested_graph_breaks=True)
    where = [(r.user_stack[-1].name, r.reason.splitlines()[0]) for r in explanation.break_reasons]
    assert explanation.graph_break_count == 1 and explanation.graph_count == 2, where
    assert len(explanation.break_reasons) == 1 and at_the_token_count_read(explanation.break_reasons[0])


def test_default_dynamo_breaks_only_at_the_token_count_read():
    explanation = explain_packed_forward()  # each enclosing frame breaks at the read once
    assert explanation.graph_break_count >= 1
    assert all(at_the_token_count_read(r) for r in explanation.break_reasons), [
        (r.user_stack[-1].name, r.reason.splitlines()[0]) for r in explanation.break_reasons]


def test_compiled_packed_model_matches_eager():
    torch._dynamo.reset()
    model = RemBertModel(RemBertConfig(**TINY)).eval()
    ids, mask = padded_batch()
    real = mask.bool()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask)
        got = torch.compile(model)(input_ids=ids, attention_mask=mask)
    error = (got.last_hidden_state[real] - ref.last_hidden_state[real]).abs().max().item()
    assert error <= 1e-5, error
    assert (got.pooler_output - ref.pooler_output).abs().max().item() <= 1e-5
