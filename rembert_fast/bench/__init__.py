"""`rembert-fast bench`: end-to-end and per-kernel benchmarks, rembert_fast against transformers.

End to end, on the same weights and the same inputs, in one run:
- ``rembert_fast``           rembert_fast's RemBertModel (the packed fast path);
- ``rembert_fast+graphs``    the same model through `CudaGraphRunner` (CUDA only);
- ``rembert_fast+compile``   `torch.compile(rembert_fast model, dynamic=True)`;
- ``transformers+optimize``  a transformers RemBertModel after `rembert_fast.optimize`;
- ``transformers``           transformers' RemBertModel, eager (the reference every ratio is against);
- ``torch.compile``          `torch.compile(transformers model)`, default mode;
- ``torch.compile(max-autotune)``.
Before anything is timed, every implementation's output is compared with transformers in float32 on
the real (non-padding) positions; the max abs error is reported next to the speed, and a row whose
error exceeds twice transformers' own error in that dtype (or a floor, for float32) is flagged.

Per kernel, every op of `rembert_fast.ops` at RemBERT's widths against its eager `*_ref` in the same
run, with GB/s (and the fraction of a plain copy's bandwidth) for the memory-bound ops and TFLOP/s
for attention (plus SDPA's flash backend on CUDA).

Against the hardware: `--gemm-peak` (on by default on CUDA) measures the dense GEMM throughput of the
device in each dtype, on the model's own four GEMM shapes and (CUDA) one 8192-cube, the best of them
being the peak; every end-to-end row then reports its model TFLOP/s (`model_flops`: the FLOPs of a
forward over the real tokens only, padding is not useful work) and that as a fraction of the peak.

Timing: the median of `--iters` calls after the first call (whose output is checked and whose time,
holding compilation and autotuning, is reported separately) and `--warmup` more calls (CUDA events
on GPU, `perf_counter` on CPU). With `--stream N` a variable-length case is N batches of different
lengths and a call is one pass over them; the first pass's time (`first_call_s` + `first_pass_s`, the
table's "1st s") holds every compilation the stream causes. Results go
to a table on stdout and a JSON file (device, date, git commit, versions, one entry per row).

Run time: torch.compile (dynamic=False) compiles the 32-layer model once per dtype, input shape and
mode (max-autotune also benchmarks GEMM configurations), so the GPU defaults (2 dtypes x 6 shapes x 2
modes: 24 compilations) spend most of their time compiling; `--no-max-autotune`, `--no-compile` or a
few `--shapes` make a quick run (benches/gpu_check.sh compiles one shape). Each row's `first_call_s` holds
its compilation, autotuning or graph capture.

Memory: `peak_activation_mb` is the CUDA allocator's peak during one call above what was allocated
before it (activations and the output). A captured CUDA graph's memory pool was allocated at capture
and stays allocated, so for ``rembert_fast+graphs`` on a captured bucket (small batches) it counts
only the copy out of the graph; batches past the largest bucket run eagerly and count in full.

Layout: `cli` (options and driver), `e2e` (models, inputs, end-to-end rows), `kernels` (per-op rows),
`flops` (model FLOPs, GEMM peak), `timing`, `environment` (what a record ran on), `report` (tables,
summary, plot); `harness` serves the per-op scripts in benches/.
"""

from rembert_fast.bench.cli import SCHEMA, add_arguments, main, resolve, run
from rembert_fast.bench.e2e import IMPLS, Shape, bench_e2e, build_masters, graph_status, make_inputs
from rembert_fast.bench.flops import gemm_peak, model_flops
from rembert_fast.bench.kernels import bench_kernels
from rembert_fast.bench.report import format_kernel_table, format_table, summary, write_plot

__all__ = [
    "IMPLS",
    "SCHEMA",
    "Shape",
    "add_arguments",
    "bench_e2e",
    "bench_kernels",
    "build_masters",
    "format_kernel_table",
    "format_table",
    "gemm_peak",
    "graph_status",
    "main",
    "make_inputs",
    "model_flops",
    "resolve",
    "run",
    "summary",
    "write_plot",
]
