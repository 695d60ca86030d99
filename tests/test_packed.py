"""The packed path under torch.compile, on CPU: where dynamo breaks the graph, and compiled == eager.

The packed forward reads the device once (the token count and max_seqlen, in `padding.unpad_input`);
that read is the only graph break: the ops are torch.library custom ops dynamo traces through. The
read returns integers, which dynamo keeps symbolic, so a stream of batches with new token counts and
longest sequences reuses the compiled graphs instead of recompiling for each.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

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
    # The integer read's `.tolist()` reaches dynamo as a scalar read of each value (_local_scalar_dense).
    frame = reason.user_stack[-1]
    host_read = "tolist" in reason.reason or "_local_scalar_dense" in reason.reason
    return frame.name == "unpad_input" and frame.filename.endswith("padding.py") and host_read


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


# A smaller model than TINY: these tests compile every frame of the forward, many times on today's code.
SMALL = dict(TINY, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, input_embedding_size=16,
             output_embedding_size=16, intermediate_size=64)


def batch_stream(calls: int = 10, batch: int = 3, seqlen: int = 16):
    """`calls` (B, L) batches of one padded shape whose token counts all differ and whose longest
    sequences take five values: what a batch job or a server feeds a model. No token count equals a
    width or L: dynamo's duck sizing would tie two equal sizes together and recompile when they part."""
    for i in range(calls):
        lengths = torch.tensor([seqlen - 4 + i % 5, 1 + i, 5])  # totals 18 + i + i % 5: all different
        mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
        yield torch.randint(3, SMALL["vocab_size"], (batch, seqlen)), mask


@pytest.mark.parametrize("dynamic, settled_after", [(True, 1), (None, 2)], ids=["dynamic", "default"])
def test_compiled_model_stops_recompiling_over_a_stream_of_token_counts(dynamic, settled_after):
    # dynamic=True compiles every frame once for all token counts; the default (automatic dynamic
    # shapes) compiles the first shape statically and the second symbolically, then never again.
    # aot_eager runs dynamo's guards and AOT autograd's scalar handling as inductor does, without
    # inductor's code generation (minutes on a 2-core CPU): the recompiles are dynamo's.
    torch._dynamo.reset()
    model = RemBertModel(RemBertConfig(**SMALL)).eval()
    compiled = torch.compile(model, dynamic=dynamic, backend="aot_eager")
    counters.clear()
    frames_compiled, totals = [], []
    with torch.no_grad():
        for ids, mask in batch_stream():
            ref = model(input_ids=ids, attention_mask=mask)
            got = compiled(input_ids=ids, attention_mask=mask)
            real = mask.bool()
            error = (got.last_hidden_state[real] - ref.last_hidden_state[real]).abs().max().item()
            assert error <= 1e-5, error
            assert (got.pooler_output - ref.pooler_output).abs().max().item() <= 1e-5
            frames_compiled.append(counters["frames"]["total"])
            totals.append(int(mask.sum()))
    assert len(set(totals)) == len(totals)
    recompiles = frames_compiled[-1] - frames_compiled[settled_after - 1]
    assert recompiles == 0, f"frames compiled after each call: {frames_compiled} (token counts {totals})"
    assert counters["frames"]["ok"] == counters["frames"]["total"]  # none fell back at the recompile limit
