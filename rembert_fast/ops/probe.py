"""Probes: run one fused op and its eager reference on a small random input and say whether they agree.

The input is sized from the launch's tiling, so that a kernel wrong only past its first tile fails: two
programs or more along every dimension the grid tiles, the last one partial (rows of LayerNorm, rows and
column blocks of bias + activation, rows of the embedding, heads), and for attention three sequences of
uneven lengths, the longest one and a half times the largest block the launch may pick (two query
programs and two key tiles), the others shorter than a tile. Still small: the probe's cost is the
kernel's compile.

A probe compares the fused kernel's output on a fixed-seed input with an fp32 reference of the same
inputs (its matmuls in full fp32, TF32 off whatever the user set); it passes where the kernel's max
error is at most twice the same-dtype eager error plus a floor (the error a correct kernel cannot avoid:
rounding to its output dtype once, and fp32 reassociation).
`run_probe(op, device, dtype, candidate=None)` returns None on agreement, else a one-line reason
(mismatch, or the exception a compile or launch raised). `candidate` names a competitor other than the
op's fused path (`registry.OPS`), probed on the same input against the same reference. The ops with
an activation are probed per activation: `op[activation]` (e.g. "bias_act[gelu]") runs only that one
(each activation is its own kernel specialisation, so its own compile); a bare name runs every one.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from rembert_fast import extension
from rembert_fast.kernels._launch import interpreting
from rembert_fast.ops import competitors, reference, registry
from rembert_fast.ops.contract import ACTIVATIONS

_WIDTH = 96  # LayerNorm and embedding width: not a power of two, one block wide
_HEADS, _HEAD_DIM = 2, 64
_EMBED_ROWS_PER_BLOCK = 4  # the extension's launch: a warp per row, 4 warps a block (csrc/embed_kernel.cu)


def _tiled(per_program: int) -> int:
    """A length covering one full program of `per_program` and an uneven part of a second."""
    return per_program + per_program // 2 + 1


def _bias_act_width(kernel) -> int:
    """The narrowest width above _WIDTH, not a multiple of 16, that the bias + activation launch splits
    into two column blocks or more."""
    return next(n for n in itertools.count(_WIDTH + 1)
                if n % 16 and n > kernel.launch_config(n)[1])


def _attention_lengths() -> tuple[int, int, int]:
    """Three uneven sequence lengths from the attention launch's largest block (the interpreter's
    config, else the largest any autotuned config may pick): one and a half tiles, then two under one."""
    from rembert_fast.kernels import attention as kernel

    configs = [kernel.INTERPRETER_CONFIG] if interpreting() else kernel.CONFIGS
    tile = max(max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in configs)
    return _tiled(tile), tile // 2 + 3, tile // 4 + 2


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def _layer_norm_case(gen: torch.Generator) -> tuple[tuple, Callable, Callable]:
    from rembert_fast.kernels import layer_norm as kernel

    rows = _tiled(kernel.launch_config(_WIDTH, 4)[1])  # the rows a program takes do not depend on dtype
    args = (_rand(gen, rows, _WIDTH), _rand(gen, _WIDTH), _rand(gen, _WIDTH), 1e-12,
            _rand(gen, rows, _WIDTH), _rand(gen, _WIDTH))

    def variants(fn: Callable) -> Callable:  # with bias, residual and x_bias, then with none of them
        return lambda x, w, b, eps, res, xb: torch.cat([fn(x, w, b, eps, res, xb), fn(x, w, None, eps)])

    def ref(x, w, b, eps, res=None, xb=None):
        return reference.layer_norm_ref(x, w, b, eps, residual=res, x_bias=xb)

    return args, variants(lambda *a: kernel.layer_norm(*a)), variants(ref)


def _bias_act_case(gen: torch.Generator, activations: tuple[str, ...] = ACTIVATIONS
                   ) -> tuple[tuple, Callable, Callable]:
    from rembert_fast.kernels import activation as kernel

    def every_activation(fn: Callable) -> Callable:  # each activation, with and without a bias
        return lambda x, b: torch.cat([fn(x, bias, act) for act in activations for bias in (b, None)])

    width = _bias_act_width(kernel)
    args = (2 * _rand(gen, _tiled(kernel.launch_config(width)[0]), width), _rand(gen, width))
    return args, every_activation(lambda *a: kernel.bias_act(*a)), every_activation(reference.bias_act_ref)


def _attention_case(gen: torch.Generator) -> tuple[tuple, Callable, Callable]:
    from rembert_fast.kernels import attention as kernel

    lengths = _attention_lengths()
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    qkv = [_rand(gen, sum(lengths), _HEADS, _HEAD_DIM) for _ in range(3)]
    args = (*qkv, cu, cu, max(lengths), max(lengths))

    def both(fn: Callable) -> Callable:  # without and with the causal mask
        return lambda *a: torch.cat([fn(*a), fn(*a, True)])

    return args, both(kernel.attention_varlen), both(reference.attention_ref)


def _attention_padded_case(gen: torch.Generator) -> tuple[tuple, Callable, Callable]:
    from rembert_fast.kernels import attention as kernel

    lengths = _attention_lengths()
    qkv = [_rand(gen, len(lengths), max(lengths), _HEADS, _HEAD_DIM) for _ in range(3)]
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]

    def fused(q, k, v, m):  # without and with the causal mask
        return torch.cat([kernel.attention_padded(q, k, v, m), kernel.attention_padded(q, k, v, m, True)])

    def ref(q, k, v, m):
        return torch.cat([reference.attention_padded_ref(q, k, v, m),
                          reference.attention_padded_ref(q, k, v, m, causal=True)])

    return (*qkv, mask), fused, ref


def _embed_case(gen: torch.Generator) -> tuple[tuple, Callable, Callable]:
    rows = _tiled(_EMBED_ROWS_PER_BLOCK)
    ids = torch.randint(0, 50, (rows,), generator=gen)
    args = (ids, torch.arange(rows), ids % 2, _rand(gen, 50, _WIDTH), _rand(gen, rows, _WIDTH),
            _rand(gen, 2, _WIDTH), _rand(gen, _WIDTH), _rand(gen, _WIDTH), 1e-12, _rand(gen, 48, _WIDTH),
            _rand(gen, 48))

    def fused(*a):
        module = extension.load()
        if module is None:
            raise RuntimeError(f"the extension is unavailable: {extension.status()[1]}")
        return extension.embed(module, *a, check_ids=False)

    return args, fused, reference.embed_ref


def _linear_bias_act_case(gen: torch.Generator, activations: tuple[str, ...] = ACTIVATIONS
                          ) -> tuple[tuple, Callable, Callable]:
    from rembert_fast.kernels import activation as kernel

    def every_activation(fn: Callable) -> Callable:  # the GEMM then each activation
        return lambda x, w, b: torch.cat([fn(x, w, b, act) for act in activations])

    width = _bias_act_width(kernel)  # the GEMM's output: the epilogue's input
    args = (_rand(gen, _tiled(kernel.launch_config(width)[0]), _WIDTH), _rand(gen, width, _WIDTH) / 8,
            _rand(gen, width))
    return (args, every_activation(lambda x, w, b, act: kernel.bias_act(F.linear(x, w), b, act)),
            every_activation(lambda x, w, b, act: reference.bias_act_ref(F.linear(x, w, b), None, act)))


def _linear_residual_layer_norm_case(gen: torch.Generator) -> tuple[tuple, Callable, Callable]:
    from rembert_fast.kernels import layer_norm as kernel

    rows = _tiled(kernel.launch_config(_WIDTH, 4)[1])
    args = (_rand(gen, rows, _WIDTH), _rand(gen, _WIDTH, _WIDTH) / 8, _rand(gen, _WIDTH),
            _rand(gen, rows, _WIDTH), _rand(gen, _WIDTH), _rand(gen, _WIDTH))
    return (args, lambda x, w, b, res, lw, lb: kernel.layer_norm(F.linear(x, w), lw, lb, 1e-12, res, b),
            lambda x, w, b, res, lw, lb: reference.layer_norm_ref(F.linear(x, w, b), lw, lb, 1e-12, res))


CASES: dict[str, Callable[..., tuple[tuple, Callable, Callable]]] = registry.covers({
    "layer_norm": _layer_norm_case,
    "bias_act": _bias_act_case,
    "attention": _attention_case,
    "attention_padded": _attention_padded_case,
    "embed": _embed_case,
    "linear_bias_act": _linear_bias_act_case,
    "linear_residual_layer_norm": _linear_residual_layer_norm_case,
}, "the probe cases")


def split_name(op: str) -> tuple[str, tuple[str, ...] | None]:
    """("bias_act", ("gelu",)) for "bias_act[gelu]"; (op, None) for a bare name. ValueError names an
    activation that is not one of ACTIVATIONS or an op that takes none."""
    if not op.endswith("]") or "[" not in op:
        return op, None
    base, _, activation = op[:-1].partition("[")
    if base not in registry.PER_ACTIVATION:
        raise ValueError(f"op {base!r} takes no activation; per-activation ops are {registry.PER_ACTIVATION}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} in {op!r} is not one of {ACTIVATIONS}")
    return base, (activation,)


# Competitors other than an op's fused path (`registry.OPS`), probed on that op's input (causal and not).
COMPETITORS: dict[tuple[str, str], Callable] = registry.covers_competitors({
    ("attention", "sdpa_padded"): competitors.attention_sdpa_padded,
    ("attention", "torch_varlen"): competitors.attention_torch_varlen,
}, "the probe's competitors")


def _to(args: tuple, device: torch.device, dtype: torch.dtype) -> tuple:
    return tuple(a.to(device=device, dtype=dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _valid_rows(op: str, out: torch.Tensor) -> torch.Tensor:
    """The probe's rows a kernel must write: attention_padded's padding queries are unspecified."""
    if op != "attention_padded":
        return out
    lengths = _attention_lengths()
    return torch.cat([out[b, :lengths[b % len(lengths)]] for b in range(out.shape[0])])


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """float32 matmuls in full precision inside the block, whatever the user set (TF32 or bf16 passes,
    `torch.set_float32_matmul_precision`): a reference computed in TF32 would be as wrong as the error
    the probe's rule allows, and pass a wrong kernel."""
    held = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(held)


def run_probe(op: str, device: torch.device, dtype: torch.dtype, candidate: str | None = None) -> str | None:
    """None if `op`'s fused path (or its competitor `candidate`) agrees with eager on `device`/`dtype`,
    else why not (one line).

    ValueError for an op or candidate without a probe. Never raises for what the kernel does."""
    op, activations = split_name(op)
    if op not in CASES:
        raise ValueError(f"op {op!r} has no probe; probed ops are {tuple(CASES)}")
    if candidate is not None and (op, candidate) not in COMPETITORS:
        raise ValueError(f"op {op!r} has no competitor {candidate!r}; competitors are {tuple(COMPETITORS)}")
    gen = torch.Generator().manual_seed(17)
    try:
        args, fused, ref = CASES[op](gen, activations) if activations else CASES[op](gen)
        if candidate is not None:
            rival = COMPETITORS[(op, candidate)]
            fused = lambda *a: torch.cat([rival(*a), rival(*a, True)])  # noqa: E731
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the interpreter's numpy warnings; the verdict is the output
            with _full_fp32():
                truth = _valid_rows(op, ref(*_to(args, device, torch.float32))).double()
            same = _to(args, device, dtype)
            eager = _valid_rows(op, ref(*same)).double()
            out = fused(*same)
            if tuple(out.shape) != tuple(ref(*same).shape):
                return f"output shape {tuple(out.shape)}, eager gives {tuple(ref(*same).shape)}"
            out = _valid_rows(op, out).double()
    except Exception as error:  # a compile error, a launch error, anything the kernel raises
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    if not torch.isfinite(out).all():
        return "non-finite output where eager is finite"
    err = (out - truth).abs().max().item()
    eager_err = (eager - truth).abs().max().item()
    scale = max(truth.abs().max().item(), 1.0)
    floor = (0.5 * torch.finfo(dtype).eps + 1e-5) * scale
    if err > 2 * eager_err + floor:
        return f"max error {err:.3g} against fp32, over twice eager's {eager_err:.3g} plus {floor:.3g}"
    return None
