"""PyTorch's own attention paths as competitors of the Triton varlen kernel for `ops.attention`.

Both take the op's arguments (validated by `rembert_fast.ops.contract`) and honour its contract:
bottom-right causal alignment, zeros for a query row that sees no key, (Tq, heads, head_dim) in q's
dtype out.

- `attention_sdpa_padded`: scatter the packed rows into a zeroed (B, Lmax, heads, head_dim) batch, one
  `scaled_dot_product_attention` with the key-padding mask, gather the real rows back. A batch whose
  sequences all have max_seqlen tokens (tokens == B * max_seqlen) is viewed as (B, L) without a copy
  and runs without a mask (so SDPA may take its flash kernel).
- `attention_torch_varlen`: `torch.nn.attention.varlen.varlen_attn` (flash-attention's varlen kernel,
  in torch where it exists), CUDA only, fp16/bf16, head_dim a multiple of 8 up to 256, one offset table
  for q and k (self-attention). `torch_varlen_status` says whether it can run for a class of calls.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F


def _positions(cu_seqlens: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each packed row's (sequence, position in it), from the offsets alone (no host read)."""
    rows = torch.arange(tokens, device=cu_seqlens.device)
    seq = torch.searchsorted(cu_seqlens[1:].long(), rows, right=True)
    return seq, rows - cu_seqlens.long()[seq]


def attention_sdpa_padded(
    q: torch.Tensor,  # (Tq, heads, head_dim)
    k: torch.Tensor,  # (Tk, heads, head_dim)
    v: torch.Tensor,  # (Tk, heads, head_dim)
    cu_seqlens_q: torch.Tensor,  # (B+1,) int32/int64
    cu_seqlens_k: torch.Tensor,  # (B+1,)
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Varlen attention as SDPA on the padded batch; (Tq, heads, head_dim) in q's dtype."""
    batch = cu_seqlens_q.shape[0] - 1
    heads, dim = q.shape[1], q.shape[2]
    lq, lk = int(max_seqlen_q), int(max_seqlen_k)
    if q.shape[0] == 0:
        return q.new_zeros(0, heads, v.shape[2])
    full = lk > 0 and q.shape[0] == batch * lq and k.shape[0] == batch * lk and (not causal or lq == lk)
    if full:  # every sequence is max_seqlen long: a plain (B, L) batch, no mask, no copy
        out = F.scaled_dot_product_attention(
            q.view(batch, lq, heads, dim).transpose(1, 2), k.view(batch, lk, heads, dim).transpose(1, 2),
            v.view(batch, lk, heads, v.shape[2]).transpose(1, 2), is_causal=causal, scale=softmax_scale,
        )  # (B, H, L, D)
        return out.transpose(1, 2).reshape(q.shape[0], heads, v.shape[2])
    seq_q, pos_q = _positions(cu_seqlens_q, q.shape[0])
    seq_k, pos_k = _positions(cu_seqlens_k, k.shape[0])
    qp = q.new_zeros(batch, lq, heads, dim)
    kp, vp = k.new_zeros(batch, lk, heads, dim), v.new_zeros(batch, lk, heads, v.shape[2])
    qp[seq_q, pos_q] = q
    kp[seq_k, pos_k] = k
    vp[seq_k, pos_k] = v
    len_q = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).long()
    len_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()
    key_pos = torch.arange(lk, device=q.device)
    allowed = (key_pos[None, :] < len_k[:, None])[:, None, None, :]  # (B, 1, 1, Lk)
    if causal:
        q_pos = torch.arange(lq, device=q.device)[None, :] + (len_k - len_q)[:, None]  # (B, Lq)
        allowed = allowed & (key_pos[None, None, :] <= q_pos[:, :, None])[:, None]  # (B, 1, Lq, Lk)
    out = F.scaled_dot_product_attention(
        qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), attn_mask=allowed, scale=softmax_scale
    ).transpose(1, 2)  # (B, Lq, H, D)
    return out[seq_q, pos_q].nan_to_num(0.0)


def torch_varlen_status(device_type: str, dtype: torch.dtype, head_dim: int,
                        self_attention: bool) -> str | None:
    """None where `attention_torch_varlen` can serve this class of calls, else why not. Never imports
    the module itself (its import loads torch._dynamo)."""
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    if device_type != "cuda":
        return f"torch's varlen attention runs on CUDA only, not {device_type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"torch's varlen attention takes float16/bfloat16, not {dtype}"
    if head_dim % 8 or head_dim > 256:
        return f"torch's varlen attention takes head_dim a multiple of 8 up to 256, not {head_dim}"
    if not self_attention:
        return "torch's varlen attention serves one offset table for q and k only"
    return None


def attention_torch_varlen(
    q: torch.Tensor,  # (T, heads, head_dim), CUDA, fp16/bf16
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,  # (B+1,) the same table as cu_seqlens_k
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Varlen attention through `torch.nn.attention.varlen.varlen_attn`; (T, heads, head_dim)."""
    from torch.nn.attention.varlen import varlen_attn

    def ready(t: torch.Tensor) -> torch.Tensor:
        return t if t.stride(-1) == 1 else t.contiguous()

    return varlen_attn(ready(q), ready(k), ready(v), cu_seqlens_q.int(), cu_seqlens_k.int(),
                       int(max_seqlen_q), int(max_seqlen_k), scale=softmax_scale,
                       window_size=(-1, 0) if causal else (-1, -1))
