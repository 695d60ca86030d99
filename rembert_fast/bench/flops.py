"""FLOPs of a RemBERT forward and the device's dense GEMM peak, for each row's TFLOP/s and its fraction."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from rembert_fast.bench import timing


def model_flops(config: Any, lengths: Iterable[int]) -> int:
    """FLOPs (a multiply-add is 2) of one RemBertModel forward over sequences of these real lengths:
    the 256->hidden projection, per layer the QKV, output and two FFN GEMMs and attention's two
    (len x len) products, and the pooler. Elementwise work (LayerNorm, GELU, softmax) is not counted."""
    lengths = [int(n) for n in lengths]
    hidden, inter = config.hidden_size, config.intermediate_size
    layers, emb = config.num_hidden_layers, config.input_embedding_size
    tokens = sum(lengths)
    dense = 2 * tokens * (emb * hidden + layers * hidden * (4 * hidden + 2 * inter))
    attention = 4 * hidden * layers * sum(n * n for n in lengths)  # QK^T and PV, every head
    pooler = 2 * len(lengths) * hidden * hidden
    return dense + attention + pooler


def gemm_shapes(config: Any, tokens: int, device: torch.device) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the model's four GEMMs at `tokens` rows, and on CUDA the 8192-cube."""
    hidden, inter = config.hidden_size, config.intermediate_size
    mkn = [(tokens, hidden, 3 * hidden), (tokens, hidden, hidden), (tokens, hidden, inter),
           (tokens, inter, hidden)]
    if device.type == "cuda":
        mkn.append((8192, 8192, 8192))
    return {f"{m}x{k}x{n}": (m, k, n) for m, k, n in mkn}


def gemm_peak(dtype: torch.dtype, device: torch.device, shapes: dict[str, tuple[int, int, int]],
              warmup: int, iters: int) -> dict[str, Any]:
    """TFLOP/s of `F.linear` (x @ W^T, the model's layout) per (m, k, n) shape, and the best of them."""
    by_shape = {}
    for label, (m, k, n) in shapes.items():
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        with torch.inference_mode():
            ms = timing.kernel_ms(functools.partial(F.linear, x, w), warmup, iters, device)
        by_shape[label] = 2 * m * k * n / (ms / 1e3) / 1e12
        del x, w
    return {"tflop_per_s": max(by_shape.values()), "by_shape": by_shape}
