"""Eager PyTorch references of the ops: the CPU path, the fallback where a kernel does not apply, and
the truth every kernel is tested against. Inputs are assumed validated (`rembert_fast.ops.contract`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def layer_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None = None,
    x_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eager LN(x + x_bias + residual) over the last dim, in x's dtype (transformers' op order)."""
    if x_bias is not None:
        x = x + x_bias
    if residual is not None:
        x = x + residual
    if weight.dtype != x.dtype:  # fp32 LN parameters on half x: CUDA's F.layer_norm refuses the mix
        return F.layer_norm(x.to(weight.dtype), (x.shape[-1],), weight, bias, eps).to(x.dtype)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _grads(out: torch.Tensor, dy: torch.Tensor, inputs: tuple[torch.Tensor | None, ...]) -> tuple:
    """d(out . dy) / d input for each input (None stays None), by eager autograd."""
    present = [t for t in inputs if t is not None]
    found = iter(torch.autograd.grad(out, present, dy))
    return tuple(next(found) if t is not None else None for t in inputs)


def _leaves(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    return tuple(t.detach().requires_grad_() if t is not None else None for t in tensors)


def layer_norm_backward_ref(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None = None,
    x_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Eager autograd of `layer_norm_ref`: (dx, d weight, d bias, d x_bias); dx is also d residual."""
    with torch.enable_grad():
        x, weight, bias, x_bias = _leaves(x, weight, bias, x_bias)
        out = layer_norm_ref(x, weight, bias, eps, residual=residual, x_bias=x_bias)
        return _grads(out, dy, (x, weight, bias, x_bias))


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


_EAGER_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": _gelu_fast,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "selu": F.selu,
}


def bias_act_ref(x: torch.Tensor, bias: torch.Tensor | None, activation: str = "gelu") -> torch.Tensor:
    """Eager act(x + bias) with transformers' definition of each activation, in x's dtype."""
    if bias is not None:
        x = x + bias
    return _EAGER_ACTIVATIONS[activation](x)


def bias_act_backward_ref(
    dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, activation: str = "gelu"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager autograd of `bias_act_ref`: (dx, d bias)."""
    with torch.enable_grad():
        x, bias = _leaves(x, bias)
        return _grads(bias_act_ref(x, bias, activation), dy, (x, bias))


def _gather_padded(
    x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, H, D) packed rows -> (B, max_seqlen, H, D) by a gather (padding rows repeat a real row or are
    zeros where T == 0) and the (B, max_seqlen) mask of real positions."""
    starts, lengths = cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    positions = torch.arange(max_seqlen, device=x.device)
    mask = positions[None, :] < lengths[:, None]  # (B, L)
    if x.shape[0] == 0:
        return x.new_zeros(mask.shape[0], max_seqlen, *x.shape[1:]), mask
    rows = (starts[:, None] + positions[None, :]).clamp(max=x.shape[0] - 1)  # (B, L)
    return x[rows], mask


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Eager varlen attention: gather each sequence into a (B, max_seqlen) padded batch, one masked
    `scaled_dot_product_attention`, gather the rows back.

    Causal masking is aligned to the bottom-right corner, as flash-attention's varlen functions do
    (query i of a sequence sees keys j <= i + len_k - len_q); a query row that sees no key gives zeros.
    Every shape follows from (batch, max_seqlen, T) alone (no `nonzero`, no host read), so
    torch.compile traces it without a graph break.
    """
    qp, _ = _gather_padded(q, cu_seqlens_q, max_seqlen_q)
    kp, k_mask = _gather_padded(k, cu_seqlens_k, max_seqlen_k)
    vp, _ = _gather_padded(v, cu_seqlens_k, max_seqlen_k)
    allowed = k_mask[:, None, None, :]  # (B, 1, 1, Lk)
    if causal:
        len_q = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
        len_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()
        q_pos = torch.arange(max_seqlen_q, device=q.device)[None, :] + (len_k - len_q)[:, None]  # (B, Lq)
        k_pos = torch.arange(max_seqlen_k, device=q.device)
        allowed = allowed & (k_pos[None, None, :] <= q_pos[:, :, None])[:, None]  # (B, 1, Lq, Lk)
    out = F.scaled_dot_product_attention(
        qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), attn_mask=allowed, scale=softmax_scale
    ).transpose(1, 2)  # (B, Lq, H, D)
    tokens = torch.arange(q.shape[0], device=q.device)
    batch = torch.searchsorted(cu_seqlens_q[1:].long(), tokens, right=True)  # each packed row's sequence
    return out[batch, tokens - cu_seqlens_q.long()[batch]].nan_to_num(0.0)  # (Tq, H, D)


def attention_backward_ref(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager autograd of `attention_ref`: (dq, dk, dv)."""
    with torch.enable_grad():
        q, k, v = _leaves(q, k, v)
        out = attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                            softmax_scale=softmax_scale)
        return _grads(out, dout, (q, k, v))


def attention_per_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Eager varlen attention on CPU: one `scaled_dot_product_attention` per sequence, on views of the
    packed rows (no padding, no mask, so no work on padding positions). Reads the offsets on the host,
    which costs nothing on CPU. Same results as `attention_ref`: bottom-right causal alignment, zeros
    for queries that see no key."""
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    pieces = []
    for b in range(len(starts_q) - 1):
        q_rows, k_rows = slice(starts_q[b], starts_q[b + 1]), slice(starts_k[b], starts_k[b + 1])
        len_q, len_k = q_rows.stop - q_rows.start, k_rows.stop - k_rows.start
        if len_q == 0:
            continue
        if len_k == 0:
            pieces.append(q.new_zeros(len_q, q.shape[1], v.shape[2]))
            continue
        mask, is_causal = None, False
        if causal and len_q == len_k:
            is_causal = True  # top-left and bottom-right alignment coincide
        elif causal:
            q_pos = torch.arange(len_q, device=q.device)[:, None] + (len_k - len_q)
            mask = torch.arange(len_k, device=q.device)[None, :] <= q_pos  # (len_q, len_k)
        out = F.scaled_dot_product_attention(
            q[q_rows].transpose(0, 1), k[k_rows].transpose(0, 1), v[k_rows].transpose(0, 1),
            attn_mask=mask, is_causal=is_causal, scale=softmax_scale,
        ).transpose(0, 1)  # (len_q, heads, head_dim)
        if mask is not None and len_q > len_k:
            out = out.nan_to_num(0.0)  # the first len_q - len_k queries see no key
        pieces.append(out)
    if not pieces:
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[2])
    return torch.cat(pieces, dim=0)


def attention_padded_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Eager padded attention through `scaled_dot_product_attention`; (B, L, H, D) in and out."""
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask.bool()[:, None, None, :]
    if causal:
        lq, lk = q.shape[1], k.shape[1]
        tri = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        mask = tri if mask is None else mask & tri
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=softmax_scale
    )
    return out.transpose(1, 2)


def embed_ref(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    type_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    proj_weight: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eager embedding stage in transformers' order: (word + type) + position, LN, optional projection."""
    x = F.embedding(input_ids, word_weight) + F.embedding(token_type_ids, type_weight)
    x = x + F.embedding(position_ids, position_weight)
    x = layer_norm_ref(x, ln_weight, ln_bias, eps)  # also takes fp32 LN parameters on half tables
    if proj_weight is not None:
        x = F.linear(x, proj_weight, proj_bias)
    return x
