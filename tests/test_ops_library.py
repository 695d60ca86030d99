"""torch.compile through the op API: the Triton kernels as `torch.library` custom ops (under the
interpreter on CPU), the eager path traceable, no graph break in either, and the compiled numbers
those of the eager call. `torch.library.opcheck` holds each custom op's schema and fake
implementation to the real one."""

import pytest
import torch
from conftest import DEVICE, needs_triton

from rembert_fast import ops
from rembert_fast.kernels import layer_norm as ln_kernels
from rembert_fast.ops import library

HEADS, HEAD_DIM, EPS = 2, 16, 1e-12
CUSTOM_OPS = ("layer_norm", "bias_act", "attention_varlen", "attention_padded")


def _inputs():
    """Fresh random inputs of every op: a (T, 16) batch of 3 sequences (lengths 3, 0, 5)."""
    def r(*shape):
        return torch.randn(*shape, device=DEVICE)

    return {
        "x": r(8, 16), "w": r(32, 16) / 4, "b": r(32), "res": r(8, 32), "lnw": 1 + r(32) / 2, "lnb": r(32),
        "q": r(8, HEADS, HEAD_DIM), "k": r(8, HEADS, HEAD_DIM), "v": r(8, HEADS, HEAD_DIM),
        "cu": torch.tensor([0, 3, 3, 8], dtype=torch.int32, device=DEVICE),
        "mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool, device=DEVICE),
        "ids": torch.randint(0, 50, (2, 4), device=DEVICE), "tables": (r(50, 16), r(8, 16), r(2, 16)),
    }


def _every_op(x, w, b, res, lnw, lnb, q, k, v, cu, mask, ids, tables):
    positions = torch.arange(4, device=ids.device).expand(2, 4)
    e = ops.embed(ids, positions, torch.zeros_like(ids), *tables, lnw[:16], lnb[:16], EPS, w, b)  # (2, 4, 32)
    h = ops.linear_bias_act(x, w, b, "gelu")  # (8, 32)
    h = ops.layer_norm(h, lnw, lnb, EPS, residual=res)
    h = ops.bias_act(h, b, "relu")
    h = ops.linear_residual_layer_norm(x, w, None, h, lnw, lnb, EPS)
    full = ops.attention(q, k, v, cu, cu, 5, 5)
    causal = ops.attention(q, k, v, cu, cu, 5, 5, causal=True)
    padded = ops.attention_padded(*(t.view(2, 4, HEADS, HEAD_DIM) for t in (q, k, v)), mask)
    return e, h, full, causal, padded


def _graph_targets(explanation):
    return {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes
            if node.op == "call_function"}


@pytest.mark.parametrize("backend", ["eager", pytest.param("triton", marks=needs_triton)])
def test_no_graph_break_and_compiled_numbers_are_eager_numbers(backend):
    args = _inputs()
    torch._dynamo.reset()
    with torch.no_grad(), ops.use_backend(backend):
        explanation = torch._dynamo.explain(_every_op)(**args)
        eager = _every_op(**args)
        compiled = torch.compile(_every_op, backend="aot_eager", fullgraph=True)(**args)
    assert explanation.graph_break_count == 0, [str(r.reason) for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    custom = {t for t in _graph_targets(explanation) if t.startswith("rembert_fast.")}
    if backend == "triton":
        assert custom == {f"rembert_fast.{name}.default" for name in CUSTOM_OPS}
    else:
        assert custom == set()
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_triton
def test_entering_use_backend_retraces(monkeypatch):
    calls = []
    launcher = ln_kernels.layer_norm
    monkeypatch.setattr(ln_kernels, "layer_norm", lambda *a, **k: calls.append(1) or launcher(*a, **k))
    x, w = torch.randn(4, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: ops.layer_norm(x, w, None, EPS), backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        with ops.use_backend("eager"):
            first = compiled(x)
        assert not calls
        with ops.use_backend("triton"):
            second = compiled(x)
        assert calls
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first, ops.layer_norm_ref(x, w, None, EPS), rtol=1e-5, atol=1e-5)


def test_gradients_through_compiled_ops_take_the_eager_path():
    args = _inputs()
    w = args["w"].clone().requires_grad_()

    def loss(x, w):
        return ops.linear_residual_layer_norm(x, w, None, args["res"], args["lnw"], args["lnb"], EPS).sum()

    fn = torch.compile(loss, backend="aot_eager")
    with ops.use_backend("auto"):
        fn(args["x"], w).backward()
    wide = w.detach().double().requires_grad_()
    y = torch.nn.functional.linear(args["x"].double(), wide) + args["res"].double()
    ops.layer_norm_ref(y, args["lnw"].double(), args["lnb"].double(), EPS).sum().backward()
    torch.testing.assert_close(w.grad, wide.grad.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", (False, True))
def test_reference_attention_matches_the_per_sequence_one(causal):
    cu = torch.tensor([0, 4, 4, 5, 12], dtype=torch.int32, device=DEVICE)  # an empty and a 1-token sequence
    cu_k = torch.tensor([0, 6, 6, 8, 12], dtype=torch.int32, device=DEVICE)  # more keys than queries
    q = torch.randn(12, HEADS, HEAD_DIM, device=DEVICE)
    k, v = (torch.randn(12, HEADS, HEAD_DIM, device=DEVICE) for _ in range(2))
    got = ops.attention_ref(q, k, v, cu, cu_k, 7, 6, causal=causal)
    want = ops.attention_per_sequence(q, k, v, cu, cu_k, causal=causal)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ops.attention_ref(q[:0], k[:0], v[:0], cu.new_zeros(2), cu.new_zeros(2), 0, 0).shape == (
        0, HEADS, HEAD_DIM)


def _opcheck_cases():
    a = _inputs()
    qkv4 = [a[n].view(2, 4, HEADS, HEAD_DIM) for n in ("q", "k", "v")]
    return {
        "layer_norm": (a["res"], a["lnw"], a["lnb"], EPS, a["res"].flip(0), a["b"]),
        "bias_act": (a["res"], a["b"], "gelu"),
        "attention_varlen": (a["q"], a["k"], a["v"], a["cu"], a["cu"], 5, 5, True, None),
        "attention_padded": (*qkv4, a["mask"], False, 0.5),
    }


@needs_triton
@pytest.mark.parametrize("name", CUSTOM_OPS)
def test_opcheck(name):
    args = _opcheck_cases()[name]
    torch.library.opcheck(getattr(library, name), args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.gpu
def test_opcheck_embed():
    from rembert_fast import extension

    if extension.load() is None:
        pytest.skip(extension.status()[1])
    ids = torch.randint(0, 50, (2, 5), device="cuda")
    tables = [torch.randn(rows, 16, device="cuda") for rows in (50, 8, 2)]
    positions = torch.arange(5, device="cuda").expand(2, 5).contiguous()
    ln = (torch.ones(16, device="cuda"), torch.zeros(16, device="cuda"))
    proj = (torch.randn(24, 16, device="cuda"), torch.randn(24, device="cuda"))
    args = (ids, positions, torch.zeros_like(ids), *tables, *ln, EPS, *proj)
    torch.library.opcheck(library.embed, args)
    assert library.embed(*args).shape == (2, 5, 24)
