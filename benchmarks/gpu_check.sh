#!/usr/bin/env bash
# The one script a lent GPU runs (DESIGN.md section 4). From the repository root:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (or ./gpu_check_out)
#
# 1. offline editable install (no network on the GPU machine: --no-deps --no-build-isolation)
# 2. the whole test suite compiled for CUDA (FASTGAN_TEST_DEVICE=cuda: the kernel tests run the
#    compiled kernels on CUDA tensors instead of the interpreter, and @pytest.mark.gpu tests run)
# 3. the quick benchmark suite: JSON + Markdown
# 4. a short table printed last
# Everything is written under $OUT (at most 8 files come back from the device tool).
# Budget: well inside 8 minutes; each stage has its own timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-260}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-170}"
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

echo "== tests on CUDA (compiled kernels)"
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
FASTGAN_TEST_DEVICE=cuda timeout "$TEST_TIMEOUT" "$PY" -m pytest tests -q -p no:cacheprovider $XDIST \
  --junitxml="$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1
rc=$?
tail -n 25 "$OUT/pytest.log"
[ $rc -eq 0 ] || { echo "tests: exit $rc"; status=1; }

echo "== quick benchmark suite"
timeout "$BENCH_TIMEOUT" "$PY" -m fastgan bench --quick --device cuda --json "$OUT/bench.json" \
  --markdown "$OUT/bench.md" > "$OUT/bench.log" 2>&1
rc=$?
[ $rc -eq 0 ] || { echo "bench: exit $rc"; tail -n 20 "$OUT/bench.log"; status=1; }

echo "== summary"
grep -E "passed|failed|error" "$OUT/pytest.log" | tail -n 1
[ -f "$OUT/bench.md" ] && cat "$OUT/bench.md"
exit $status
