"""Padding removal: pack the real tokens of a (B, L) batch into (T, ...) rows and back.

`unpad_input` runs once at the encoder's entry and `pad_input` once at its exit, so every GEMM,
LayerNorm and activation in between touches real tokens only (the idea of flash-attention's
`bert_padding.py`). Sequences may have any mask pattern (right or left padding, holes): a token is
real where the mask is non-zero, and its packed row keeps its original position id.
"""

from __future__ import annotations

import torch


class NoRealTokensError(ValueError):
    """A row of the attention mask marks no token as real: that sequence has nothing to encode."""


def unpad_input(
    hidden_states: torch.Tensor,  # (B, L, ...) any dtype
    attention_mask: torch.Tensor,  # (B, L) bool, or 0/1 of any dtype: 1 = real token, 0 = padding
    allow_empty_rows: bool = True,  # False: a row without a real token raises NoRealTokensError
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Gather the real tokens of a padded batch.

    A mask value other than 0 or 1 (an additive 0/-inf mask, a float weight) raises ValueError naming
    it, and with `allow_empty_rows=False` a row with no real token raises NoRealTokensError naming the
    row: both checked in the same host read as the token count and max_seqlen, so they cost no extra
    round trip.

    Returns:
        packed: (T, ...) rows of `hidden_states` where the mask is set, batch-major order.
        indices: (T,) int64 flat indices into B*L of those rows.
        cu_seqlens: (B+1,) int32 cumulative real lengths, starting at 0.
        max_seqlen: the longest real length (a Python int). The whole function reads the device once.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, seqlen), got shape {tuple(attention_mask.shape)}")
    if attention_mask.device != hidden_states.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but hidden_states is on "
                         f"{hidden_states.device}")
    if hidden_states.shape[:2] != attention_mask.shape:
        raise ValueError(
            f"hidden_states shape {tuple(hidden_states.shape)} does not start with the mask's shape "
            f"{tuple(attention_mask.shape)}"
        )
    mask = attention_mask.bool()
    seqlens = mask.sum(dim=-1, dtype=torch.int32)
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    total, max_seqlen = 0, 0
    if attention_mask.numel():  # (B, 0) has no token to read (and argmax of nothing fails)
        # The one host read (a device sync on CUDA): the token count, which sizes `indices` so that
        # nonzero_static needs no sync of its own, the longest sequence, the first empty row and, for a
        # mask that is not bool, whether a value is neither 0 nor 1. All integers: torch.compile keeps
        # integers it reads symbolic (one graph for every token count), but guards on the exact value of
        # a float, so a float read would recompile for each new token count.
        read = [cu_seqlens[-1], seqlens.max(), seqlens.eq(0).to(torch.uint8).argmax(), seqlens.min()]
        invalid = None
        if attention_mask.dtype != torch.bool:
            invalid = mask & (attention_mask != 1)
            read.append(invalid.any())
        stats = torch.stack([t.to(torch.int64) for t in read]).tolist()
        if invalid is not None and stats[4]:
            # an error path: the offending value costs a second read
            value = attention_mask.flatten()[invalid.flatten().to(torch.uint8).argmax()].item()
            raise ValueError(f"attention_mask contains {value:.9g}; expected 1 (real token) or 0 "
                             "(padding). An additive mask (0 / -inf) must be turned into 0/1 first")
        if not allow_empty_rows and stats[3] == 0:
            raise NoRealTokensError(empty_row_message(stats[2]))
        total, max_seqlen = stats[0], stats[1]
    indices = torch.nonzero_static(mask.flatten(), size=total).flatten()
    packed = hidden_states.reshape(-1, *hidden_states.shape[2:]).index_select(0, indices)
    return packed, indices, cu_seqlens, max_seqlen


def empty_row_message(row: int) -> str:
    """NoRealTokensError's message for batch row `row`."""
    return (f"attention_mask row {row} marks no token as real (all zeros): that sequence has nothing to "
            "encode; drop the row or mark its tokens with 1")


def pad_input(
    packed: torch.Tensor,  # (T, ...) rows from unpad_input
    indices: torch.Tensor,  # (T,) flat indices into batch*seqlen
    batch: int,
    seqlen: int,
) -> torch.Tensor:
    """Scatter packed rows back to (batch, seqlen, ...); padding positions are zeros."""
    if packed.shape[0] != indices.shape[0]:
        raise ValueError(f"packed has {packed.shape[0]} rows but indices has {indices.shape[0]}")
    if indices.dtype != torch.int64 or indices.device != packed.device:
        raise ValueError(f"indices is {indices.dtype} on {indices.device}; expected int64 on {packed.device}")
    if packed.device.type == "cpu" and indices.numel() and not torch.compiler.is_compiling():
        # A host read is free on CPU; on CUDA, and in a traced graph, the indices from unpad_input are
        # trusted (no sync, no graph break).
        low, high = (int(v) for v in torch.aminmax(indices))
        if low < 0 or high >= batch * seqlen:
            raise ValueError(f"indices contains {low if low < 0 else high}, outside [0, {batch * seqlen}) "
                             f"(batch={batch} x seqlen={seqlen})")
    out = packed.new_zeros(batch * seqlen, *packed.shape[1:])
    out.index_copy_(0, indices, packed)
    return out.view(batch, seqlen, *packed.shape[1:])
