#!/usr/bin/env bash
# One device session in one call: versions, the CUDA tests on the GPU, memcheck
# over a small subset, the torchvision reference check, and the GPU benchmark.
# Every step runs under its own time limit and the script keeps going past a
# failing step; each step's exit status is printed at the end.
#
#   OUT=/some/dir bash benchmarks/gpu_session.sh            # on the GPU machine
#   STEPS="versions tests" bash benchmarks/gpu_session.sh   # a subset
#   BENCH_ARGS="--only deform_conv2d" bash benchmarks/gpu_session.sh
#
# Runs the project from this tree (PYTHONPATH) on the machine's own packages.
# Smoke test without a GPU: SMOKE=1 NUMBA_ENABLE_CUDASIM=1 bash benchmarks/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
# numba-cuda releases before NumPy 2.5 register an overload of np.row_stack,
# which NumPy 2.5 removed: their first kernel compile then fails with
# "module 'numpy' has no attribute 'row_stack'". A sitecustomize on the path
# restores the alias (to np.vstack, which it always was) for this run only.
SHIM=$(mktemp -d)
cat >"$SHIM/sitecustomize.py" <<'PY'
import numpy
if not hasattr(numpy, "row_stack"):
    numpy.row_stack = numpy.vstack
PY
export PYTHONPATH=$PWD:$SHIM${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export PY=${PY:-python3}
STEPS=${STEPS:-"versions tests tvcheck bench memcheck profile"}
BENCH_ARGS=${BENCH_ARGS:-"--repeats 20 --measure-cap-s 1.0 --total-s 100"}
declare -A STATUS

step() {  # step NAME SECONDS command...
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return ;; esac
    echo
    echo "=== $name ($(date -u +%T), limit ${limit}s)"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@"
    STATUS[$name]="rc=$? in $((SECONDS - t0))s"
    echo "=== $name: ${STATUS[$name]}"
}

versions() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
    nvcc --version 2>/dev/null | tail -1 || true
    compute-sanitizer --version 2>/dev/null | head -2 || true
    "$PY" - <<'PY'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "numba", "numba_cuda", "cupy", "torch", "torchvision", "hypothesis",
             "pytest", "cuda.bindings", "cuda.core"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:14s} {getattr(mod, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name:14s} missing ({type(exc).__name__}: {exc})")
try:
    import cupy
    print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "driver", cupy.cuda.runtime.driverGetVersion())
    from numba import cuda
    print("numba sees", cuda.gpus, cuda.get_current_device().compute_capability)
except Exception as exc:  # noqa: BLE001
    print("device query failed:", type(exc).__name__, exc)
import defconv_np
print("defconv_np", defconv_np.__version__, "from", defconv_np.__file__)
PY
}

if [ "${SMOKE:-0}" = 1 ]; then
    # tiny shapes under the simulator: only the script's plumbing is tested
    BENCH_ARGS="--quick"
fi

export -f versions
step versions 45 bash -c versions
step tests 150 "$PY" -m pytest -p no:cacheprovider -m cuda -o xfail_strict=true \
    --junitxml="$OUT/junit_cuda.xml" -q tests/
step tvcheck 45 "$PY" benchmarks/gpu_torchvision_check.py --out "$OUT/torchvision_check.json"
# shellcheck disable=SC2086
step bench 150 "$PY" benchmarks/gpu_bench.py $BENCH_ARGS --out "$OUT/gpu_bench.json"
# kernel memory errors only: cuda-bindings probes driver entry points that
# this driver lacks (cuGetProcAddress: CUDA_ERROR_INVALID_VALUE), harmlessly
step memcheck 75 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 99 \
    --print-limit 50 --log-file "$OUT/memcheck.log" "$PY" benchmarks/gpu_memcheck.py
if [ -f "$OUT/memcheck.log" ]; then grep -v "Host Frame" "$OUT/memcheck.log" | tail -8; fi
step profile 60 "$PY" benchmarks/gpu_profile.py
# another defconv_np side by side (BASELINE: a folder holding its defconv_np)
# shellcheck disable=SC2086
step bench_base 60 env DEFCONV_BENCH_ROOT="${BASELINE:-}" "$PY" benchmarks/gpu_bench.py \
    $BENCH_ARGS --only deform_conv2d --no-chart --out "$OUT/gpu_bench_baseline.json"
# shellcheck disable=SC2086
step bench_budget 45 "$PY" benchmarks/gpu_bench.py $BENCH_ARGS --only deform_conv2d \
    --column-budget-mib "${BUDGET_MIB:-128}" --no-chart --out "$OUT/gpu_bench_budget.json"

echo
echo "=== summary"
for s in $STEPS; do echo "$s: ${STATUS[$s]:-not run}"; done
