"""Language-model losses that never hold the (tokens x vocabulary) logits (architecture: "LM losses").

RemBERT's decoder projects 1664 features onto a 250,300-token vocabulary, so its logits, their
log-softmax and their gradient dwarf the whole encoder's activations. In training, the masked and causal
LM heads therefore score only the positions that carry a label (not -100; after the causal shift), and
the decoder and the cross-entropy run together, in chunks of rows:

    for each chunk of at most `chunk_rows` labelled rows x_c (n, E):
        logits = x_c W^T + b                        (n, V), fp32
        loss  += sum(logsumexp(logits) - logits[target])
        g      = (softmax(logits) - onehot(target)) / divisor    in place of the logits
        dx_c   = g W;  dW += g^T x_c;  db += sum(g)              dW, db accumulated in fp32

so the gradient is computed inside the forward (as Liger-Kernel's fused linear cross-entropy does) and
the backward only rescales it by the incoming gradient. Memory: one chunk's logits and dW (the floor:
the decoder weight's own gradient). `divisor` is the number of labelled tokens (a mean, as
`F.cross_entropy` and transformers give), or `num_items_in_batch` when the caller passes it (a sum over the
accumulated batch's labelled tokens, transformers' `fixed_cross_entropy`).

Eager PyTorch on every device: the chunk GEMMs dominate and run in the compute dtype (the autocast dtype
when autocast is on, else the decoder's dtype); the softmax and its statistics run in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rembert_fast import ops

__all__ = ["CHUNK_ELEMENTS", "IGNORE_INDEX", "linear_cross_entropy", "linear_cross_entropy_ref",
           "prediction_loss"]

IGNORE_INDEX = -100
# Logit elements per chunk: 2**25 fp32 = 128 MiB, about 134 rows of RemBERT's vocabulary. Fewer, larger
# chunks read the decoder weight fewer times (each chunk reads W twice and dW once).
CHUNK_ELEMENTS = 1 << 25


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


class LinearCrossEntropy(torch.autograd.Function):
    """sum(CE(x W^T + b, targets)) / divisor with the gradient computed in the forward, chunk by chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,  # (N, E) labelled rows
        weight: torch.Tensor,  # (V, E) decoder weight
        bias: torch.Tensor | None,  # (V,) decoder bias
        targets: torch.Tensor,  # (N,) int64, each in [0, V)
        divisor: torch.Tensor,  # () float: the loss is the sum over rows divided by this
        chunk_rows: int,
    ) -> torch.Tensor:
        wants_x, wants_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wants_b = bias is not None and ctx.needs_input_grad[2]
        dtype = _compute_dtype(x, weight)
        with torch.autocast(x.device.type, enabled=False):
            xc, w = x.to(dtype), weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            rows, vocab = x.shape[0], weight.shape[0]
            total = torch.zeros((), dtype=torch.float32, device=x.device)
            grad_x = torch.empty_like(xc) if wants_x else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if wants_w else None
            grad_b = torch.zeros(vocab, dtype=torch.float32, device=x.device) if wants_b else None
            scale = divisor.to(device=x.device, dtype=torch.float32)
            for start in range(0, rows, chunk_rows):
                end = min(start + chunk_rows, rows)
                x_chunk, t_chunk = xc[start:end], targets[start:end]
                logits = (torch.addmm(b, x_chunk, w.t()) if b is not None else x_chunk @ w.t()).float()
                lse = torch.logsumexp(logits, dim=1)  # (n,)
                total += (lse - logits.gather(1, t_chunk[:, None]).squeeze(1)).sum()
                if not (wants_x or wants_w or wants_b):
                    continue
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, overwriting the logits
                grad[torch.arange(end - start, device=x.device), t_chunk] -= 1.0
                grad.div_(scale)  # (n, V) d loss / d logits
                if grad_b is not None:
                    grad_b += grad.sum(dim=0)
                grad_c = grad.to(dtype)
                if grad_x is not None:
                    grad_x[start:end] = grad_c @ w
                if grad_w is not None:
                    if dtype == torch.float32:
                        grad_w.addmm_(grad_c.t(), x_chunk)
                    else:
                        grad_w += (grad_c.t() @ x_chunk).float()
                del logits, grad, grad_c
        ctx.grads = (grad_x, grad_w, grad_b)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total / scale

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor) -> tuple:
        if ctx.grads is None:
            raise RuntimeError("the fused LM loss's gradient was already consumed: backward runs once per "
                               "forward (retain_graph is not supported)")
        grads, ctx.grads = ctx.grads, None  # release ctx's reference, so AccumulateGrad can take dW as is
        out = []
        for grad, dtype in zip(grads, ctx.dtypes, strict=True):
            if grad is not None:
                grad = grad.mul_(grad_loss.to(grad.dtype)).to(dtype)
            out.append(grad)
        return out[0], out[1], out[2], None, None, None


def linear_cross_entropy(
    x: torch.Tensor,  # (N, E) the rows to score (already the labelled ones)
    weight: torch.Tensor,  # (V, E)
    bias: torch.Tensor | None,  # (V,)
    targets: torch.Tensor,  # (N,) int64 in [0, V)
    divisor: torch.Tensor | float | int,  # the sum over rows is divided by this
    chunk_rows: int | None = None,  # default: CHUNK_ELEMENTS // V rows per chunk
) -> torch.Tensor:
    """() fp32 `sum_i CE(x_i W^T + b, targets_i) / divisor`, never holding more than one chunk's logits.

    Gradients flow to `x`, `weight` and `bias` (those that require them); a second backward through the
    same call raises RuntimeError. N = 0 gives 0 / divisor (nan for divisor 0, as a mean over no token).
    Raises ValueError for mismatched shapes or a non-positive `chunk_rows`."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(weight.shape)} must be (N, E) and (V, E)")
    if targets.shape != (x.shape[0],):
        raise ValueError(f"targets has shape {tuple(targets.shape)}; expected ({x.shape[0]},)")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({weight.shape[0]},)")
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    divisor = torch.as_tensor(divisor, dtype=torch.float32, device=x.device)
    return LinearCrossEntropy.apply(x, weight, bias, targets, divisor, chunk_rows)


def linear_cross_entropy_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
    divisor: torch.Tensor | float | int,
) -> torch.Tensor:
    """The same loss through the whole (N, V) logits and autograd: the reference of the tests."""
    logits = F.linear(x, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(divisor, dtype=torch.float32)


def _fusable(decoder: nn.Module) -> bool:
    """The decoder can be read as W, b instead of called: a plain Linear without hooks (a PEFT or
    quantised wrapper, or a hook, is called instead, so its extra work is kept)."""
    return type(decoder) is nn.Linear and not decoder._forward_hooks and not decoder._forward_pre_hooks


def prediction_loss(
    head: nn.Module,  # a RemBertLMPredictionHead (ours or transformers'): dense, LayerNorm, decoder
    rows: torch.Tensor,  # (N, hidden) encoder rows of the labelled positions
    targets: torch.Tensor,  # (N,) int64 labels of those rows, none of them -100
    activation: str,  # config.hidden_act
    num_items_in_batch: torch.Tensor | int | None = None,  # None: the mean over the N rows
) -> torch.Tensor:
    """() fp32 LM loss of the prediction head at the given rows: transform (dense, activation, LayerNorm)
    then the chunked decoder + cross-entropy (`linear_cross_entropy`); the (N, vocab) logits never
    exist. A decoder that is not a plain Linear is called on the rows instead (still only N of them)."""
    x = ops.linear_bias_act(rows, head.dense.weight, head.dense.bias, activation)
    x = ops.layer_norm(x, head.LayerNorm.weight, head.LayerNorm.bias, head.LayerNorm.eps)  # (N, E)
    divisor = targets.shape[0] if num_items_in_batch is None else num_items_in_batch
    if _fusable(head.decoder):
        return linear_cross_entropy(x, head.decoder.weight, head.decoder.bias, targets, divisor)
    logits = head.decoder(x).float()
    return F.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(divisor, device=x.device)
