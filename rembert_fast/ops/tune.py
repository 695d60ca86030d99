"""Deciding ahead of time: the per-bucket choices a model's first calls would make, made now.

`call_classes(shapes, tokens, seqlens)` lists the call classes an encoder of these widths meets on each
token bucket: the embedding, the varlen and the full-batch attention, the two GEMM + LayerNorm
epilogues, the GEMM + activation. `decide_ahead` makes a bucket's decisions through the dispatch exactly
as a first use would (what a CUDA-graph capture needs before it starts). `tune` (the `rembert-fast tune`
command's work) probes each op's candidates, times those that passed on a bucket-shaped input with the
given timer (default: `measure.median_timer`, which on the CPU interpreter measures the interpreter, as
a first use never does), records the fastest in the tuning cache, replacing any choice held, and
returns the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rembert_fast.ops import dispatch, measure, tuning
from rembert_fast.ops.call_class import CallClass, pow2
from rembert_fast.ops.registry import OPS


@dataclass(frozen=True)
class Shapes:
    """The widths an encoder layer's ops meet: hidden, FFN intermediate, attention heads, activation,
    the embedding width, and whether attention is causal (a decoder)."""

    hidden: int = 1152
    intermediate: int = 4608
    heads: int = 18
    activation: str = "gelu"
    embedding: int = 256
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("hidden", "intermediate", "heads", "embedding"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")


@dataclass
class Row:
    """One line of the table: op, call class (the cache's name), bucket, each candidate's median ms,
    the choice, and the probe errors of the candidates left out."""

    op: str
    entry: str
    tokens: int
    seqlen: int
    ms: dict[str, float] = field(default_factory=dict)
    choice: str = "eager"
    probe_error: str | None = None


def call_classes(shapes: Shapes, tokens: tuple[int, ...], seqlens: tuple[int, ...],
                 dtype: torch.dtype) -> list[CallClass]:
    """Every call class an encoder of `shapes` meets on each token bucket (attention: on each
    sequence-length bucket too), as the ops key them."""
    h, f, d = shapes.hidden, shapes.intermediate, shapes.hidden // shapes.heads
    classes = []
    for count in dict.fromkeys(pow2(t) for t in tokens):
        classes.append(CallClass("embed", (True,), (shapes.embedding, h), dtype, count))
        for length in dict.fromkeys(pow2(s) for s in seqlens):
            classes.append(CallClass("attention", (shapes.causal, True), (shapes.heads, d), dtype, count,
                                     length))
            classes.append(CallClass("attention_padded", (shapes.causal, False), (shapes.heads, d), dtype,
                                     count, length))
        classes += [CallClass("linear_residual_layer_norm", (), (h, h), dtype, count),
                    CallClass("linear_bias_act", (shapes.activation,), (h, f), dtype, count),
                    CallClass("linear_residual_layer_norm", (), (f, h), dtype, count)]
    return classes


def decide_ahead(shapes: Shapes, tokens: int, seqlen: int, device: torch.device,
                 dtype: torch.dtype) -> dict[str, str]:
    """Make now, as a first use would (probe, time, choose), every decision an encoder of `shapes` needs
    for `tokens` rows whose longest sequence is `seqlen`: what a CUDA-graph capture calls first, so that
    nothing is probed or timed inside it. Returns {call class name: the candidate chosen}."""
    return {call.name: dispatch.choose(call.op, call.variant, call.width, device, dtype, call.tokens, (),
                                       seqlen=call.seqlen)
            for call in call_classes(shapes, (tokens,), (seqlen,), dtype)}


def shapes_of_config(config: Any) -> Shapes:
    """The widths of a RemBertConfig (rembert_fast's or transformers')."""
    return Shapes(config.hidden_size, config.intermediate_size, config.num_attention_heads,
                  config.hidden_act, config.input_embedding_size, bool(config.is_decoder))


def tune(device: torch.device, dtype: torch.dtype, shapes: Shapes, tokens: tuple[int, ...],
         seqlens: tuple[int, ...] = (128, 512), timer: measure.Timer | None = None) -> list[Row]:
    """Probe, time and choose for every call class of `call_classes`; record the choices in the tuning
    cache (replacing any held); return the table. ValueError for an empty or non-positive bucket list."""
    for name, sizes in (("tokens", tokens), ("seqlens", seqlens)):
        if not sizes or any(t <= 0 for t in sizes):
            raise ValueError(f"{name} must be positive bucket sizes, got {sizes}")
    timer = timer or measure.median_timer(device)
    rows: list[Row] = []
    with measure.on_device(device):  # probes and timing on `device`, whichever GPU is current
        for call in call_classes(shapes, tokens, seqlens, dtype):
            if call.seqlen > call.tokens:  # a sequence longer than the batch's rows: no call meets it
                continue
            with dispatch.use_backend("auto"):  # what a first use on `auto` would run, whatever is requested
                base = dispatch.backend_for(call.probed, device, dtype)
            names, errors = dispatch.candidate_names(call, device.type, base)
            if base == "eager" and OPS[call.op].fused not in names:
                errors.insert(0, tuning.verdicts().get(call.verdict())
                              or dispatch.unavailable_reason(call.op, device.type))
            row = Row(call.op, call.name, call.tokens, call.seqlen,
                      probe_error="; ".join(e for e in errors if e) or None)
            row.ms = measure.measure(call, device, names, timer)
            row.choice = dispatch.choose_fastest(call, device.type, row.ms)
            rows.append(row)
    dispatch.forget()  # decisions made before now are made again, from these choices
    return rows
