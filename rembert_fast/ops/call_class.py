"""The one key of every backend decision: a call class, and the names the tuning cache keeps them under.

A call class is (op, variant, width, dtype, bucket): the variant is what changes the work but not the
shapes (activation, causal, which optional inputs), the width the call's fixed dimensions (hidden;
heads and head_dim; GEMM in and out), the bucket its row count rounded up to a power of two (and for
attention its longest sequence, likewise; 0 elsewhere). A probe verdict holds for the op-level name the
class maps to (`probed`: "bias_act[gelu]" for an op with an activation) and a candidate, in one dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rembert_fast.ops import registry


def pow2(n: int) -> int:
    """n rounded up to a power of two (0 stays 0): the bucket a row count or a length falls in."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32: how the cache spells a dtype."""
    return str(dtype).removeprefix("torch.")


def probed_name(op: str, variant: tuple) -> str:
    """The op-level name a call class's probe verdict is kept under: "bias_act[gelu]" for the ops with
    an activation (the variant's first item; each activation is its own kernel, probed on its own), the
    op itself for the rest."""
    return f"{op}[{variant[0]}]" if op in registry.PER_ACTIVATION else op


def verdict_name(probed: str, dtype: torch.dtype, candidate: str | None = None) -> str:
    """The cache's name for a probe verdict: "op|dtype" for the op's fused path, "op.candidate|dtype" for
    a competitor; `probed` as `probed_name` gives it ("bias_act[gelu]")."""
    return f"{probed}{'.' + candidate if candidate else ''}|{dtype_name(dtype)}"


@dataclass(frozen=True)
class CallClass:
    """One call class; `name` is the cache's key for its choice."""

    op: str
    variant: tuple
    width: tuple
    dtype: torch.dtype
    tokens: int  # a bucket: a power of two, or 0
    seqlen: int = 0  # attention's longest-sequence bucket; 0 elsewhere

    @property
    def bucket(self) -> tuple[int, int]:
        return self.tokens, self.seqlen

    @property
    def probed(self) -> str:
        return probed_name(self.op, self.variant)

    @property
    def name(self) -> str:
        """Op and variant flags, dtype, width, bucket, e.g. "attention:False:True|bfloat16|18x64|t512s128"
        (not causal, one offset table)."""
        flags = ":".join(str(v) for v in self.variant)
        shape = f"t{self.tokens}" + (f"s{self.seqlen}" if self.seqlen else "")
        return f"{self.op}{':' + flags if flags else ''}|{dtype_name(self.dtype)}|" \
               f"{'x'.join(map(str, self.width))}|{shape}"

    def verdict(self, candidate: str | None = None) -> str:
        """The name of the probe verdict this class's fused path (or competitor `candidate`) needs."""
        return verdict_name(self.probed, self.dtype, candidate)
