"""Compile gate (DESIGN.md "How correctness is known", point 3): every Triton kernel, in every
specialisation its launcher can launch, compiles to PTX and cubin for sm_80 and sm_90 without a GPU,
and fits the arch's shared-memory and register limits.

Cases are captured from the public launchers themselves (`compile_gate.capture_cases`), so the block
sizes, num_warps and argument specialisations compiled here are the ones a launch would use. Each
kernel family compiles its cases once (module fixture, two worker processes) and prints a table of
shared memory, registers and spills per tile.
"""

import itertools
import time

import pytest
import torch
from compile_gate import CompileCase, capture_cases, compile_cases, launch_problems, report
from rembert_fast.kernels import activation as act_kernels
from rembert_fast.kernels import layer_norm as ln_kernels

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# RemBERT's widths (embedding 256, hidden 1152, MLM head 1664, FFN 4608), the widest allowed, and odd
# widths: 1 (N and the row stride become constexpr 1), 7 and 1153 (no 16-divisibility).
WIDTHS = (256, 1152, 1664, 4608, ln_kernels.MAX_N, 1, 7, 1153)
ROWS = 3  # M is not specialised by the kernels: any row count gives the same binary


def _name(flags: dict[str, bool]) -> str:
    return "+".join(k for k, on in flags.items() if on) or "plain"


# ----------------------------------------------------------------------------------------- layer_norm
def _layer_norm_cases() -> list[CompileCase]:
    cases = []
    for (dname, dtype), n in itertools.product(DTYPES.items(), WIDTHS):
        for pdtype, res, xb, b in itertools.product({dtype, torch.float32}, *[(False, True)] * 3):
            flags = {"res": res, "xb": xb, "b": b}
            label = f"{dname} w={str(pdtype)[6:]} N={n} {_name(flags)}"

            def call(n=n, dtype=dtype, pdtype=pdtype, res=res, xb=xb, b=b):
                ln_kernels.layer_norm(
                    torch.empty(ROWS, n, dtype=dtype), torch.empty(n, dtype=pdtype),
                    torch.empty(n, dtype=pdtype) if b else None, 1e-12,
                    residual=torch.empty(ROWS, n, dtype=dtype) if res else None,
                    x_bias=torch.empty(n, dtype=dtype) if xb else None,
                )

            cases += capture_cases("rembert_fast.kernels.layer_norm", "_layer_norm_fwd_kernel", call,
                                   label=label)
    for dname, dtype in DTYPES.items():  # rows of a wider buffer, odd row stride (e.g. a slice of QKV)
        def strided(dtype=dtype):
            n = 1152
            ln_kernels.layer_norm(
                torch.empty(ROWS, n + 3, dtype=dtype)[:, :n], torch.empty(n, dtype=dtype),
                torch.empty(n, dtype=dtype), 1e-12,
                residual=torch.empty(ROWS, n + 5, dtype=dtype)[:, :n], x_bias=torch.empty(n, dtype=dtype),
            )

        cases += capture_cases("rembert_fast.kernels.layer_norm", "_layer_norm_fwd_kernel", strided,
                               label=f"{dname} N=1152 row-stride 1155/1157 res+xb+b")
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
    assert result.spill_bytes == 0, f"{result.spill_bytes} B of register spills"


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
    assert result.spill_bytes == 0, f"{result.spill_bytes} B of register spills"
