"""Input validation for the models: every bad input a caller can pass raises ValueError (TypeError for
a non-tensor) naming the value; plus the masks and flags the classic path derives from the inputs."""

from __future__ import annotations

from typing import Any

import torch

from rembert_fast import ops, padding
from rembert_fast.configuration import RemBertConfig
from rembert_fast.outputs import PastKeyValues


def config_flag(config: Any, name: str, value: bool | None) -> bool:
    return value if value is not None else getattr(config, name, False)


def return_dict_of(config: Any, value: bool | None) -> bool:
    return value if value is not None else getattr(config, "return_dict", True)


def one_cache(past_key_values: PastKeyValues | None, cache: PastKeyValues | None) -> PastKeyValues | None:
    if past_key_values is not None and cache is not None:
        raise ValueError(
            "pass the KV cache once: past_key_values or cache (its transformers 5 name), not both"
        )
    return past_key_values if past_key_values is not None else cache


def check_inputs(
    config: RemBertConfig,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    weight: torch.Tensor,  # the word-embedding table: the device and dtype inputs must match
) -> tuple[int, int]:
    """Types, shapes, devices and dtypes of the inputs (id ranges are checked where the ids are read,
    mask values where the mask is read); returns (B, L). No host sync."""
    named = (("input_ids", input_ids), ("inputs_embeds", inputs_embeds), ("attention_mask", attention_mask),
             ("token_type_ids", token_type_ids), ("position_ids", position_ids))
    for name, tensor in named:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device != weight.device:
            raise ValueError(f"{name} is on {tensor.device} but the model is on {weight.device}; "
                             f"move it with .to({str(weight.device)!r})")
    for name, tensor in named[3:]:
        if tensor is not None and tensor.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be int64 or int32, got {tensor.dtype}")
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("pass exactly one of input_ids and inputs_embeds (got both)")
    if input_ids is None and inputs_embeds is None:
        raise ValueError("pass exactly one of input_ids and inputs_embeds (got neither)")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seqlen), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be int64 or int32, got {input_ids.dtype}")
        batch, seqlen = input_ids.shape
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.input_embedding_size:
            raise ValueError(
                f"inputs_embeds must be (batch, seqlen, {config.input_embedding_size}), got shape "
                f"{tuple(inputs_embeds.shape)}"
            )
        if inputs_embeds.dtype != weight.dtype:
            raise ValueError(f"inputs_embeds is {inputs_embeds.dtype} but the model is {weight.dtype}; "
                             f"cast it with .to({weight.dtype})")
        batch, seqlen = inputs_embeds.shape[:2]
    if seqlen == 0:
        raise ValueError(f"the inputs have seqlen 0 (shape {(batch, seqlen)}): nothing to encode")
    if token_type_ids is not None and tuple(token_type_ids.shape) != (batch, seqlen):
        raise ValueError(
            f"token_type_ids has shape {tuple(token_type_ids.shape)}; expected {(batch, seqlen)}"
        )
    if position_ids is not None and tuple(position_ids.shape) not in ((batch, seqlen), (1, seqlen)):
        raise ValueError(
            f"position_ids has shape {tuple(position_ids.shape)}; expected {(batch, seqlen)} or {(1, seqlen)}"
        )
    return batch, seqlen


def check_mask(
    name: str, mask: torch.Tensor | None, batch: int, q_len: int, k_len: int, heads: int | None = None
) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    expected = {2: (batch, k_len), 3: (batch, q_len, k_len)}.get(mask.dim())
    if mask.dim() == 4:
        ok = mask.shape[0] == batch and mask.shape[2:] == (q_len, k_len) and mask.shape[1] in (1, heads)
        expected = (batch, "1|heads", q_len, k_len)
    else:
        ok = expected is not None and tuple(mask.shape) == expected
    if not ok:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}; expected {(batch, k_len)} (2-D), "
            f"{(batch, q_len, k_len)} (3-D) or (batch, 1|heads, {q_len}, {k_len}) (4-D)"
        )


def check_rows_have_tokens(mask: torch.Tensor | None) -> None:
    """A 2-D mask row (over cached and new keys) with no real token raises padding.NoRealTokensError
    naming the row. One host read; 3-D/4-D masks mark (query, key) pairs and are not checked."""
    if mask is None or mask.dim() != 2 or mask.numel() == 0:
        return
    empty = ~mask.ne(0).any(dim=1)
    if bool(empty.any()):
        raise padding.NoRealTokensError(padding.empty_row_message(int(empty.to(torch.uint8).argmax())))


def check_num_labels(name: str, config: RemBertConfig) -> None:
    if config.num_labels < 1:
        raise ValueError(f"{name} needs num_labels >= 1, got {config.num_labels}")


def check_past(config: RemBertConfig, past: PastKeyValues | None, batch: int) -> int:
    """Validate a legacy KV cache, every layer; returns the cached length."""
    if past is None:
        return 0
    if not isinstance(past, (tuple, list)) or len(past) != config.num_hidden_layers:
        raise ValueError(
            f"past_key_values must be a tuple of {config.num_hidden_layers} per-layer tuples (the "
            f"legacy format this model returns), got {type(past).__name__}"
            + (f" of length {len(past)}" if isinstance(past, (tuple, list)) else "")
        )
    sizes = (2, 4) if config.add_cross_attention else (2,)
    past_length = None
    for i, layer in enumerate(past):
        if not isinstance(layer, (tuple, list)) or len(layer) not in sizes:
            raise ValueError(
                f"past_key_values[{i}] must be a tuple of {' or '.join(map(str, sizes))} tensors (key, value"
                f"{', cross key, cross value' if config.add_cross_attention else ''}), got "
                f"{type(layer).__name__}"
                + (f" of length {len(layer)}" if isinstance(layer, (tuple, list)) else "")
            )
        for j, tensor in enumerate(layer[:2]):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"past_key_values[{i}][{j}] must be a torch.Tensor, got {type(tensor).__name__}"
                )
            length = tensor.shape[2] if tensor.dim() == 4 else -1
            if past_length is None:
                past_length = length
            expected = (batch, config.num_attention_heads, past_length, config.head_dim)
            if tuple(tensor.shape) != expected or length != past_length:
                raise ValueError(
                    f"past_key_values[{i}][{j}] has shape {tuple(tensor.shape)}; expected ({batch}, "
                    f"{config.num_attention_heads}, past_length, {config.head_dim}) with the same "
                    f"past_length in every layer ({past_length} in the first)"
                )
    return past_length


def check_labels(
    name: str,
    labels: torch.Tensor,
    shape: tuple[int, ...],  # the shape labels must have (any shape with as many elements when reshaped)
    classes: int | None,  # class ids must lie in [0, classes) or be -100 (ignored); None: float targets
    like: torch.Tensor,  # the logits: labels must be on their device
) -> None:
    """Raise ValueError naming what is wrong with `labels`, before a loss function fails obscurely (or,
    on CUDA, with a device-side assert). One host sync, only when labels are given."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.device != like.device:
        raise ValueError(f"{name} is on {labels.device} but the logits are on {like.device}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(labels.shape)}; expected {shape}")
    if classes is None:
        return
    if labels.dtype != torch.int64:  # what cross_entropy takes (it fails obscurely on int32)
        raise ValueError(f"{name} must be int64 class ids, got {labels.dtype} (use .long())")
    invalid = (labels != -100) & ((labels < 0) | (labels >= classes))
    first = labels.flatten().index_select(0, invalid.flatten().to(torch.uint8).argmax().view(1))[0]
    bad, value = torch.stack([invalid.any().long(), first.long()]).tolist() if labels.numel() else (0, 0)
    if bad:
        raise ValueError(f"{name} contains {value}, outside [0, {classes}) (and not -100, the ignored value)")


def loss_reads_padding(attention_mask: Any, labels: Any = None, shift: int = 0, spans: bool = False) -> bool:
    """Whether a head's loss reads logits at padding positions, which the packed path leaves zero and
    transformers' padded forward computes: the head then runs the padded path for the call.

    `spans=True` (question answering with positions given): its softmax runs over every position, so
    any padding is read. Otherwise `labels` (B, L) are token labels, each scored against the logit `shift`
    positions before it (1 for a causal LM, 0 for masked LM and token classification): a label other
    than -100 whose logit sits at a padding position is read. False without a 2-D tensor mask, without
    labels, or for labels of another shape (check_labels reports those). One host read otherwise."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        return False
    if spans:
        return bool((attention_mask == 0).any())
    if not isinstance(labels, torch.Tensor) or labels.shape != attention_mask.shape:
        return False  # no labels (an inference call): nothing computed, nothing read
    padding = attention_mask == 0
    if shift:
        padding, labels = padding[:, :-shift], labels[:, shift:]
    return bool((padding & (labels != -100)).any())


def additive_mask(
    mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
    device: torch.device,
    causal: bool,
    name: str = "attention_mask",
) -> torch.Tensor | None:
    """A (B, 1|heads, q_len, k_len) mask added to the scores: 0 where allowed, finfo.min elsewhere.

    2-D masks mark real keys (combined with the causal triangle for decoders, aligned so the last query
    sees every key); 3-D masks give (query, key) pairs; 4-D bool masks mark allowed pairs and 4-D
    float masks are already additive (transformers 5's convention), used as given.
    """
    keep = None
    if mask is not None:
        if mask.dim() == 4 and mask.dtype != torch.bool:
            return mask.to(dtype)
        if mask.dtype != torch.bool:
            invalid = (mask != 0) & (mask != 1)
            if invalid.any():  # the classic path is the eager one: this sync is not on the fast path
                raise ValueError(f"{name} contains {mask[invalid][0].item():g}; expected 1 (attend) "
                                 "or 0 (masked). An additive mask (0 / -inf) must be 4-D, or turned into 0/1")
        keep = {2: lambda m: m[:, None, None, :], 3: lambda m: m[:, None, :, :], 4: lambda m: m}[mask.dim()](
            mask.ne(0)
        )
    if causal and (mask is None or mask.dim() == 2):
        triangle = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
        keep = triangle[None, None] if keep is None else keep & triangle
    if keep is None:
        return None
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, torch.finfo(dtype).min)


def per_layer_head_masks(
    head_mask: torch.Tensor | None, layers: int, heads: int, dtype: torch.dtype
) -> list[torch.Tensor | None]:
    """(heads,) or (layers, heads) -> per-layer (1, heads, 1, 1) multipliers of attention probabilities."""
    if head_mask is None:
        return [None] * layers
    if head_mask.dim() == 1 and head_mask.shape[0] == heads:
        head_mask = head_mask.expand(layers, heads)
    if tuple(head_mask.shape) != (layers, heads):
        raise ValueError(
            f"head_mask has shape {tuple(head_mask.shape)}; expected ({heads},) or ({layers}, {heads})"
        )
    return [m.to(dtype)[None, :, None, None] for m in head_mask]


def flat_positions(positions: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """masked_positions as (B, L) bool or (N, 2) (row, col) -> (N,) flat indices into B*L."""
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"masked_positions must be a torch.Tensor, got {type(positions).__name__}")
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch, seqlen):
            raise ValueError(
                f"masked_positions (bool) has shape {tuple(positions.shape)}; expected {(batch, seqlen)}"
            )
        return torch.nonzero(positions.reshape(-1), as_tuple=False).flatten()
    if positions.dim() != 2 or positions.shape[1] != 2 or positions.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"masked_positions must be a (batch, seqlen) bool mask or an (N, 2) integer tensor of "
            f"(row, column) pairs, got {positions.dtype} of shape {tuple(positions.shape)}"
        )
    ops.check_ids("masked_positions rows", positions[:, 0], batch, "batch")
    ops.check_ids("masked_positions columns", positions[:, 1], seqlen, "seqlen")
    return positions[:, 0].long() * seqlen + positions[:, 1].long()
