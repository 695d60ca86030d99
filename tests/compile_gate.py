"""The compile gate: prove Triton kernels compile for sm_80 and sm_90 on a machine without a GPU.

The Triton interpreter (``TRITON_INTERPRET=1``, how kernel tests run on CPU) accepts code that the
compiler rejects, so interpreter tests alone do not show a kernel builds. This module compiles each
specialisation the launchers can launch with ``triton.compile(ASTSource(...), target=GPUTarget(...))``
down to PTX and cubin, and reads what the compiled kernel needs (shared memory, registers, spills).

API (used by ``tests/test_compile.py``; each kernel family adds its own cases there):

``capture_cases(module, kernel, call, archs=(80, 90), label="", configs=None) -> list[CompileCase]``
    Replaces ``module.<kernel>`` by a recorder for the duration of ``call()``, so the public launcher
    runs its real argument preparation with small CPU tensors and records each launch instead of
    running it. Every recorded launch becomes one case per arch, specialised exactly as Triton's JIT
    would specialise it (``native_specialize_impl``: dtype of each pointer, 16-byte divisibility of
    pointers and integers, integers equal to 1 and ``None`` turned into constexprs, the kernel's
    ``do_not_specialize`` honoured). A ``triton.autotune`` kernel yields one case per config left by
    its ``early_config_prune`` (or per entry of ``configs``, which replaces the autotuner's list: for
    kernels whose interpreter build autotunes over a test-only config), a ``triton.heuristics``
    kernel has its heuristics evaluated on the recorded arguments. This is how the gate compiles what
    is launched rather than a hand-written copy of it.
``CompileCase(label, module, kernel, signature, constexprs, attrs, num_warps, num_stages, arch)``
    One compilation, for cases built by hand: ``signature`` maps each runtime argument to a Triton type
    (``"*bf16"``, ``"i32"``, ``"fp32"``), ``constexprs`` maps the constexpr arguments to values,
    ``attrs`` maps arguments to ``"D"`` (divisible by 16) where the JIT would say so.
``compile_cases(cases, workers=None) -> list[CompileResult]``
    Compiles every distinct case (duplicates are compiled once) in ``workers`` subprocesses (default:
    one per CPU this process may use), each
    started without ``TRITON_INTERPRET`` so ``@triton.jit`` yields real JIT functions there. Results
    come back in the order of ``cases``; a failing compile is a result with ``error`` set, not an
    exception.
``launch_problems(result) -> list[str]``
    Why a compiled kernel could still not launch: shared memory over the arch's per-block limit,
    registers x threads over the 64K register file, no PTX or cubin.
``spill_problems(result) -> list[str]``
    Register spills (stores or loads) of the compiled kernel, or that ptxas gave no report.

Spills are read as ptxas reports them (``ptxas -v``: "N bytes stack frame, N bytes spill stores, N
bytes spill loads"; cuobjdump's LOCAL does not count them). A fresh compile hands over the report of
Triton's own ptxas run; a kernel found in Triton's cache gets its stack frame from cuobjdump and, only
when that frame is not empty (a kernel without one cannot spill), a ptxas run of its own on the PTX.
``report(request, title, results)``
    Prints the summary table through pytest's terminal reporter (shown with or without ``-s``) and
    writes every result to ``<pytest basetemp>/compile_gate_<title>.json``.

Run as a script (``python tests/compile_gate.py --worker IN.json OUT.json``) it is the worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ARCHS = (80, 90)
# Largest dynamic shared memory one block may use (CUDA programming guide, compute capabilities table).
MAX_SHARED_BYTES = {80: 163 * 1024, 90: 227 * 1024}
REGISTER_FILE = 65536  # 32-bit registers per SM, and so per block, on sm_80 and sm_90
_WORKER_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class CompileCase:
    """One kernel specialisation to compile for one arch."""

    label: str  # what a reader should see, e.g. "bf16 N=1152 res+xb+b"
    module: str  # importable module holding the kernel, e.g. "rembert_fast.kernels.layer_norm"
    kernel: str  # attribute name of the @triton.jit (or autotune/heuristics-wrapped) kernel
    signature: dict[str, str]  # runtime argument -> Triton type ("*bf16", "i32", "i64", "fp32")
    constexprs: dict[str, Any]  # constexpr argument -> value (bool, int, float, str or None)
    attrs: dict[str, str] = dataclasses.field(default_factory=dict)  # argument -> "D" (divisible by 16)
    num_warps: int | None = None  # None: Triton's default
    num_stages: int | None = None  # None: Triton's default
    arch: int = 90  # compute capability: 80 or 90

    def key(self) -> str:
        """Identity of the compiled binary: equal keys compile to the same kernel."""
        fields = dataclasses.asdict(self)
        del fields["label"]
        return json.dumps(fields, sort_keys=True, default=repr)


@dataclasses.dataclass
class CompileResult:
    """What compiling one case gave: an error, or the compiled kernel's resource needs."""

    case: CompileCase
    error: str | None = None  # the compiler's message when compilation failed
    seconds: float = 0.0  # wall time of this compile (0 for a duplicate of another case)
    cache_hit: bool = False  # Triton found the binary in its cache (same source, options and version)
    shared: int | None = None  # bytes of shared memory the kernel needs (compiled metadata `shared`)
    registers: int | None = None  # registers per thread (ptxas -v, else cuobjdump resource usage)
    spill_bytes: int | None = None  # bytes of register spill stores per thread (ptxas -v)
    spill_loads: int | None = None  # bytes of register spill loads per thread (ptxas -v)
    stack_bytes: int | None = None  # stack frame per thread, where spills live (ptxas -v / cuobjdump STACK)
    ptx_bytes: int = 0
    cubin_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


# ----------------------------------------------------------------------------------------- capture
def _innermost(kernel: Any) -> Any:
    """The @jit function under any autotune/heuristics wrappers."""
    while not hasattr(kernel, "arg_names") or type(kernel).__name__ in ("Autotuner", "Heuristics"):
        kernel = kernel.fn
    return kernel


def _python_fn(kernel: Any) -> Callable[..., Any]:
    """The plain Python function a kernel was decorated from (its signature names the arguments)."""
    fn = _innermost(kernel)
    return fn.fn if hasattr(fn, "fn") else fn


def _do_not_specialize(kernel: Any) -> tuple[set[str], set[str]]:
    """Names the JIT leaves unspecialised (by value, by alignment), from either a JIT or interpreted fn."""
    fn = _innermost(kernel)
    names = list(inspect.signature(_python_fn(kernel)).parameters)
    options = getattr(fn, "kwargs", None) or {}  # InterpretedFunction keeps the decorator's kwargs
    found = []
    for attr in ("do_not_specialize", "do_not_specialize_on_alignment"):
        raw = getattr(fn, attr, None) or options.get(attr) or []
        found.append({names[i] if isinstance(i, int) else i for i in raw})
    return found[0], found[1]


def _specialise(kernel: Any, bound: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], dict[str, str]]:
    """(signature, constexprs, attrs) of one launch, computed the way Triton's JIT computes them."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import KernelParam

    no_value, no_align = _do_not_specialize(kernel)
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[str, str] = {}
    for num, param in enumerate(inspect.signature(_python_fn(kernel)).parameters.values()):
        kp = KernelParam(num, param, param.name in no_value, param.name in no_align)
        value = bound[param.name]
        if kp.is_constexpr:
            constexprs[param.name] = value
            continue
        kind, spec = native_specialize_impl(CUDABackend, value, kp.is_const, not kp.do_not_specialize,
                                            not kp.do_not_specialize_on_alignment)
        if kind == "constexpr":  # an integer equal to 1, or None
            constexprs[param.name] = spec
        else:
            signature[param.name] = kp.annotation_type or kind
            if isinstance(spec, str) and spec:
                attrs[param.name] = spec
    return signature, constexprs, attrs


class _LaunchRecorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` records the call instead of running it."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.launches: list[dict[str, Any]] = []

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.launches.append({"args": args, "kwargs": kwargs})

        return record


@contextlib.contextmanager
def _recording(module: str, kernel: str) -> Iterator[_LaunchRecorder]:
    mod = importlib.import_module(module)
    original = getattr(mod, kernel)
    recorder = _LaunchRecorder(original)
    setattr(mod, kernel, recorder)
    try:
        yield recorder
    finally:
        setattr(mod, kernel, original)


def _expand(kernel: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
            configs: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Launch options per compiled variant: autotune configs (pruned as the autotuner prunes them, or
    `configs` instead when given) and heuristics, applied to the recorded arguments."""
    names = list(inspect.signature(_python_fn(kernel)).parameters)
    positional = dict(zip(names, args, strict=False))  # args may stop before parameters with defaults
    variants = [{**positional, **kwargs}]
    layer = kernel
    while type(layer).__name__ in ("Autotuner", "Heuristics"):
        if type(layer).__name__ == "Autotuner":
            expanded = []
            for v in variants:
                chosen = configs
                if chosen is None:
                    chosen = layer.configs
                    if layer.early_config_prune:
                        chosen = layer.early_config_prune(chosen, positional, **kwargs)
                expanded += [{**v, **cfg.all_kwargs()} for cfg in chosen]
            variants = expanded
        else:
            for v in variants:
                for name, rule in layer.values.items():
                    v[name] = rule(v)
        layer = layer.fn
    return variants


def capture_cases(
    module: str,
    kernel: str,
    call: Callable[[], Any],
    archs: Sequence[int] = ARCHS,
    label: str = "",
    configs: Sequence[Any] | None = None,
) -> list[CompileCase]:
    """Run `call()` (which calls a public launcher) and turn each launch of `module.kernel` into cases.

    `configs` (a list of `triton.Config`) replaces an autotuned kernel's own configs, for kernels whose
    autotuner holds a test-only config list under the interpreter.
    """
    with _recording(module, kernel) as recorder:
        call()
    if not recorder.launches:
        raise AssertionError(f"{module}.{kernel} was not launched by the call for case {label!r}")
    cases = []
    for launch in recorder.launches:
        for bound in _expand(recorder.kernel, launch["args"], launch["kwargs"], configs):
            num_warps = bound.pop("num_warps", None)
            num_stages = bound.pop("num_stages", None)
            for option in ("num_ctas", "maxnreg", "pre_hook", "ir_override"):
                bound.pop(option, None)
            signature, constexprs, attrs = _specialise(recorder.kernel, bound)
            for arch in archs:
                cases.append(CompileCase(label, module, kernel, signature, constexprs, attrs,
                                         num_warps, num_stages, arch))
    return cases


# ----------------------------------------------------------------------------------------- compile
def compile_cases(cases: Sequence[CompileCase], workers: int | None = None) -> list[CompileResult]:
    """Compile every distinct case in `workers` (default: one per usable CPU) fresh interpreters
    started without TRITON_INTERPRET."""
    workers = workers or len(os.sched_getaffinity(0))
    unique: dict[str, CompileCase] = {}
    for case in cases:
        unique.setdefault(case.key(), case)
    batches = [list(unique.values())[i::workers] for i in range(workers)]
    batches = [b for b in batches if b]
    with ThreadPoolExecutor(max_workers=max(len(batches), 1)) as pool:
        done = [r for batch in pool.map(_run_worker, batches) for r in batch]
    by_key = {r.case.key(): r for r in done}
    results = []
    for case in cases:
        first = by_key[case.key()]
        if first.case is case:
            results.append(first)
        else:
            results.append(dataclasses.replace(first, case=case, seconds=0.0))
    return results


def _run_worker(batch: list[CompileCase]) -> list[CompileResult]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory(prefix="compile_gate_") as tmp:
        src, dst = Path(tmp, "cases.json"), Path(tmp, "results.json")
        src.write_text(json.dumps([dataclasses.asdict(c) for c in batch]))
        proc = subprocess.run([sys.executable, __file__, "--worker", str(src), str(dst)], env=env,
                              capture_output=True, text=True, timeout=_WORKER_TIMEOUT_S)
        if proc.returncode != 0 or not dst.exists():
            message = f"compile worker exited with {proc.returncode}: {proc.stderr[-4000:]}"
            return [CompileResult(case, error=message) for case in batch]
        rows = json.loads(dst.read_text())
    return [CompileResult(case, **row) for case, row in zip(batch, rows, strict=True)]


def launch_problems(result: CompileResult) -> list[str]:
    """Reasons the compiled kernel would fail to load or launch on its arch (empty if none)."""
    if not result.ok:
        return [f"does not compile: {result.error}"]
    problems = []
    case = result.case
    if not result.ptx_bytes or not result.cubin_bytes:
        problems.append(f"missing output: ptx {result.ptx_bytes} B, cubin {result.cubin_bytes} B")
    if result.shared is not None and result.shared > MAX_SHARED_BYTES[case.arch]:
        problems.append(f"needs {result.shared} B shared memory; sm_{case.arch} allows "
                        f"{MAX_SHARED_BYTES[case.arch]} B per block")
    warps = case.num_warps or 4
    if result.registers is not None and result.registers * 32 * warps > REGISTER_FILE:
        problems.append(f"{result.registers} registers x {32 * warps} threads exceed the {REGISTER_FILE} "
                        "register file")
    return problems


def spill_problems(result: CompileResult) -> list[str]:
    """Register spills of a compiled kernel as ptxas reports them (empty if none)."""
    if not result.ok:
        return [f"does not compile: {result.error}"]
    if result.spill_bytes is None or result.spill_loads is None:
        return ["spills unknown: ptxas -v gave no report"]
    if result.spill_bytes or result.spill_loads:
        return [f"spills registers: {result.spill_bytes} B stores, {result.spill_loads} B loads per thread "
                f"({result.stack_bytes} B stack frame, ptxas -v)"]
    return []


# ----------------------------------------------------------------------------------------- report
def _tile(case: CompileCase) -> str:
    """The constexprs that change code shape (upper-case ints: block sizes), plus num_warps."""
    shape = [f"{k}={v}" for k, v in sorted(case.constexprs.items())
             if k.isupper() and isinstance(v, int) and not isinstance(v, bool)]
    return " ".join(shape + [f"warps={case.num_warps or 4}"])


def format_table(results: Sequence[CompileResult]) -> str:
    """One line per (kernel, arch, tile): specialisations, shared memory, registers, spills, failures."""
    groups: dict[tuple[str, int, str], list[CompileResult]] = {}
    for r in results:
        groups.setdefault((r.case.kernel, r.case.arch, _tile(r.case)), []).append(r)

    def span(values: list[int | None]) -> str:
        known = [v for v in values if v is not None]
        if not known:
            return "-"
        return str(min(known)) if min(known) == max(known) else f"{min(known)}-{max(known)}"

    header = f"{'kernel':<28} {'arch':>5} {'tile':<34} {'cases':>5} {'shared B':>11} {'regs':>7} " \
             f"{'spill B':>7} {'stack B':>7} {'failed':>6}"
    lines = [header, "-" * len(header)]
    for (kernel, arch, tile), rs in sorted(groups.items()):
        lines.append(f"{kernel:<28} {'sm_' + str(arch):>5} {tile:<34} {len(rs):>5} "
                     f"{span([r.shared for r in rs]):>11} {span([r.registers for r in rs]):>7} "
                     f"{span([r.spill_bytes for r in rs]):>7} {span([r.stack_bytes for r in rs]):>7} "
                     f"{sum(not r.ok for r in rs):>6}")
    return "\n".join(lines)


def report(request: Any, title: str, results: Sequence[CompileResult], wall_s: float) -> Path:
    """Print the table through the terminal reporter and save every result as JSON; return the path."""
    path = Path(request.getfixturevalue("tmp_path_factory").getbasetemp(), f"compile_gate_{title}.json")
    path.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1, default=repr))
    distinct = {r.case.key(): r for r in results}
    cached = sum(r.cache_hit for r in distinct.values())
    text = (f"{len(results)} cases, {len(distinct)} distinct binaries ({cached} from Triton's cache), "
            f"wall {wall_s:.1f} s; details: {path}\n{format_table(results)}")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None:
        # Setup output is captured by default; the table is meant to be seen on every run.
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("")
            reporter.write_sep("-", f"compile gate: {title}")
            reporter.write_line(text)
    return path


# ----------------------------------------------------------------------------------------- worker
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_report(report: str) -> dict[str, int] | None:
    """{registers, stack_bytes, spill_bytes, spill_loads} from `ptxas -v` output for one kernel, or None
    when the text holds no such report."""
    spills, used = _PTXAS_SPILLS.search(report), _PTXAS_USED.search(report)
    if spills is None or used is None:
        return None
    stack, stores, loads = (int(v) for v in spills.groups())
    return {"registers": int(used.group(1)), "stack_bytes": stack, "spill_bytes": stores,
            "spill_loads": loads}


def _cuobjdump_usage(cubin: bytes, tmp: Path) -> tuple[int | None, int | None]:
    """(registers, stack frame bytes) per thread from `cuobjdump --dump-resource-usage`, or Nones."""
    from triton import knobs

    path = tmp / "kernel.cubin"
    path.write_bytes(cubin)
    try:
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    regs = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return (int(regs.group(1)) if regs else None), (int(stack.group(1)) if stack else None)


def _ptxas_report(ptx: str, arch: int, fp_fusion: bool, tmp: Path) -> str:
    """`ptxas -v` output for `ptx`, run the way Triton runs it (its ptxas, its flags)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    src, out = tmp / "kernel.ptx", tmp / "kernel.o"
    src.write_text(ptx)
    command = [get_ptxas(arch).path, "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v",
               "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}", str(src),
               "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=_WORKER_TIMEOUT_S)
    return done.stdout + done.stderr


def _compile_one(case: dict[str, Any], tmp: Path) -> dict[str, Any]:
    import io

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    fn = _innermost(getattr(importlib.import_module(case["module"]), case["kernel"]))
    signature = {}
    for name in fn.arg_names:
        if name in case["constexprs"]:
            signature[name] = "constexpr"
        elif name in case["signature"]:
            signature[name] = case["signature"][name]
        else:
            raise ValueError(f"argument {name!r} of {case['kernel']} is in neither signature nor constexprs")
    attrs = {(fn.arg_names.index(k),): CUDABackend.parse_attr(v) for k, v in case["attrs"].items()}
    options = {k: case[k] for k in ("num_warps", "num_stages") if case[k] is not None}
    hits: list[bool] = []
    knobs.compilation.listener = lambda **event: hits.append(event["cache_hit"])
    knobs.nvidia.dump_ptxas_log = True  # Triton prints its own `ptxas -v` report: no second ptxas run
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        compiled = triton.compile(
            triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=case["constexprs"], attrs=attrs),
            target=GPUTarget("cuda", case["arch"], 32),
            options=options,
        )
    seconds = time.perf_counter() - start
    knobs.compilation.listener = None
    cubin = compiled.asm.get("cubin") or b""
    ptx = compiled.asm.get("ptx") or ""
    usage = parse_ptxas_report(printed.getvalue())
    if usage is None and cubin:  # from Triton's cache: no ptxas ran
        registers, stack = _cuobjdump_usage(cubin, tmp)
        if stack == 0:  # spills live in the stack frame: none without one
            usage = {"registers": registers, "stack_bytes": 0, "spill_bytes": 0, "spill_loads": 0}
        elif ptx:
            usage = parse_ptxas_report(_ptxas_report(ptx, case["arch"], compiled.metadata.enable_fp_fusion,
                                                     tmp))
    return {"seconds": seconds, "cache_hit": bool(hits and hits[0]), "shared": compiled.metadata.shared,
            **(usage or {}), "ptx_bytes": len(ptx), "cubin_bytes": len(cubin)}


def _worker(src: str, dst: str) -> None:
    import warnings

    # Triton 3.9 warns that its fp-fusion default will change; the gate compiles with today's default,
    # the one a launch gets.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    rows = []
    with tempfile.TemporaryDirectory(prefix="compile_gate_cubin_") as tmp:
        for case in json.loads(Path(src).read_text()):
            try:
                rows.append(_compile_one(case, Path(tmp)))
            except Exception as err:  # any compiler error is a result for that case, not a crash
                rows.append({"error": f"{type(err).__name__}: {err}"[-4000:]})
    Path(dst).write_text(json.dumps(rows))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--worker":
        sys.exit("usage: python compile_gate.py --worker CASES.json RESULTS.json")
    _worker(sys.argv[2], sys.argv[3])
