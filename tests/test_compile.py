"""Compile gate (how kernels are known to compile without a GPU): every Triton kernel, in every
specialisation its launcher can launch, compiles to PTX and cubin for sm_80 and sm_90 without a GPU,
and fits the arch's shared-memory and register limits.

Cases are captured from the public launchers themselves (`compile_gate.capture_cases`), so the block
sizes, num_warps and argument specialisations compiled here are the ones a launch would use. Each
kernel family compiles its cases once (module fixture, one worker process per usable CPU) and prints
a table of shared memory, registers and spills per tile.
"""

import dataclasses
import itertools
import time

import pytest
import torch
from compile_gate import CompileCase, capture_cases, compile_cases, launch_problems, report, spill_problems

from rembert_fast.kernels import activation as act_kernels
from rembert_fast.kernels import layer_norm as ln_kernels

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Every dtype x feature x activation is compiled at RemBERT's widths (embedding 256, hidden 1152, MLM
# head 1664, FFN 4608), the widest allowed, and an odd width (1153: same block as 1152, masked, not
# 16-divisible, so other loads and masks). 1152 and 1664 give the same binary and are compiled once.
WIDTHS = (256, 1152, 1664, 4608, ln_kernels.MAX_N, 1153)
# Then one width per remaining power-of-two block, bf16 with every feature on, so every BLOCK_N any
# N <= MAX_N selects is compiled at least once: 1 (N and the row stride become constexpr 1), 2, then
# 2**k - 1. The full product over these too would double the gate's time (~0.2 CPU-s per binary).
BLOCK_SWEEP = (1, 2, 3, 7, 15, 31, 63, 127, 511, 1023, 4095)
ROWS = 3  # M is not specialised by the kernels: any row count gives the same binary


def _name(flags: dict[str, bool]) -> str:
    return "+".join(k for k, on in flags.items() if on) or "plain"


# ----------------------------------------------------------------------------------------- the gate itself
def test_capture_specialises_like_the_jit():
    def call(n):
        return lambda: ln_kernels.layer_norm(torch.empty(ROWS, n, dtype=torch.bfloat16),
                                             torch.empty(n, dtype=torch.float32), None, 1e-12)

    module, kernel = "rembert_fast.kernels.layer_norm", "_layer_norm_fwd_kernel"
    wide, narrow = (capture_cases(module, kernel, call(n), archs=(90,))[0] for n in (1152, 1))
    assert wide.signature["X"] == "*bf16" and wide.signature["W"] == "*fp32"
    assert wide.attrs["X"] == "D" and wide.attrs["N"] == "D" and wide.attrs["stride_x_row"] == "D"
    assert wide.signature["M"] == "i32" and "M" not in wide.attrs  # do_not_specialize
    assert wide.constexprs["B"] is None and wide.constexprs["HAS_BIAS"] is False
    chosen = (wide.constexprs["BLOCK_N"], wide.constexprs["ROWS"], wide.num_warps)
    assert chosen == ln_kernels.launch_config(1152, 2)
    assert narrow.constexprs["N"] == 1 and "N" not in narrow.signature  # the JIT turns 1 into a constexpr


def test_gate_reports_what_the_compiler_rejects():
    # the interpreter runs tl.arange(0, 3); the compiler requires a power of two: the gate must say so
    good = LAYER_NORM_CASES[0]
    bad = dataclasses.replace(good, constexprs={**good.constexprs, "BLOCK_N": 3})
    [result] = compile_cases([bad], workers=1)
    assert not result.ok and "power of 2" in result.error
    assert launch_problems(result)


# ----------------------------------------------------------------------------------------- layer_norm
def _layer_norm_call(x, pdtype, res, xb, b, residual=None):
    """A call of the public launcher on `x` with the given features (`residual` overrides the default)."""
    n = x.shape[-1]
    if res and residual is None:
        residual = torch.empty(x.shape, dtype=x.dtype)

    def call():
        ln_kernels.layer_norm(x, torch.empty(n, dtype=pdtype), torch.empty(n, dtype=pdtype) if b else None,
                              1e-12, residual=residual, x_bias=torch.empty(n, dtype=x.dtype) if xb else None)

    return call


def _layer_norm_cases() -> list[CompileCase]:
    module, kernel = "rembert_fast.kernels.layer_norm", "_layer_norm_fwd_kernel"
    cases = []
    for (dname, dtype), n in itertools.product(DTYPES.items(), WIDTHS):
        for pdtype, res, xb, b in itertools.product({dtype, torch.float32}, *[(False, True)] * 3):
            label = f"{dname} w={str(pdtype)[6:]} N={n} {_name({'res': res, 'xb': xb, 'b': b})}"
            call = _layer_norm_call(torch.empty(ROWS, n, dtype=dtype), pdtype, res, xb, b)
            cases += capture_cases(module, kernel, call, label=label)
    for dname, dtype in DTYPES.items():  # rows of a wider buffer, odd row stride (e.g. a slice of QKV)
        x = torch.empty(ROWS, 1155, dtype=dtype)[:, :1152]
        residual = torch.empty(ROWS, 1157, dtype=dtype)[:, :1152]
        call = _layer_norm_call(x, dtype, True, True, True, residual=residual)
        cases += capture_cases(module, kernel, call, label=f"{dname} N=1152 row-stride 1155/1157 res+xb+b")
    for n in BLOCK_SWEEP:
        call = _layer_norm_call(torch.empty(ROWS, n, dtype=torch.bfloat16), torch.bfloat16, True, True, True)
        cases += capture_cases(module, kernel, call, label=f"bf16 N={n} res+xb+b")
    return cases


LAYER_NORM_CASES = _layer_norm_cases()


@pytest.fixture(scope="module")
def layer_norm_results(request):
    start = time.perf_counter()
    results = compile_cases(LAYER_NORM_CASES)
    report(request, "layer_norm", results, time.perf_counter() - start)
    return {id(r.case): r for r in results}


@pytest.mark.parametrize("case", LAYER_NORM_CASES, ids=lambda c: f"{c.label} sm_{c.arch}")
def test_layer_norm_compiles(case, layer_norm_results):
    result = layer_norm_results[id(case)]
    assert not launch_problems(result), launch_problems(result)
    assert not spill_problems(result), spill_problems(result)


# ----------------------------------------------------------------------------------------- bias_act
def _bias_act_cases() -> list[CompileCase]:
    cases = []
    for (dname, dtype), n, activation, has_bias in itertools.product(
        DTYPES.items(), WIDTHS, act_kernels.ACTIVATIONS, (False, True)
    ):
        def call(n=n, dtype=dtype, activation=activation, has_bias=has_bias):
            act_kernels.bias_act(torch.empty(ROWS, n, dtype=dtype),
                                 torch.empty(n, dtype=dtype) if has_bias else None, activation)

        label = f"{dname} N={n} {activation}{' +bias' if has_bias else ''}"
        cases += capture_cases("rembert_fast.kernels.activation", "_bias_act_kernel", call, label=label)
    for dname, dtype in DTYPES.items():  # rows of a wider buffer, odd row stride
        def strided(dtype=dtype):
            act_kernels.bias_act(torch.empty(ROWS, 4611, dtype=dtype)[:, :4608],
                                 torch.empty(4608, dtype=dtype), "gelu")

        cases += capture_cases("rembert_fast.kernels.activation", "_bias_act_kernel", strided,
                               label=f"{dname} N=4608 row-stride 4611 gelu +bias")
    for n in BLOCK_SWEEP:
        def sweep(n=n):
            act_kernels.bias_act(torch.empty(ROWS, n, dtype=torch.bfloat16),
                                 torch.empty(n, dtype=torch.bfloat16), "gelu")

        cases += capture_cases("rembert_fast.kernels.activation", "_bias_act_kernel", sweep,
                               label=f"bf16 N={n} gelu +bias")
    return cases


BIAS_ACT_CASES = _bias_act_cases()


@pytest.fixture(scope="module")
def bias_act_results(request):
    start = time.perf_counter()
    results = compile_cases(BIAS_ACT_CASES)
    report(request, "bias_act", results, time.perf_counter() - start)
    return {id(r.case): r for r in results}


@pytest.mark.parametrize("case", BIAS_ACT_CASES, ids=lambda c: f"{c.label} sm_{c.arch}")
def test_bias_act_compiles(case, bias_act_results):
    result = bias_act_results[id(case)]
    assert not launch_problems(result), launch_problems(result)
    assert not spill_problems(result), spill_problems(result)


# ----------------------------------------------------------------------------------------- attention
# Section owned by the attention kernel's author (kernels/attention.py).
def _attention_cases() -> list[CompileCase]:
    """Every specialisation the attention launchers make, in every config `keep()` lets through.

    Varlen (the model's path): fp32/fp16/bf16 x causal off/on x head_dim 16/32/64/128, q/k/v strided
    views of a fused (T, 3, 18, D) buffer. Padded (B, L) layout with a bool key-padding mask: head_dim
    64, bf16 and fp32, causal off/on. Under the interpreter (this process) the autotuner holds only the
    interpreter's config, so each launch is expanded over `configs_for(head_dim, dtype size, arch)` (what the
    GPU build's prune hook leaves), with DOT_UPCAST off as a compiled launch passes it (the bf16
    widening exists only for the interpreter's dot).
    """
    import dataclasses

    from rembert_fast.kernels import attention as attn

    heads = 18  # RemBERT's: the strides of the fused QKV buffer the model launches with
    variants = [("varlen", dname, d, causal) for dname in DTYPES for d in attn.SUPPORTED_HEAD_DIMS
                for causal in (False, True)]
    variants += [("padded", dname, 64, causal) for dname in ("bf16", "fp32") for causal in (False, True)]
    cases = []
    for mode, dname, head_dim, causal in variants:
        dtype = DTYPES[dname]

        def call(dtype=dtype, head_dim=head_dim, causal=causal, mode=mode):
            if mode == "varlen":
                qkv = torch.empty(40, 3, heads, head_dim, dtype=dtype)
                cu = torch.tensor([0, 10, 40], dtype=torch.int32)
                attn.attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, 30, 30, causal=causal)
            else:
                q = torch.empty(2, 128, heads, head_dim, dtype=dtype)
                attn.attention_padded(q, q, q, torch.ones(2, 128, dtype=torch.bool), causal=causal)

        label = f"{dname} D={head_dim} {mode} {'causal' if causal else 'full'}"
        captured = [case for arch in (80, 90)  # keep() admits per arch
                    for case in capture_cases("rembert_fast.kernels.attention", "_attn_fwd", call,
                                              archs=(arch,), label=label,
                                              configs=attn.configs_for(head_dim, dtype.itemsize, arch))]
        for case in captured:
            c = case.constexprs
            tile = f"{c['BLOCK_M']}x{c['BLOCK_N']} w{case.num_warps} s{case.num_stages}"
            cases.append(dataclasses.replace(case, label=f"{label} {tile}",
                                             constexprs={**c, "DOT_UPCAST": False}))
    return cases


ATTENTION_CASES = _attention_cases()


@pytest.fixture(scope="module")
def attention_results(request):
    start = time.perf_counter()
    results = compile_cases(ATTENTION_CASES)
    report(request, "attention", results, time.perf_counter() - start)
    return {id(r.case): r for r in results}


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: f"{c.label} sm_{c.arch}")
def test_attention_compiles(case, attention_results):
    from rembert_fast.kernels import attention as attn

    result = attention_results[id(case)]
    assert not launch_problems(result), launch_problems(result)
    assert not spill_problems(result), spill_problems(result)  # keep() admits no spilling config
    # keep() filters configs by this estimate, so it must not undercount what the compiler allocates.
    c = case.constexprs
    elem_bytes = DTYPES[case.signature["Q"].lstrip("*")].itemsize
    estimate = attn.shared_memory_estimate(c["BLOCK_M"], c["BLOCK_N"], case.num_stages, c["HEAD_DIM"],
                                           elem_bytes)
    assert result.shared <= estimate, f"{result.shared} B shared memory; keep() assumed {estimate} B"


# ----------------------------------------------------------------------------------------- backward kernels
# The training path's kernels, captured from their launchers like the forwards. LayerNorm and
# bias_act: every dtype x feature (x activation) at RemBERT's widths, the widest row (LayerNorm: the
# widest its backward takes) and an odd width,
# plus the block sweep. Attention: varlen, every dtype x head_dim x causal, q/k/v and dO strided views
# of fused buffers, on the compiled tiles (`tile_config` with the interpreter flag off).
BACKWARD_WIDTHS = (256, 1152, 4608, ln_kernels.BACKWARD_MAX_N, 1153)


class _NotLaunched:
    """A kernel's stand-in whose launches do nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _layer_norm_backward_cases() -> list[CompileCase]:
    cases = []
    module = "rembert_fast.kernels.layer_norm"
    for (dname, dtype), n in itertools.product(DTYPES.items(), BACKWARD_WIDTHS[:2] + BACKWARD_WIDTHS[3:]):
        for pdtype, res, xb, b in itertools.product({dtype, torch.float32}, *[(False, True)] * 3):
            def call(n=n, dtype=dtype, pdtype=pdtype, res=res, xb=xb, b=b):
                x = torch.empty(ROWS, n, dtype=dtype)
                ln_kernels.layer_norm_backward(
                    x, x, torch.empty(n, dtype=pdtype), torch.empty(n, dtype=pdtype) if b else None, 1e-12,
                    x if res else None, torch.empty(n, dtype=dtype) if xb else None)

            label = f"ln bwd {dname} w={str(pdtype)[6:]} N={n} {_name({'res': res, 'xb': xb, 'b': b})}"
            cases += capture_cases(module, "_layer_norm_bwd_kernel", call, label=label)
    for n in BLOCK_SWEEP:
        def sweep(n=n):
            x = torch.empty(ROWS, n, dtype=torch.bfloat16)
            w = torch.empty(n, dtype=torch.bfloat16)
            ln_kernels.layer_norm_backward(x, x, w, w, 1e-12, x, w)

        cases += capture_cases(module, "_layer_norm_bwd_kernel", sweep, label=f"ln bwd bf16 N={n} res+xb+b")
    return cases


def _bias_act_backward_cases() -> list[CompileCase]:
    cases = []
    module = "rembert_fast.kernels.activation"
    for (dname, dtype), n, activation, has_bias in itertools.product(
        DTYPES.items(), BACKWARD_WIDTHS[:3] + BACKWARD_WIDTHS[4:], act_kernels.ACTIVATIONS, (False, True)
    ):
        def act_call(n=n, dtype=dtype, activation=activation, has_bias=has_bias):
            x = torch.empty(ROWS, n, dtype=dtype)
            act_kernels.bias_act_backward(x, x, torch.empty(n, dtype=dtype) if has_bias else None, activation)

        label = f"act bwd {dname} N={n} {activation}{' +bias' if has_bias else ''}"
        cases += capture_cases(module, "_bias_act_bwd_kernel", act_call, label=label)
    for n in BLOCK_SWEEP:
        def act_sweep(n=n):
            x = torch.empty(ROWS, n, dtype=torch.bfloat16)
            act_kernels.bias_act_backward(x, x, torch.empty(n, dtype=torch.bfloat16), "gelu")

        cases += capture_cases(module, "_bias_act_bwd_kernel", act_sweep, label=f"act bwd bf16 N={n} gelu")
    return cases


def _attention_backward_cases() -> list[CompileCase]:
    from rembert_fast.kernels import attention_backward as attn_bwd

    cases = []
    heads = 18
    for (dname, dtype), head_dim, causal in itertools.product(
        DTYPES.items(), attn_bwd.SUPPORTED_HEAD_DIMS, (False, True)
    ):
        def attn_call(dtype=dtype, head_dim=head_dim, causal=causal):
            qkv = torch.empty(40, 3, heads, head_dim, dtype=dtype)
            dout = torch.empty(40, heads, head_dim + 8, dtype=dtype)[..., :head_dim]
            cu = torch.tensor([0, 10, 40], dtype=torch.int32)
            attn_bwd.attention_varlen_backward(dout, *qkv.unbind(1), qkv[:, 0].contiguous(),
                                               torch.empty(heads, 40), cu, cu, 30, 30, causal)

        label = f"attn bwd {dname} D={head_dim} {'causal' if causal else 'full'}"
        kernels = ("_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel")
        for kernel in kernels:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(attn_bwd, "interpreting", lambda: False)  # the compiled tiles and dots
                for other in set(kernels) - {kernel}:  # recorded elsewhere: not run here
                    patch.setattr(attn_bwd, other, _NotLaunched())
                cases += capture_cases("rembert_fast.kernels.attention_backward", kernel, attn_call,
                                       label=f"{label} {kernel[10:-7]}")
    return cases


BACKWARD_CASES = {"layer_norm_backward": _layer_norm_backward_cases(),
                  "bias_act_backward": _bias_act_backward_cases(),
                  "attention_backward": _attention_backward_cases()}


@pytest.fixture(scope="module")
def backward_results(request):
    """One compile run per kernel family, made when the family's first case is tested."""
    done = {}

    def results(family):
        if family not in done:
            start = time.perf_counter()
            compiled = compile_cases(BACKWARD_CASES[family])
            report(request, family, compiled, time.perf_counter() - start)
            done[family] = {id(r.case): r for r in compiled}
        return done[family]

    return results


@pytest.mark.parametrize("family,case", [(family, case) for family, cases in BACKWARD_CASES.items()
                                         for case in cases], ids=lambda c: f"{c.label} sm_{c.arch}"
                         if isinstance(c, CompileCase) else c)
def test_backward_compiles(family, case, backward_results):
    result = backward_results(family)[id(case)]
    assert not launch_problems(result), launch_problems(result)
    assert not spill_problems(result), spill_problems(result)
