"""What may serve a call class, and each candidate as a call on random inputs of the class's bucket shape.

Candidates per op (`registry.OPS`): the eager composition always; the op's fused path where the
op-level decision (`dispatch.backend_for`) chose it; each competitor that can run for the class
(`extra_status`) and passed its own probe:

    layer_norm, bias_act, attention_padded   eager, triton
    linear_bias_act                          eager (addmm, eager activation), triton (mm, fused epilogue)
    linear_residual_layer_norm               eager (addmm, eager LN), triton (mm, fused LN epilogue)
    attention                                eager, triton, sdpa_padded, torch_varlen (`competitors`)
    embed                                    eager, cuda (the extension)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rembert_fast import extension
from rembert_fast.ops import competitors, reference, registry
from rembert_fast.ops.call_class import CallClass

_EMBED_ROWS = 4096  # table rows of a timed embed: a gather's cost barely depends on the vocabulary


def extra_status(op: str, name: str, variant: tuple, width: tuple, device_type: str,
                 dtype: torch.dtype) -> str | None:
    """None where the competitor `name` of `op` can run for this call class, else why not."""
    if name not in registry.get(op).competitors:
        raise ValueError(f"op {op!r} has no candidate {name!r}")
    if name == "torch_varlen":
        causal, self_attention = variant
        return competitors.torch_varlen_status(device_type, dtype, width[1], self_attention)
    return None


def names(call: CallClass, device_type: str, base: str, probed_ok: Callable[[str], str | None]
          ) -> tuple[tuple[str, ...], list[str]]:
    """(the candidates that may serve `call`, why each competitor left out is): eager always, the op's
    fused path where the op-level decision `base` chose it, each competitor that can run here and whose
    probe `probed_ok(name)` passes (None, else why not)."""
    chosen = ("eager",) + ((base,) if base != "eager" else ())
    errors = []
    for extra in registry.get(call.op).competitors:
        why = extra_status(call.op, extra, call.variant, call.width, device_type, call.dtype)
        if why is None:
            why = probed_ok(extra)
        if why is None:
            chosen += (extra,)
        else:
            errors.append(f"{extra}: {why}")
    return chosen, errors


_LENGTH_CYCLE = (1.0, 0.75, 0.5, 0.875, 0.625)  # sequence lengths of a timed attention, as parts of seqlen


def _lengths(tokens: int, seqlen: int) -> list[int]:
    """Sequence lengths filling `tokens` rows, the longest `seqlen`, the others shorter where a sequence
    can be (seqlen > 1 and more than one sequence): a real packed batch has uneven lengths, and so does a
    CUDA-graph bucket (its dummy sequences), and an attention path may take a cheaper branch when every
    sequence has the longest length (`competitors.attention_sdpa_padded`'s no-copy, no-mask one)."""
    lengths, left = [], tokens
    while left > 0:
        length = min(max(int(seqlen * _LENGTH_CYCLE[len(lengths) % len(_LENGTH_CYCLE)]), 1), left)
        lengths.append(length)
        left -= length
    return lengths


def calls(call: CallClass, device: torch.device, names: tuple[str, ...]) -> dict[str, Callable[[], object]]:
    """{name: fn} for each candidate in `names`, each a call of it on one input of the class's bucket
    shape, drawn from a private generator (the caller's random stream is untouched).

    ValueError for an op or candidate this module does not know."""
    gen = torch.Generator(device=device).manual_seed(0)

    def r(*shape: int, high: int | None = None) -> torch.Tensor:  # floats of the class's dtype; ids < high
        if high is not None:
            return torch.randint(0, high, shape, generator=gen, device=device)
        return torch.randn(*shape, generator=gen, device=device, dtype=call.dtype)

    args, impls = _TABLES[registry.get(call.op).name](r, call.variant, call.width, call.tokens, call.seqlen,
                                                       device)
    unknown = set(names) - set(impls)
    if unknown:
        raise ValueError(f"op {call.op!r} has no candidate {sorted(unknown)}; it has {sorted(impls)}")
    return {name: (lambda fn=impls[name]: fn(*args)) for name in names}


def _layer_norm(r, variant, width, tokens, seqlen, device):
    from rembert_fast.kernels import layer_norm as kernel

    has_residual, has_x_bias = variant
    (n,) = width
    args = (r(tokens, n), r(n), r(n), 1e-12, r(tokens, n) if has_residual else None,
            r(n) if has_x_bias else None)
    return args, {"eager": lambda x, w, b, eps, res, xb: reference.layer_norm_ref(x, w, b, eps, res, xb),
                  "triton": kernel.layer_norm}


def _bias_act(r, variant, width, tokens, seqlen, device):
    from rembert_fast.kernels import activation as kernel

    activation, has_bias = variant
    (n,) = width
    args = (r(tokens, n), r(n) if has_bias else None, activation)
    return args, {"eager": reference.bias_act_ref, "triton": kernel.bias_act}


def _attention(r, variant, width, tokens, seqlen, device):
    from rembert_fast.kernels import attention as kernel

    causal, _ = variant
    heads, dim = width
    lengths = _lengths(tokens, seqlen)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q, k, v = (r(tokens, heads, dim) for _ in range(3))
    args = (q, k, v, cu, cu, max(lengths), max(lengths), causal)

    def eager(q, k, v, cu_q, cu_k, max_q, max_k, c):  # what ops.attention runs eagerly on this device
        if device.type == "cpu":
            return reference.attention_per_sequence(q, k, v, cu_q, cu_k, causal=c)
        return reference.attention_ref(q, k, v, cu_q, cu_k, max_q, max_k, causal=c)

    return args, {"eager": eager, "triton": kernel.attention_varlen,
                  "sdpa_padded": competitors.attention_sdpa_padded,
                  "torch_varlen": competitors.attention_torch_varlen}


def _attention_padded(r, variant, width, tokens, seqlen, device):
    from rembert_fast.kernels import attention as kernel

    causal, has_mask = variant
    heads, dim = width
    batch = max(tokens // seqlen, 1)
    q, k, v = (r(batch, seqlen, heads, dim) for _ in range(3))
    mask = None
    if has_mask:  # the last sequence half padding
        mask = torch.ones(batch, seqlen, dtype=torch.bool, device=device)
        mask[-1, max(seqlen // 2, 1):] = False
    args = (q, k, v, mask, causal)
    return args, {"eager": lambda q, k, v, m, c: reference.attention_padded_ref(q, k, v, m, causal=c),
                  "triton": kernel.attention_padded}


def _embed(r, variant, width, tokens, seqlen, device):
    (has_projection,) = variant
    e, hidden = width
    ids = r(tokens, high=_EMBED_ROWS)
    zeros = torch.zeros_like(ids)
    args = (ids, ids % 512, zeros, r(_EMBED_ROWS, e), r(512, e), r(2, e), r(e), r(e), 1e-12,
            r(hidden, e) if has_projection else None, r(hidden) if has_projection else None)

    def extension_embed(*a):
        return extension.embed(extension.load(), *a, check_ids=False)

    return args, {"eager": reference.embed_ref, "cuda": extension_embed}


def _linear_bias_act(r, variant, width, tokens, seqlen, device):
    from rembert_fast.kernels import activation as kernel

    (activation,) = variant
    n_in, n_out = width
    args = (r(tokens, n_in), r(n_out, n_in), r(n_out))
    return args, {"eager": lambda x, w, b: reference.bias_act_ref(F.linear(x, w, b), None, activation),
                  "triton": lambda x, w, b: kernel.bias_act(F.linear(x, w), b, activation)}


def _linear_residual_layer_norm(r, variant, width, tokens, seqlen, device):
    from rembert_fast.kernels import layer_norm as kernel

    n_in, n_out = width
    args = (r(tokens, n_in), r(n_out, n_in), r(n_out), r(tokens, n_out), r(n_out), r(n_out))
    return args, {
        "eager": lambda x, w, b, res, lw, lb: reference.layer_norm_ref(F.linear(x, w, b), lw, lb, 1e-12, res),
        "triton": lambda x, w, b, res, lw, lb: kernel.layer_norm(F.linear(x, w), lw, lb, 1e-12, res, b),
    }


_TABLES = registry.covers({
    "layer_norm": _layer_norm,
    "bias_act": _bias_act,
    "attention": _attention,
    "attention_padded": _attention_padded,
    "embed": _embed,
    "linear_bias_act": _linear_bias_act,
    "linear_residual_layer_norm": _linear_residual_layer_norm,
}, "the candidate calls")
