"""Padding-free batches (transformers' `DataCollatorWithFlattening`): several sequences concatenated in
one (1, T) row, each with position ids restarting at the same first value, no attention mask; or the
same with FlashAttention's `cu_seq_lens_q/k` and `max_length_q/k` (architecture: "Padding-free
batches").

Such a batch runs as T packed rows with one sequence per restart: attention stays inside each
sequence, so every token's result equals running its sequence alone, on every backend (transformers'
own models do so only under FlashAttention).
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["Flattened", "flattened_sequences", "block_diagonal_mask", "restarting_positions",
           "check_max_lengths"]

Flattened = tuple[torch.Tensor, int]  # (n+1,) int32 cumulative sequence lengths from 0, the longest length


def _check_offsets(name: str, offsets: torch.Tensor, tokens: int) -> list[int]:
    if not isinstance(offsets, torch.Tensor) or offsets.dim() != 1 or offsets.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor of cumulative sequence lengths (n+1 entries), got "
                         f"{offsets if not isinstance(offsets, torch.Tensor) else tuple(offsets.shape)}")
    values = offsets.tolist()
    if values[0] != 0 or values[-1] != tokens or any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{name}={values} must rise strictly from 0 to the row's {tokens} tokens")
    return values


def flattened_sequences(
    source: torch.Tensor,  # input_ids (B, L) or inputs_embeds (B, L, E)
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,  # (B, L) or (1, L)
    cu_seq_lens_q: torch.Tensor | None = None,  # (n+1,) int32, FlashAttention's keyword
    cu_seq_lens_k: torch.Tensor | None = None,
) -> Flattened | None:
    """The sequences of a padding-free batch, or None for an ordinary one.

    A batch is padding-free when it has one row and no attention mask and either `cu_seq_lens_q/k` are
    given (they must be equal: self-attention) or its position ids are not one run counting up from their
    minimum (transformers' rule); a sequence then starts at every position holding that minimum (and at
    column 0). One host read, only for a single-row batch with position ids or offsets. Raises ValueError
    naming bad offsets, offsets with a mask or several rows, or different q/k offsets.
    """
    given = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
    batch, tokens = source.shape[:2]
    if given is not None:
        if batch != 1 or attention_mask is not None:
            mask = "given" if attention_mask is not None else None
            raise ValueError(f"cu_seq_lens_q/k describe one flattened row without attention_mask; got "
                             f"{batch} rows and attention_mask={mask}")
        name = "cu_seq_lens_q" if cu_seq_lens_q is not None else "cu_seq_lens_k"
        values = _check_offsets(name, given, tokens)
        if (cu_seq_lens_q is not None and cu_seq_lens_k is not None
                and cu_seq_lens_k.tolist() != values):
            raise ValueError(f"cu_seq_lens_k={cu_seq_lens_k.tolist()} differs from cu_seq_lens_q={values}; "
                             "RemBERT's self-attention needs the same offsets for queries and keys")
    else:
        if batch != 1 or attention_mask is not None or position_ids is None or tokens < 2:
            return None
        positions = position_ids.reshape(-1)
        if positions.numel() != tokens:
            return None  # a shape error check_inputs reports
        values = positions.tolist()
        low = min(values)
        if values == list(range(low, low + tokens)):
            return None
        starts = [i for i, p in enumerate(values) if p == low]
        values = sorted({0, *starts, tokens})
    cu_seqlens = torch.tensor(values, dtype=torch.int32, device=source.device)
    return cu_seqlens, max(b - a for a, b in itertools.pairwise(values))


def block_diagonal_mask(cu_seqlens: torch.Tensor, tokens: int, causal: bool) -> torch.Tensor:
    """(1, 1, T, T) bool: query i may attend key j when both lie in the same sequence (and j <= i when
    `causal`). The classic path's mask for a padding-free batch it runs (e.g. `output_attentions`)."""
    sequence = torch.repeat_interleave(torch.arange(cu_seqlens.numel() - 1, device=cu_seqlens.device),
                                       cu_seqlens.diff().long(), output_size=tokens)  # (T,) sequence of each
    keep = sequence[:, None] == sequence[None, :]
    if causal:
        keep = keep.tril()
    return keep[None, None]


def restarting_positions(cu_seqlens: torch.Tensor, tokens: int) -> torch.Tensor:
    """(1, T) position ids counting from 0 in each sequence (the default of a padding-free batch)."""
    starts = cu_seqlens[:-1].long().repeat_interleave(cu_seqlens.diff().long(), output_size=tokens)
    return (torch.arange(tokens, device=cu_seqlens.device) - starts)[None]


def check_max_lengths(
    sequences: Flattened | None, max_length_q: int | None, max_length_k: int | None
) -> None:
    """`max_length_q/k`, when given, must be the longest sequence of the offsets (they are derived from
    the offsets; a different value means the keywords describe another batch)."""
    for name, value in (("max_length_q", max_length_q), ("max_length_k", max_length_k)):
        if value is None:
            continue
        if sequences is None:
            raise ValueError(f"{name}={value} was given without cu_seq_lens_q/k or a padding-free batch")
        if int(value) != sequences[1]:
            raise ValueError(f"{name}={int(value)} but the longest sequence in cu_seq_lens is {sequences[1]}")
