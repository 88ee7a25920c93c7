#!/usr/bin/env bash
# The one script a lent GPU runs (DESIGN.md section 4). From the repository root:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (or ./gpu_check_out)
#
# 1. offline editable install (no network on the GPU machine: --no-deps --no-build-isolation)
# 2. the whole test suite compiled for CUDA (FASTGAN_TEST_DEVICE=cuda: the kernel tests run the
#    compiled kernels on CUDA tensors, and the @pytest.mark.gpu tests run: ResourceMonitor/NVML,
#    CUDA-graph steps, compiled Triton speed paths)
# 3. the pytest-benchmark micro cases on CUDA (fastgan's Triton path vs plain torch)
# 4. the quick benchmark suite (JSON + log with the full Markdown table), cut off by its own
#    --time-budget so that its JSON is complete even when compile times run long
# 5. the compact speedup summary, printed last
# Everything is written under $OUT; at most 8 files come back from the device tool:
#   env.log pytest.log pytest.xml micro.json bench.json bench.log summary.txt [bench.png]
# Budget: inside 8 minutes (stage timeouts 220 + 40 + 175 s, plus install and summary); each
# stage has its own timeout (seconds, overridable through the environment below).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-220}"
MICRO_TIMEOUT="${GPU_CHECK_MICRO_TIMEOUT:-40}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-175}"
BENCH_BUDGET=$(( BENCH_TIMEOUT - 30 ))   # no new case starts after this; leaves time to finish one
status=0

{
  echo "== environment"; date -u; git rev-parse HEAD 2>/dev/null; git status --porcelain --untracked-files=no 2>/dev/null | head -5
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  echo "== install"
  "$PY" -m pip install --no-deps --no-build-isolation -e . 2>&1 | tail -3
  "$PY" -m fastgan info --no-probe
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"
"$PY" -c "import fastgan.kernels" || { echo "install failed; see $OUT/env.log"; exit 1; }

echo "== tests on CUDA (compiled kernels, gpu-marked tests included)"
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
FASTGAN_TEST_DEVICE=cuda timeout "$TEST_TIMEOUT" "$PY" -m pytest tests -q -p no:cacheprovider $XDIST \
  --junitxml="$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1
rc=$?
tail -n 25 "$OUT/pytest.log"
[ $rc -eq 0 ] || { echo "tests: exit $rc"; status=1; }

echo "== pytest-benchmark micro cases"
if "$PY" -c "import pytest_benchmark" 2>/dev/null; then
  timeout "$MICRO_TIMEOUT" "$PY" -m pytest benchmarks -q -p no:cacheprovider --benchmark-only \
    --benchmark-json="$OUT/micro.json" --benchmark-columns=median,iqr,rounds > "$OUT/micro.log" 2>&1
  rc=$?
  tail -n 3 "$OUT/micro.log"
  [ $rc -eq 0 ] || { echo "micro: exit $rc"; tail -n 15 "$OUT/micro.log"; status=1; }
  rm -f "$OUT/micro.log"  # its table is in micro.json; keeps the file count at 8
else
  echo "pytest-benchmark not installed: skipped"
fi

echo "== quick benchmark suite (budget ${BENCH_BUDGET} s)"
PLOT=""
"$PY" -c "import matplotlib" 2>/dev/null && PLOT="--plot $OUT/bench.png"
timeout "$BENCH_TIMEOUT" "$PY" -m fastgan bench --quick --device cuda --json "$OUT/bench.json" \
  --time-budget "$BENCH_BUDGET" $PLOT > "$OUT/bench.log" 2>&1
rc=$?
[ $rc -eq 0 ] || { echo "bench: exit $rc"; tail -n 20 "$OUT/bench.log"; status=1; }

echo "== summary"
grep -E "passed|failed|error" "$OUT/pytest.log" | tail -n 1
if [ -f "$OUT/bench.json" ]; then
  "$PY" -m fastgan bench --summary "$OUT/bench.json" > "$OUT/summary.txt" 2>&1 || status=1
  cat "$OUT/summary.txt"
else
  echo "no bench.json"
fi
exit $status
