#!/usr/bin/env bash
# The GPU check (DESIGN.md, GPU; issue 10): what only a real GPU shows, in one run on an NVIDIA
# H200 host (16 cores) whose Python already has CuPy, Numba, Cython and PyTorch; no network.
#
#   1. environment: the GPU, the driver, the Python packages, whether backend="gpu" works;
#   2. build the Cython runtime in place (setup.py build_ext --inplace: no pip, no network),
#      and import the CPU backend (it says in one line if the Numba version is not supported);
#   3. warm Numba's cache of every CPU kernel on every core (the CPU backend is the parity
#      tests' reference; test processes then only load the cache, never write it at once);
#   4. every test under tests/backends/gpu, those marked gpu and slow included, spread over
#      the cores with pytest-xdist where it is installed and the warm-up finished;
#   5. bench/gpu.py: the timing table against PyTorch + cuDNN and issue 10's targets.
#
# About 5 minutes expected (estimated without a GPU: warm-up ~1 min on 16 cores, tests ~1.5,
# benchmark ~1.5); each step also has a hard time limit, about 8 minutes together, so a hung
# step cannot hold the machine.
#
# Usage: bash bench/gpu_check.sh OUTDIR   (PYTHON=/path/to/python to choose the interpreter)
# OUTDIR gets environment.txt, build.log, cpu_backend.log, warmup.log, tests.log, tests.xml
# (JUnit), bench.txt and summary.txt. A failed step is logged and the later steps still run (the timings are worth
# having when a test fails); the exit status is 1 if any step failed.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash bench/gpu_check.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" && out=$(cd "$1" && pwd) || exit 2
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cores=$(nproc)
# the package is built in place, not installed: the tests, the CLI and the benchmark import it
# from here
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
failed=()
: >"$out/summary.txt"

# step NAME LOG COMMAND...: run COMMAND, its output shown and kept in OUTDIR/LOG, and record its
# status and time in summary.txt
step() {
    local name=$1 log=$2 begin=$SECONDS status
    shift 2
    echo "==== $name ($((SECONDS - start)) s in)"
    "$@" 2>&1 | tee "$out/$log"
    status=$?
    local line="$name: $([ "$status" = 0 ] && echo ok || echo "FAILED (status $status)")"
    line+=", $((SECONDS - begin)) s, log $log"
    echo "$line" | tee -a "$out/summary.txt"
    [ "$status" = 0 ] || failed+=("$name")
}

environment() {
    date -u
    timeout 10 nvidia-smi || echo "nvidia-smi: not found or failed"
    echo "cores: $cores"
    timeout 30 "$python" - <<'EOF'
import importlib
import platform
import sys

print(f"python {platform.python_version()} at {sys.executable}")
for name in ("numpy", "numba", "Cython", "scipy", "cupy", "torch", "pytest", "xdist"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as error:  # a missing package is reported, not fatal here
        print(f"{name}: {type(error).__name__}: {error}")
import backends

try:
    backends.get_backend("gpu")
    print('backend="gpu": available')
except RuntimeError as error:
    print(f'backend="gpu": unavailable: {error}')
    sys.exit(1)
EOF
}

tests() {
    local parallel=()
    # a cold cache would be written by several workers at once: then one process only
    if [[ " ${failed[*]} " != *" warmup "* ]] && "$python" -c "import xdist" 2>/dev/null; then
        # 8 workers of 2 Numba threads each: Numba's OpenMP workers spin after a parallel
        # region, so more threads than cores in all would slow every worker down
        local workers=$((cores >= 16 ? 8 : (cores + 1) / 2))
        parallel=(-n "$workers")
        export NUMBA_NUM_THREADS=$((cores / workers > 0 ? cores / workers : 1))
    fi
    # -m "": no marker filter, overriding pyproject's -m 'not slow' (gpu and slow tests too)
    timeout -k 10 180 "$python" -m pytest -q -m "" "${parallel[@]}" --durations=15 \
        --junitxml="$out/tests.xml" tests/backends/gpu
}

step environment environment.txt environment
step build build.log timeout 45 "$python" setup.py build_ext --inplace
# the CPU backend checks its Numba version at import (backends/cpu/numba_setup.py): one line
step cpu-backend cpu_backend.log "$python" -c "import backends.cpu; print('backends.cpu imports')"
step warmup warmup.log timeout 120 "$python" -m engine.cli warmup --jobs "$cores" --no-progress
step tests tests.log tests
step bench bench.txt timeout -k 10 135 "$python" bench/gpu.py

total=$((SECONDS - start))
{
    echo "total: $total s$([ "$total" -gt 480 ] && echo ' (over the 8-minute budget)')"
    if [ ${#failed[@]} -eq 0 ]; then echo "all steps passed"; else echo "failed: ${failed[*]}"; fi
} | tee -a "$out/summary.txt"
[ ${#failed[@]} -eq 0 ]
