"""Benchmark: the varlen attention backward (dQ, dK, dV), in TFLOP/s of useful work.

Implementations measured in the same run, on the same real tokens and output gradient (each one's
forward runs once, outside the timing: the backward alone):
- ``triton``: ``kernels.attention_backward.attention_varlen_backward`` from the kernel forward's saved
  log-sum-exp, q/k/v strided views of one packed (T, 3, heads, head_dim) buffer (GPU only);
- ``sdpa_flash``: the backward of ``scaled_dot_product_attention`` with the flash backend on the
  padded batch (no padding mask: exact for fixed lengths only, a speed yardstick otherwise; the
  issue's target: triton at least this on the padded batch) (GPU only);
- ``sdpa_masked``: the same padded batch with its key-padding mask, SDPA's own backend choice: what a
  padded model must run for the correct gradients (GPU only);
- ``eager``: autograd through ``ops.attention_ref``: the only row on CPU, at a small shape.

Useful FLOPs = 2.5 x the forward's (five (S, S) x head_dim products instead of two: QK^T recomputed,
dV, dP, dQ, dK), counted on real tokens, halved for causal. Shapes and dtype as ``bench_attention.py``
(head_dim 64, 18 heads, S in {128, 256, 512}, batch {8, 64}, fixed and variable lengths, bf16).
dQ of every implementation is checked against the eager reference on real tokens before it is timed
(except ``sdpa_flash`` with variable lengths).

    python -m pytest benches/bench_attention_backward.py --benchmark-columns=median,min,max,rounds
    python benches/bench_attention_backward.py [--json benches/results/attention_backward.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bench_attention import BASELINE, DTYPE, HEAD_DIM, HEADS, IMPLS, SHAPES, Problem, _label, make_problem

from rembert_fast import ops
from rembert_fast.bench.harness import CUDA, device_name, median_seconds, write_json

BACKWARD_FLOPS = 2.5  # backward FLOPs per forward FLOP (FlashAttention-2's count)


def _dout(p: Problem) -> torch.Tensor:
    g = torch.Generator().manual_seed(len(p.seqlens))
    return torch.randn(p.qkv_packed[:, 0].shape, generator=g).to(p.qkv_packed.device, p.qkv_packed.dtype)


def build(impl: str, p: Problem) -> Callable[[], torch.Tensor]:
    """A call of `impl`'s backward returning dQ: (T, heads, head_dim), or (B, heads, L, head_dim) padded."""
    dout = _dout(p)
    shape = (p.cu_seqlens, p.cu_seqlens, p.max_seqlen, p.max_seqlen, p.causal)
    if impl == "triton":
        from rembert_fast.kernels import attention, attention_backward

        q, k, v = p.qkv_packed.unbind(1)
        lse = torch.empty(HEADS, q.shape[0], device=q.device)
        out = attention.attention_varlen(q, k, v, *shape, lse=lse)
        return lambda: attention_backward.attention_varlen_backward(dout, q, k, v, out, lse, *shape)[0]
    if impl == "eager":
        q, k, v = (t.detach().requires_grad_() for t in p.qkv_packed.unbind(1))
        out = ops.attention_ref(q, k, v, *shape)
        return lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)[0]
    qp, kp, vp = (t.transpose(1, 2).contiguous().requires_grad_() for t in p.qkv_padded.unbind(2))
    dout_padded = torch.zeros_like(qp)
    dout_padded.transpose(1, 2)[p.mask] = dout
    if impl == "sdpa_flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=p.causal)
    elif impl == "sdpa_masked":
        allowed = p.mask[:, None, None, :]
        if p.causal:
            allowed = allowed & torch.ones(p.mask.shape[1], p.mask.shape[1], dtype=torch.bool,
                                           device=qp.device).tril()
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=allowed)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return lambda: torch.autograd.grad(out, (qp, kp, vp), dout_padded, retain_graph=True)[0]


def check_agreement(impl: str, p: Problem) -> None:
    """dQ must match the eager reference's on real tokens (a wrong answer's speed is worthless)."""
    if impl == "eager" or (impl == "sdpa_flash" and len(set(p.seqlens)) > 1):
        return
    dq = build(impl, p)()
    if dq.dim() == 4:
        dq = dq.transpose(1, 2)[p.mask]
    truth = build("eager", p)().float()
    error = (dq.float() - truth).abs().max().item() / truth.abs().max().item()
    if error > 0.05:
        raise AssertionError(f"{impl} dQ differs from the eager reference by {error:.3g} of its largest")


@pytest.mark.parametrize("shape", SHAPES, ids=_label)
@pytest.mark.parametrize("impl", IMPLS)
def test_attention_backward_throughput(benchmark, impl: str, shape: tuple[int, int, str, bool]) -> None:
    problem = make_problem(*shape)
    check_agreement(impl, problem)
    fn = build(impl, problem)

    def run() -> None:
        fn()
        if CUDA:
            torch.cuda.synchronize()

    seconds = median_seconds(fn)
    benchmark.group = f"attention backward {_label(shape)} D{HEAD_DIM} H{HEADS} {DTYPE}"
    benchmark.extra_info.update(shape=_label(shape), device=device_name(), median_us=seconds * 1e6,
                                tflops=BACKWARD_FLOPS * problem.useful_flops() / seconds / 1e12)
    benchmark.pedantic(run, rounds=20, warmup_rounds=3, iterations=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    meta = {"device": device_name(), "torch": torch.__version__, "dtype": str(DTYPE), "heads": HEADS,
            "head_dim": HEAD_DIM, "op": "attention_backward"}
    rows = []
    for shape in SHAPES:
        problem = make_problem(*shape)
        medians = {}
        for impl in IMPLS:
            check_agreement(impl, problem)
            medians[impl] = median_seconds(build(impl, problem))
        for impl, seconds in medians.items():
            rows.append({"shape": _label(shape), "impl": impl, "median_us": seconds * 1e6,
                         "TFLOP/s": BACKWARD_FLOPS * problem.useful_flops() / seconds / 1e12,
                         f"speedup_vs_{BASELINE}": medians[BASELINE] / seconds})
        write_json(args.json, meta, rows, complete=False)
    print(f"attention backward: device {device_name()}, torch {torch.__version__}, dtype "
          f"{str(DTYPE).removeprefix('torch.')}, heads {HEADS}, head_dim {HEAD_DIM}; median after warm-up; "
          "TFLOP/s of real-token work")
    print("  ".join(f"{c:>22}" for c in rows[0]))
    for row in rows:
        print("  ".join(f"{v:>22.3f}" if isinstance(v, float) else f"{v!s:>22}" for v in row.values()))
    write_json(args.json, meta, rows, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
