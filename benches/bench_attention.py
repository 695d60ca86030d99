"""Benchmark: varlen attention, ``ops.attention``, in TFLOP/s of useful work.

Implementations measured in the same run, on the same real tokens:
- ``triton``: ``ops.attention`` on the triton backend, q/k/v strided views of one packed fused QKV
  buffer (T, 3, heads, head_dim), as the model calls it (GPU only);
- ``sdpa_flash``: ``scaled_dot_product_attention`` with the flash backend on the padded batch
  (B, heads, L, head_dim) views of a (B, L, 3, heads, head_dim) buffer. Flash takes no padding mask,
  so with variable lengths it also attends to padding keys: a speed yardstick (the target of issue 4:
  triton >= 1.1x it at head_dim 64, seq 128-512), exact only for fixed lengths (GPU only);
- ``sdpa_masked``: the same padded batch with its key-padding mask through SDPA's default backend
  choice: what a padded model must run for the correct answer (GPU only);
- ``eager``: ``ops.attention_ref`` (pad, masked SDPA, unpad): the only row on CPU, at a small shape,
  so CI exercises this file in seconds.

Useful FLOPs = sum over sequences of 4 * S^2 * head_dim * heads (QK^T and PV), halved for causal,
counted on real tokens for every implementation: padding work is overhead, not throughput. Shapes on
a GPU: head_dim 64, 18 heads (RemBERT), max length S in {128, 256, 512}, batch {8, 64}, fixed
lengths (all S) or variable (uniform in [S/8, S], the longest = S), bf16, causal off and on. Each
implementation's output is checked against ``ops.attention_ref`` on real tokens before it is timed
(except ``sdpa_flash`` with variable lengths, which computes something else by construction).

    python -m pytest benches/bench_attention.py --benchmark-columns=median,min,max,rounds
    python benches/bench_attention.py [--json benches/results/attention.json]   # table with ratios
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rembert_fast import ops
from rembert_fast.bench.harness import CUDA, DEVICE, device_name, median_seconds, write_json

DTYPE = torch.bfloat16 if CUDA else torch.float32
HEADS = 18 if CUDA else 4
HEAD_DIM = 64
SHAPES = [(batch, seqlen, lengths, causal) for seqlen in (128, 256, 512) for batch in (8, 64)
          for lengths in ("fixed", "variable") for causal in (False, True)] if CUDA else \
         [(4, 64, lengths, causal) for lengths in ("fixed", "variable") for causal in (False, True)]
IMPLS = ("triton", "sdpa_flash", "sdpa_masked") if CUDA else ("eager",)
BASELINE = "sdpa_flash" if CUDA else "eager"


@dataclass
class Problem:
    """One batch of sequences in both layouts over the same token values."""

    qkv_packed: torch.Tensor  # (T, 3, heads, head_dim)
    qkv_padded: torch.Tensor  # (B, L, 3, heads, head_dim), zeros at padding
    mask: torch.Tensor  # (B, L) bool, True = real token
    cu_seqlens: torch.Tensor  # (B+1,) int32
    seqlens: list[int]
    causal: bool

    @property
    def max_seqlen(self) -> int:
        return max(self.seqlens)

    def useful_flops(self) -> float:
        flops = sum(4 * s * s * HEAD_DIM * HEADS for s in self.seqlens)
        return flops / 2 if self.causal else flops


def make_problem(batch: int, seqlen: int, lengths: str, causal: bool) -> Problem:
    g = torch.Generator().manual_seed(batch * seqlen + (lengths == "variable"))
    if lengths == "fixed":
        seqlens = [seqlen] * batch
    else:
        seqlens = torch.randint(max(seqlen // 8, 1), seqlen + 1, (batch,), generator=g).tolist()
        seqlens[0] = seqlen
    mask = torch.arange(seqlen)[None, :] < torch.tensor(seqlens)[:, None]
    qkv_padded = torch.randn(batch, seqlen, 3, HEADS, HEAD_DIM, generator=g) * mask[:, :, None, None, None]
    qkv_padded = qkv_padded.to(DEVICE, DTYPE)
    mask = mask.to(DEVICE)
    cu_seqlens = torch.tensor([0, *torch.tensor(seqlens).cumsum(0).tolist()], dtype=torch.int32,
                              device=DEVICE)
    return Problem(qkv_padded[mask], qkv_padded, mask, cu_seqlens, seqlens, causal)


def build(impl: str, p: Problem) -> Callable[[], torch.Tensor]:
    """A call of `impl` that returns its output on real tokens' layout: (T, heads, head_dim) or padded."""
    q, k, v = p.qkv_packed.unbind(1)
    qp, kp, vp = (t.transpose(1, 2) for t in p.qkv_padded.unbind(2))  # (B, heads, L, head_dim) views
    if impl == "triton":
        def triton_attention() -> torch.Tensor:
            with ops.use_backend("triton"):
                return ops.attention(q, k, v, p.cu_seqlens, p.cu_seqlens, p.max_seqlen, p.max_seqlen,
                                     causal=p.causal)

        return triton_attention
    if impl == "eager":
        return lambda: ops.attention_ref(q, k, v, p.cu_seqlens, p.cu_seqlens, p.max_seqlen, p.max_seqlen,
                                         causal=p.causal)
    if impl == "sdpa_flash":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(qp, kp, vp, is_causal=p.causal)

        return flash
    if impl == "sdpa_masked":
        allowed = p.mask[:, None, None, :]
        if p.causal:
            allowed = allowed & torch.ones(p.mask.shape[1], p.mask.shape[1], dtype=torch.bool,
                                           device=DEVICE).tril()
        return lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=allowed)
    raise ValueError(f"unknown implementation {impl!r}")


def check_agreement(impl: str, p: Problem) -> None:
    """A wrong answer's speed is worthless: `impl` must match the eager reference on real tokens."""
    if impl == "eager" or (impl == "sdpa_flash" and len(set(p.seqlens)) > 1):
        return
    out = build(impl, p)()
    if out.dim() == 4:  # padded (B, heads, L, head_dim) -> real tokens (T, heads, head_dim)
        out = out.transpose(1, 2)[p.mask]
    error = (out.float() - build("eager", p)().float()).abs().max().item()
    if error > 0.05:  # a few bf16 ulps of outputs of magnitude ~1; wrong masking gives ~1
        raise AssertionError(f"{impl} differs from the eager reference by {error:.3g}")


def _label(shape: tuple[int, int, str, bool]) -> str:
    batch, seqlen, lengths, causal = shape
    return f"B{batch} S{seqlen} {lengths}{' causal' if causal else ''}"


# ----------------------------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("shape", SHAPES, ids=_label)
@pytest.mark.parametrize("impl", IMPLS)
def test_attention_throughput(benchmark, impl: str, shape: tuple[int, int, str, bool]) -> None:
    problem = make_problem(*shape)
    check_agreement(impl, problem)
    fn = build(impl, problem)

    def run() -> None:
        fn()
        if CUDA:
            torch.cuda.synchronize()

    seconds = median_seconds(fn)
    dtype = str(DTYPE).removeprefix("torch.")
    benchmark.group = f"attention {_label(shape)} D{HEAD_DIM} H{HEADS} {dtype} {DEVICE}"
    benchmark.extra_info.update(shape=_label(shape), heads=HEADS, head_dim=HEAD_DIM, dtype=str(DTYPE),
                                device=device_name(), median_us=seconds * 1e6,
                                tflops=problem.useful_flops() / seconds / 1e12)
    # extra_info's median_us / tflops come from median_seconds (GPU time via do_bench on CUDA), the
    # figures the table reports; pytest-benchmark's own timing includes a host sync per call.
    benchmark.pedantic(run, rounds=20, warmup_rounds=3, iterations=1)


# ----------------------------------------------------------------------------------------- table
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    meta = {"device": device_name(), "torch": torch.__version__, "dtype": str(DTYPE), "heads": HEADS,
            "head_dim": HEAD_DIM, "op": "attention"}
    rows = []
    for shape in SHAPES:
        problem = make_problem(*shape)
        medians = {}
        for impl in IMPLS:
            check_agreement(impl, problem)
            medians[impl] = median_seconds(build(impl, problem))
        for impl, seconds in medians.items():
            rows.append({"shape": _label(shape), "impl": impl, "median_us": seconds * 1e6,
                         "TFLOP/s": problem.useful_flops() / seconds / 1e12,
                         f"speedup_vs_{BASELINE}": medians[BASELINE] / seconds})
        write_json(args.json, meta, rows, complete=False)
    print(f"attention forward: device {device_name()}, torch {torch.__version__}, dtype "
          f"{str(DTYPE).removeprefix('torch.')}, heads {HEADS}, head_dim {HEAD_DIM}; median after warm-up; "
          "TFLOP/s of real-token work")
    columns = list(rows[0])
    print("  ".join(f"{c:>22}" for c in columns))
    for row in rows:
        print("  ".join(f"{v:>22.3f}" if isinstance(v, float) else f"{v!s:>22}" for v in row.values()))
    write_json(args.json, meta, rows, complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
