"""The ops a backend is chosen for, and what may serve each: the one list the dispatch, the probe, the
candidates and the tuner iterate (architecture: dispatch).

Each op has the eager composition (always a candidate), one fused path that the op-level decision
(`dispatch.backend_for`) stands for ("triton": the kernels in `rembert_fast.kernels`; "cuda": the
compiled extension), and optionally competitors probed and timed on their own (`ops.competitors`).
An op with an activation is probed per activation, `bias_act[gelu]`: each activation is its own kernel.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    """One op of the dispatch: its name, the backend of its fused path, its competitors, and whether its
    probe verdict is kept per activation (the variant's first item)."""

    name: str
    fused: str  # "triton" or "cuda"
    competitors: tuple[str, ...] = ()
    per_activation: bool = False
    trainable: bool = False  # its fused path has backward kernels (a differentiable custom op)


OPS: dict[str, Op] = {op.name: op for op in (
    Op("layer_norm", "triton", trainable=True),
    Op("bias_act", "triton", per_activation=True, trainable=True),
    Op("attention", "triton", competitors=("sdpa_padded", "torch_varlen"), trainable=True),
    Op("attention_padded", "triton", trainable=True),
    Op("embed", "cuda"),
    Op("linear_bias_act", "triton", per_activation=True, trainable=True),
    Op("linear_residual_layer_norm", "triton", trainable=True),
)}

TRITON_OPS = tuple(name for name, op in OPS.items() if op.fused == "triton")
EXTENSION_OPS = tuple(name for name, op in OPS.items() if op.fused == "cuda")
PER_ACTIVATION = tuple(name for name, op in OPS.items() if op.per_activation)
TRAINABLE_OPS = tuple(name for name, op in OPS.items() if op.trainable)


def get(name: str) -> Op:
    """The op called `name`; ValueError names an op the dispatch does not know."""
    op = OPS.get(name)
    if op is None:
        raise ValueError(f"op {name!r} is not one of {tuple(OPS)}")
    return op


def covers(table: dict, what: str) -> dict:
    """`table` (one entry per op) if its keys are exactly the registry's ops; else ValueError naming the
    difference, so a new op cannot be registered without its probe case and candidate calls."""
    if set(table) != set(OPS):
        raise ValueError(f"{what} covers {sorted(table)}, the registry {sorted(OPS)}")
    return table


def covers_competitors(table: dict, what: str) -> dict:
    """`table` (one entry per (op, competitor)) if its keys are exactly the registry's competitors; else
    ValueError naming the difference."""
    pairs = {(name, rival) for name, op in OPS.items() for rival in op.competitors}
    if set(table) != pairs:
        raise ValueError(f"{what} covers {sorted(table)}, the registry {sorted(pairs)}")
    return table
