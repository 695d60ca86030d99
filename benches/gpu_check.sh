#!/usr/bin/env bash
# GPU validation in one call (issue 8): install with the CUDA extension, report the backends, prefill
# the dispatch's bf16 choices, run the GPU tests, the bf16 end-to-end benchmarks, then the rest.
#
#   usage: bash benches/gpu_check.sh OUTDIR
#
# Needs a CUDA machine with torch, triton, transformers, pytest, pytest-benchmark and nvcc installed;
# no network (pip runs with --no-index --no-deps --no-build-isolation, its version check off). The
# install builds for the visible GPU's arch only (TORCH_CUDA_ARCH_LIST from its compute capability,
# unless set) and is checked at once by importing rembert_fast.kernels and rembert_fast._C; when that
# fails, the package is reinstalled without the extension (REMBERT_FAST_BUILD_CUDA=0) so the other steps
# still run, env.json's "install" record says why, and REMBERT_FAST_BUILD_CUDA=0 stays set for every
# later step (no process compiles the failed extension again on first use: a minute each). pytest-xdist,
# where installed, runs the tests on 8 workers (Triton compiles each kernel specialisation once per
# process, and the tests launch a hundred or so: serially that alone is minutes).
#
# What comes back is a handful of files (a lent GPU machine returns at most 8), all directly in OUTDIR:
#   gpu_check.log           every step's output, in order, each under a "== step" header
#   steps.tsv               step, status (ok / fail(rc=N) / timeout(Ns) / skipped(...)), seconds
#   env.json                `rembert-fast doctor --json`: versions, device, backends and why not, and
#                           "install": the arch built for, each install attempt, why the extension is missing
#   gpu-STAMP-tune.json     `rembert-fast tune` tables, one per dtype (bf16, fp16): every op's call classes
#                           at the default config's widths on the benchmarks' buckets, each candidate's ms,
#                           the choice, probe errors
#   gpu-STAMP-e2e.json      `rembert-fast bench`: full RemBERT bf16, rembert_fast vs transformers, and
#                           every op at the model's widths (GB/s, fraction of a copy, TFLOP/s vs SDPA)
#   gpu-STAMP-compile.json  the issue-8 variable-length batch against torch.compile (default mode)
#   gpu-STAMP-kernels.json  benches/bench_{attention,layer_norm,bias_act,embed}.py tables and their
#                           *_backward.py tables, merged
#   gpu-STAMP-max-autotune.json   only with GPU_CHECK_MAX_AUTOTUNE=1
# The gpu-*.json files are the records to commit into benches/results/ as they are; each holds only its
# own rows (each record's parts are kept in a directory of their own until merged).
#
# Steps run in order of what the product's choices rest on, so a short lease brings those back first:
# the dispatch's bf16 choices (`rembert-fast tune`, so the benchmarks run on them), the GPU-marked tests
# (kernels at RemBERT's shapes and past 2**31 elements, the extension, CUDA graphs), the issue-8 bf16
# figures (end to end, whose rows are checked against transformers in float32 before they are timed,
# and torch.compile); then the fp16 choices (a cold compile of every kernel in fp16), the kernel test
# files on CUDA (not those whose tests stand the GPU in with the interpreter or fakes), the per-kernel
# tables. Each has a time limit cut to what is left of GPU_CHECK_BUDGET (default 540 s in all, so one
# call ends inside a 10-minute command limit); a failing or timed-out step is recorded and the next one
# still runs (an extension build it killed leaves no lock for the next to wait on); steps left when the
# budget is spent are recorded as skipped. The bench JSON files are rewritten after every case, so a
# step cut off by its limit still returns what it measured ("complete": false); the tune and kernel
# records are merged after each of their steps. Each record's summary is printed last.
#
# Expected seconds on an H100 host, cold caches (estimated from CPU runs of the same steps, not yet
# measured): install 50 (nvcc + the binding: 41 s on 2 cores), doctor 5, tune 10-40 per dtype (Triton
# compiles each probed kernel once), gpu_tests 40-90, bench_e2e 60-90 (two 575M-parameter random
# models built on the CPU: ~20 s), bench_compile 80-150 (torch.compile of the 32-layer model, once),
# kernel_tests 60-100, training_tests 30-60, kernel tables 20-60 each: the bf16 records are back after
# about 250-430 s; the kernel tables may need a second call (GPU_CHECK_SKIP="install doctor tune_bf16
# gpu_tests bench_e2e bench_compile tune_fp16 kernel_tests training_tests" on the still-warm machine).
#
# Environment: GPU_CHECK_SKIP="step ..." skips steps by name (e.g. "gpu_tests kernel_tests" for a
# second, benchmarks-only call); GPU_CHECK_MAX_AUTOTUNE=1 adds torch.compile(max-autotune) (its compile
# takes many minutes: give it its own call); GPU_CHECK_LAYERS (default 32) sets the end-to-end model
# depth; GPU_CHECK_BUDGET the total seconds; PYTHON the interpreter (default python3);
# GPU_CHECK_DRY_RUN=1 prints each step's command (one shell-quoted line) instead of running it (the CPU
# test suite checks those commands); REMBERT_FAST_COMMIT=<sha> is the commit recorded in the JSON where
# the checkout has no .git (a lent machine gets a copy of the working tree: put the hash in the command).
set -u

if [ $# -ne 1 ]; then
    echo "usage: bash benches/gpu_check.sh OUTDIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
STEPS="$OUT/steps.tsv"
LOG="$OUT/gpu_check.log"
printf 'step\tstatus\tseconds\n' > "$STEPS"
: > "$LOG"
LAYERS=${GPU_CHECK_LAYERS:-32}
BUDGET=${GPU_CHECK_BUDGET:-540}
SKIP=" ${GPU_CHECK_SKIP:-} "
TAG="gpu-$(date -u +%Y%m%dT%H%MZ)"
# Each record's parts before they are merged, one directory per record: outside OUTDIR, which may return
# only 8 files.
PARTS=$(mktemp -d) || exit 2
mkdir -p "$PARTS/tune" "$PARTS/kernels" || exit 2
trap 'rm -rf "$PARTS"' EXIT
export PYTHONUNBUFFERED=1
START=$SECONDS

# step NAME LIMIT_SECONDS COMMAND...: run COMMAND with a time limit (cut to what is left of the budget),
# append its output to the log, record its status (and leave it in LAST_STATUS).
step() {
    local name=$1 limit=$2
    shift 2
    local began=$SECONDS rc left=$((BUDGET - (SECONDS - START)))
    if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
        printf 'DRY-RUN %s:' "$name"
        printf ' %q' "$@"
        printf '\n'
        printf '%s\t%s\t%s\n' "$name" "dry-run" 0 >> "$STEPS"
        LAST_STATUS=dry-run
        return
    fi
    if [ "${SKIP#* "$name" }" != "$SKIP" ]; then
        printf '%s\t%s\t%s\n' "$name" "skipped(GPU_CHECK_SKIP)" 0 >> "$STEPS"
        LAST_STATUS=skipped
        return
    fi
    if [ "$left" -lt 20 ]; then
        printf '%s\t%s\t%s\n' "$name" "skipped(budget)" 0 >> "$STEPS"
        LAST_STATUS=skipped
        echo "== $name skipped: the ${BUDGET}s budget is spent" | tee -a "$LOG"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s, at $((SECONDS - START))s): $*" | tee -a "$LOG"
    # tee -a: what a step printed is in the log even when the whole call is cut off mid-step.
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 3
    rc=${PIPESTATUS[0]}
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="timeout(${limit}s)"
    elif [ "$rc" -ne 0 ]; then
        status="fail(rc=$rc)"
    fi
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - began))" >> "$STEPS"
    LAST_STATUS=$status
}

# Build for this machine's GPU only (one arch instead of three: a third of nvcc's time), here and in
# any first-use compile; a TORCH_CUDA_ARCH_LIST already set is kept.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' \
        2> /dev/null) || TORCH_CUDA_ARCH_LIST=
fi
if [ -n "$TORCH_CUDA_ARCH_LIST" ]; then
    export TORCH_CUDA_ARCH_LIST
    echo "== arch: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" | tee -a "$LOG"
else
    unset TORCH_CUDA_ARCH_LIST
    echo "== arch: no CUDA device visible; TORCH_CUDA_ARCH_LIST unset (setup.py's default archs)" | tee -a "$LOG"
fi

# Never the network: the lent machine has none, and pip's index or version check would only wait.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1
# -v: setup.py's reason for building without the extension is in the log (pip hides it otherwise).
PIP_INSTALL=("$PY" -m pip install -v --no-index --no-deps --no-build-isolation -e .)
INSTALL_JSON="$PARTS/install.json"
# INSTALL_CHECK JSON LOG WHAT: import what WHAT ("with extension" or "without extension") must make
# importable, append the attempt and the setup.py lines of the latest install step's log to JSON, exit 1
# when an import fails.
INSTALL_CHECK='
import json, os, pathlib, re, sys
record_path, log, what = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
record = json.loads(record_path.read_text()) if record_path.exists() else {
    "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"), "attempts": []}
installs = re.split(r"^== install(?:_without_extension)? \(limit", log.read_text(errors="replace"), flags=re.M)
section = installs[-1].split("\n== ", 1)[0] if len(installs) > 1 else ""
said = [line.strip()[:500] for line in section.splitlines()
        if "rembert_fast: " in line or "extension failed" in line]
attempt = {"build": what, "build_messages": said[-20:], "import_error": None}
try:
    import rembert_fast.kernels  # importable only through the editable install
    if what == "with extension":
        import rembert_fast._C  # noqa: F401
except Exception as err:
    attempt["import_error"] = f"{type(err).__name__}: {err}"
record["attempts"].append(attempt)
record["extension"] = "built" if what == "with extension" and not attempt["import_error"] else "missing"
record_path.write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(attempt))
sys.exit(1 if attempt["import_error"] else 0)
'
step install 180 "${PIP_INSTALL[@]}"
step install_check 60 "$PY" -c "$INSTALL_CHECK" "$INSTALL_JSON" "$LOG" "with extension"
# The extension did not build or does not import (an nvcc/torch mismatch, an ABI break): reinstall
# without it, so every later step still imports rembert_fast (the eager op stands in for the extension).
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] || [ "$LAST_STATUS" != ok ]; then
    step install_without_extension 180 env REMBERT_FAST_BUILD_CUDA=0 "${PIP_INSTALL[@]}"
    step install_check_without_extension 60 "$PY" -c "$INSTALL_CHECK" "$INSTALL_JSON" "$LOG" \
        "without extension"
    # What failed to build at install fails on first use too: no later process compiles it again.
    export REMBERT_FAST_BUILD_CUDA=0
fi
DOCTOR='"$0" -m rembert_fast.cli doctor --json > "$1"; rc=$?; cat "$1"'
SMI="nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv"
step doctor 60 sh -c "$DOCTOR; $SMI; exit \$rc" "$PY" "$OUT/env.json"
# env.json carries the install record: which build is installed and why the extension is missing.
if [ -f "$INSTALL_JSON" ]; then
    "$PY" - "$OUT/env.json" "$INSTALL_JSON" <<'EOF'
import json, pathlib, sys
env_path, install = pathlib.Path(sys.argv[1]), json.loads(pathlib.Path(sys.argv[2]).read_text())
try:
    env = json.loads(env_path.read_text())
except (OSError, ValueError):  # doctor failed or was skipped: the install record still comes back
    env = {}
env["install"] = install
env_path.write_text(json.dumps(env, indent=2) + "\n")
EOF
fi

# The dispatch's per-bucket choices first, as `rembert-fast tune` prefills them (probe every fused path
# and competitor, time each on the buckets the benchmarks below meet, cache the fastest): the table is in
# the log, each dtype's rows in the tune record, and the benchmarks then run on the choices made here.
# bf16 now (what the benchmarks run), fp16 after the bf16 figures.
TUNE=("$PY" -m rembert_fast.cli tune --config default --shapes 128,16384,32768 --seqlens 128,512)
# tune DTYPE: one dtype's choices, then the tune record rewritten with every dtype's table so far.
tune() {
    step "tune_$1" 120 "${TUNE[@]}" --dtype "$1" --json "$PARTS/tune/$1.json"
    [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] && return
    "$PY" - "$PARTS/tune" "$OUT/$TAG-tune.json" <<'EOF'
import json, pathlib, sys
parts, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
tables = {p.stem: json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))}
if tables:
    target.write_text(json.dumps({"schema": "rembert_fast.tune_tables/1", "tables": tables}, indent=1) + "\n")
EOF
}
tune bf16

# Tests: the GPU-marked ones now; after the end-to-end figures, the kernel, extension and fast-path
# files on real CUDA (conftest leaves TRITON_INTERPRET unset when a GPU is present, and these files put
# their tensors on it). The compile gate and the CPU-only files need no GPU: they are not run here.
# --continue-on-collection-errors: a file that fails to import must not stop every other file's tests.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfEs --tb=short --continue-on-collection-errors)
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] || "$PY" -c "import xdist" 2> /dev/null; then
    PYTEST+=(-n 8)
fi
step gpu_tests 150 "${PYTEST[@]}" -m gpu tests

# End to end, the issue-8 shapes, bf16, the full model: rembert_fast (eager launches and CUDA graphs),
# optimize(transformers), transformers eager; per-kernel figures at the model's widths in the same JSON.
BENCH=("$PY" -m rembert_fast.cli bench --layers "$LAYERS" --dtypes bf16 --warmup 3 --iters 10 --no-progress)
step bench_e2e 200 "${BENCH[@]}" --shapes "64x512:variable,64x512:fixed,1x128:fixed" --no-compile \
    --output "$OUT/$TAG-e2e.json"
# torch.compile recompiles the 32-layer model per shape (about a minute each): the target shape only.
step bench_compile 200 "${BENCH[@]}" --shapes 64x512:variable --no-kernels \
    --impls "rembert_fast,transformers,torch.compile" --output "$OUT/$TAG-compile.json"
if [ "${GPU_CHECK_MAX_AUTOTUNE:-0}" = 1 ]; then
    step bench_max_autotune 400 "${BENCH[@]}" --shapes 64x512:variable --no-kernels \
        --impls "rembert_fast,transformers,torch.compile(max-autotune)" --output "$OUT/$TAG-max-autotune.json"
fi

tune fp16

# test_ops_tuning.py and test_ops_measure.py stand the GPU in with the interpreter or fakes (their GPU
# test is GPU-marked, run above): not here.
KERNEL_TESTS=(tests/test_kernel_attention.py tests/test_kernel_attention_backward.py
    tests/test_kernel_layer_norm.py tests/test_kernel_activation.py
    tests/test_ops_linear_epilogue.py tests/test_ops_library.py tests/test_ops_dispatch.py
    tests/test_ops_competitors.py
    tests/test_embed.py tests/test_fast_path.py tests/test_patching.py tests/test_cuda_graphs.py)
step kernel_tests 150 "${PYTEST[@]}" -m "not gpu" "${KERNEL_TESTS[@]}"
# Training on the fused path: every head's gradients against transformers, torch.compile, autocast.
step training_tests 120 "${PYTEST[@]}" tests/test_training_fused.py

# Kernel tables, each merged into one JSON as soon as it is written (a cut-off call keeps the others).
for name in attention layer_norm bias_act embed attention_backward layer_norm_backward bias_act_backward; do
    step "bench_$name" 90 "$PY" "benches/bench_$name.py" --json "$PARTS/kernels/$name.json"
    if [ "${GPU_CHECK_DRY_RUN:-0}" != 1 ]; then
        "$PY" - "$PARTS/kernels" "$OUT/$TAG-kernels.json" <<'EOF'
import json, os, pathlib, subprocess, sys
parts, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
commit = os.environ.get("REMBERT_FAST_COMMIT")
if not commit:
    try:  # a lent machine's copy of the tree has no .git, and may have no git at all
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
tables = {p.stem: json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))}
if not tables:  # every script so far was skipped or died before its first shape
    sys.exit(0)
target.write_text(json.dumps({"schema": "rembert_fast.kernel_benches/1", "git_commit": commit or None,
                              "benches": tables}, indent=2) + "\n")
EOF
    fi
done

echo
for json in "$OUT/$TAG-e2e.json" "$OUT/$TAG-compile.json" "$OUT/$TAG-max-autotune.json"; do
    [ -f "$json" ] || continue
    echo "== $(basename "$json")"
    "$PY" -c "import json, sys; from rembert_fast.bench import summary; \
print(summary(json.load(open(sys.argv[1]))))" "$json"
done
echo
echo "== steps ($((SECONDS - START)) s in all; logs in $LOG, records in $OUT/$TAG-*.json)"
column -t -s "$(printf '\t')" "$STEPS" 2> /dev/null || cat "$STEPS"
