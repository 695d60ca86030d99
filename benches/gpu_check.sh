#!/usr/bin/env bash
# GPU validation in one call (issue 8): install with the CUDA extension, report the backends, run the
# GPU tests and the kernel tests on real CUDA, then the kernel and end-to-end benchmarks.
#
#   usage: bash benches/gpu_check.sh OUTDIR
#
# Needs a CUDA machine with torch, triton, transformers, pytest, pytest-benchmark and nvcc installed;
# no network (pip runs with --no-deps --no-build-isolation). Every step's log, JSON and exit status
# land in OUTDIR; a failing step is recorded and the next one still runs. Each step has a time limit
# so the whole stays well under 10 minutes. The summary table is printed last.
#
# Environment: GPU_CHECK_MAX_AUTOTUNE=0 skips torch.compile(max-autotune) (its compile takes minutes);
# GPU_CHECK_LAYERS (default 32) sets the end-to-end model depth; GPU_CHECK_BUDGET (default 560) is
# the total seconds: a step never runs past it, and steps left when it is spent are recorded as skipped;
# GPU_CHECK_DRY_RUN=1 prints each step's command (one shell-quoted line) instead of running it (the
# CPU test suite checks those commands).
set -u

if [ $# -ne 1 ]; then
    echo "usage: bash benches/gpu_check.sh OUTDIR" >&2
    exit 2
fi
OUT=$1
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.." || exit 2
STEPS="$OUT/steps.tsv"
printf 'step\tstatus\tseconds\tlog\n' > "$STEPS"
LAYERS=${GPU_CHECK_LAYERS:-32}
BUDGET=${GPU_CHECK_BUDGET:-560}
START=$SECONDS

# step NAME LIMIT_SECONDS COMMAND...: run COMMAND with a time limit (cut to what is left of the budget),
# log to OUTDIR/NAME.log, record its status.
step() {
    local name=$1 limit=$2
    shift 2
    local log="$OUT/$name.log" began=$SECONDS rc left=$((BUDGET - (SECONDS - START)))
    if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
        printf 'DRY-RUN %s:' "$name"
        printf ' %q' "$@"
        printf '\n'
        printf '%s\t%s\t%s\t%s\n' "$name" "dry-run" 0 "-" >> "$STEPS"
        return
    fi
    if [ "$left" -lt 20 ]; then
        printf '%s\t%s\t%s\t%s\n' "$name" "skipped(budget)" 0 "-" >> "$STEPS"
        echo "== $name skipped: the ${BUDGET}s budget is spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee "$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="timeout(${limit}s)"
    elif [ "$rc" -ne 0 ]; then
        status="fail(rc=$rc)"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - began))" "$log" >> "$STEPS"
    tail -n 5 "$log"
}

step install 180 python -m pip install --no-deps --no-build-isolation -e .
step doctor 60 sh -c "rembert-fast doctor --json > '$OUT/doctor.json' && cat '$OUT/doctor.json'"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>&1
fi

# GPU-marked tests, then the kernel, extension and fast-path tests on the triton backend with real
# CUDA (conftest leaves TRITON_INTERPRET unset when a GPU is present).
step gpu_tests 120 python -m pytest -q -p no:cacheprovider -m gpu tests --junitxml "$OUT/gpu_tests.xml"
KERNEL_TESTS=$(ls tests/test_kernel_*.py tests/test_embed.py tests/test_fast_path.py tests/test_patching.py \
    tests/test_cuda_graphs.py 2>/dev/null)
# shellcheck disable=SC2086  # the list is word-split on purpose
step kernel_tests 150 python -m pytest -q -p no:cacheprovider -m "not gpu" $KERNEL_TESTS \
    --junitxml "$OUT/kernel_tests.xml"

# Kernel benchmarks: each benches/bench_*.py of a kernel (not the end-to-end, CPU-model or tokenizer
# ones) through its __main__ table when it takes --json, else as a pytest-benchmark suite.
for suite in benches/bench_*.py; do
    name=$(basename "$suite" .py)
    case $name in bench_e2e | bench_model_cpu | bench_tokenizer) continue ;; esac
    if grep -q -- '"--json"' "$suite"; then
        step "$name" 60 python "$suite" --json "$OUT/$name.json"
    else
        step "$name" 60 python -m pytest -q -p no:cacheprovider "$suite" \
            --benchmark-json "$OUT/$name.json" --benchmark-min-rounds 10
    fi
done

# End to end, the issue-8 shapes, bf16, the full model: rembert_fast (eager launches and CUDA graphs),
# optimize(transformers), transformers eager and torch.compile; per-kernel figures in the same JSON.
E2E_SHAPES="64x512:variable,64x512:fixed,1x128:fixed"
step bench_e2e 200 rembert-fast bench --layers "$LAYERS" --dtypes bf16 --shapes "$E2E_SHAPES" \
    --no-max-autotune --warmup 3 --iters 10 --no-progress --output "$OUT/bench_e2e.json"
if [ "${GPU_CHECK_MAX_AUTOTUNE:-1}" != 0 ]; then
    step bench_max_autotune 150 rembert-fast bench --layers "$LAYERS" --dtypes bf16 \
        --shapes 64x512:variable --impls "rembert_fast,transformers,torch.compile(max-autotune)" \
        --no-kernels --warmup 3 --iters 10 --no-progress --output "$OUT/bench_max_autotune.json"
fi

echo
echo "== end-to-end (from $OUT/bench_e2e.log)"
sed -n '/^impl /,/^wrote /p' "$OUT/bench_e2e.log" 2>/dev/null
echo
echo "== steps ($((SECONDS - START)) s in all; logs and JSON in $OUT)"
column -t -s "$(printf '\t')" "$STEPS" 2>/dev/null || cat "$STEPS"
