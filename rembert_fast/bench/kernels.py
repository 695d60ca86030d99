"""Per-kernel cases: every op of `rembert_fast.ops` at RemBERT's widths against its eager `*_ref` (and,
on CUDA, attention against SDPA's flash backend) in the same run, with GB/s and the fraction of a plain
copy's bandwidth for the memory-bound ops and TFLOP/s for attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rembert_fast import ops
from rembert_fast.bench import timing
from rembert_fast.bench.e2e import Shape


def bench_kernels(config: Any, dtypes: list[str], shapes: list[Shape], device: torch.device, warmup: int,
                  iters: int, progress: Any) -> list[dict[str, Any]]:
    """Each op of rembert_fast.ops against its eager reference at the model's widths, fixed lengths."""
    rows: list[dict[str, Any]] = []
    sizes = list(dict.fromkeys((s.batch, s.seq) for s in shapes))
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for batch, seq in sizes:
            progress.set_description(f"kernels {dtype_name} {batch}x{seq}")
            for case in _kernel_cases(config, batch, seq, dtype, device):
                rows.append(time_kernel(case, dtype_name, batch, seq, device, warmup, iters))
            progress.update(1)
    return rows


@dataclass
class KernelCase:
    op: str
    shape: str
    fast: Callable[[], Any]
    references: dict[str, Callable[[], Any]]
    bytes_moved: int | None  # bytes read + written, for GB/s and the comparison with a plain copy
    flops: float | None  # for TFLOP/s


def _kernel_cases(config: Any, batch: int, seq: int, dtype: torch.dtype, device: torch.device
                  ) -> list[KernelCase]:
    tokens = batch * seq
    hidden, inter, emb = config.hidden_size, config.intermediate_size, config.input_embedding_size
    heads = config.num_attention_heads
    head_dim = hidden // heads
    eps = config.layer_norm_eps
    size = torch.finfo(dtype).bits // 8

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    cases = []
    x, res, w, b, xb = rand(tokens, hidden), rand(tokens, hidden), rand(hidden), rand(hidden), rand(hidden)
    cases.append(KernelCase(
        "layer_norm(+bias+residual)", f"{tokens}x{hidden}",
        lambda: ops.layer_norm(x, w, b, eps, residual=res, x_bias=xb),
        {"eager": lambda: ops.layer_norm_ref(x, w, b, eps, residual=res, x_bias=xb)},
        3 * tokens * hidden * size, None))
    h, hb = rand(tokens, inter), rand(inter)
    cases.append(KernelCase(
        f"bias_act({config.hidden_act})", f"{tokens}x{inter}",
        lambda: ops.bias_act(h, hb, config.hidden_act),
        {"eager": lambda: ops.bias_act_ref(h, hb, config.hidden_act)},
        2 * tokens * inter * size, None))
    qkv = rand(tokens, 3, heads, head_dim)
    q, k, v = qkv.unbind(1)
    cu = torch.arange(0, (batch + 1) * seq, seq, device=device, dtype=torch.int32)
    flops = 4.0 * batch * seq * seq * heads * head_dim
    references = {"eager": lambda: ops.attention_ref(q, k, v, cu, cu, seq, seq)}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        qp, kp, vp = (t.reshape(batch, seq, heads, head_dim).transpose(1, 2).contiguous() for t in (q, k, v))

        def sdpa_flash() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(qp, kp, vp)

        references["sdpa_flash"] = sdpa_flash
    cases.append(KernelCase(f"attention(varlen, d={head_dim})", f"{batch}x{seq}x{heads}x{head_dim}",
                             lambda: ops.attention(q, k, v, cu, cu, seq, seq), references, None, flops))
    ids = torch.randint(0, config.vocab_size, (tokens,), device=device)
    pos = torch.arange(seq, device=device).repeat(batch)
    tt = torch.zeros(tokens, dtype=torch.long, device=device)
    word, pos_w, type_w = rand(config.vocab_size, emb), rand(config.max_position_embeddings, emb), rand(
        config.type_vocab_size, emb)
    lw, lb = rand(emb), rand(emb)
    # Bytes DRAM must move: each distinct table row once (the position and type rows are reused from
    # L2), the ids, the LN parameters and the output. ops.embed includes the id check's 8-byte
    # read-back (what the model pays); benches/bench_embed.py times the kernel alone.
    distinct_rows = sum(int(torch.unique(t).numel()) for t in (ids, pos, tt))
    embed_bytes = (distinct_rows + 2 + tokens) * emb * size + 3 * tokens * ids.element_size()
    cases.append(KernelCase(
        "embed(gather+LN, id check incl.)", f"{tokens}x{emb}",
        lambda: ops.embed(ids, pos, tt, word, pos_w, type_w, lw, lb, eps),
        {"eager": lambda: ops.embed_ref(ids, pos, tt, word, pos_w, type_w, lw, lb, eps)},
        embed_bytes, None))
    return cases


def time_kernel(case: KernelCase, dtype_name: str, batch: int, seq: int, device: torch.device,
                 warmup: int, iters: int) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "kernel", "op": case.op, "shape": case.shape, "dtype": dtype_name,
                           "batch": batch, "seq": seq, "backend": ops.requested_backend()}
    try:
        with torch.inference_mode():
            median = timing.kernel_ms(case.fast, warmup, iters, device)
            row.update(status="ok", median_ms=median)
            for name, ref in case.references.items():
                try:
                    ref_median = timing.kernel_ms(ref, warmup, iters, device)
                except Exception as err:  # e.g. SDPA's flash backend refuses fp32: the kernel's row stands
                    row[f"{name}_error"] = f"{type(err).__name__}: {err}"
                    continue
                row[f"{name}_median_ms"] = ref_median
                row[f"speedup_vs_{name}"] = ref_median / median
            if case.bytes_moved is not None:
                row["gb_per_s"] = case.bytes_moved / (median / 1e3) / 1e9
                # The ceiling: a clone moving the same bytes (half read, half written).
                source = torch.empty(case.bytes_moved // 2, dtype=torch.uint8, device=device)
                copy_ms = timing.kernel_ms(source.clone, warmup, iters, device)
                row["copy_gb_per_s"] = case.bytes_moved / (copy_ms / 1e3) / 1e9
                row["fraction_of_copy_bandwidth"] = copy_ms / median
            if case.flops is not None:
                row["tflop_per_s"] = case.flops / (median / 1e3) / 1e12
    except Exception as err:  # a kernel that fails here is a finding to report, not a reason to stop
        row.update(status=f"error: {type(err).__name__}: {err}")
    return row
