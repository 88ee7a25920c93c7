#!/usr/bin/env bash
# The one script a lent GPU runs (DESIGN.md section 4). From the repository root:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (or ./gpu_check_out)
#
# 1. offline editable install (no network on the GPU machine: --no-deps --no-build-isolation)
# 2. the capture probe: issue 6's first question, answered before anything else can use the time:
#    does autograd.grad(create_graph=True) + backward + Adam capture in ONE CUDA graph and replay
#    like eager (plain torch and fastgan layers, then capture_step with R1 and WGAN-GP)? Its
#    verdict and any error text are appended to env.log
# 3. the whole test suite compiled for CUDA (FASTGAN_TEST_DEVICE=cuda: the kernel tests run the
#    compiled kernels on CUDA tensors, and the @pytest.mark.gpu tests run: ResourceMonitor/NVML,
#    CUDA-graph steps, compiled Triton speed paths)
# 4. the pytest-benchmark micro cases on CUDA (fastgan's Triton path vs plain torch)
# 5. the quick benchmark suite (JSON + log with the full Markdown table), cut off by its own
#    --time-budget so that its JSON is complete even when compile times run long
# 6. the compact speedup summary, printed last
# Everything is written under $OUT; at most 8 files come back from the device tool:
#   env.log pytest.log pytest.xml micro.json bench.json bench.log summary.txt [bench.png]
# Budget: about 7.6 minutes at most (stage timeouts 60 + 170 + 35 + 165 s, plus install and summary); each
# stage has its own timeout (seconds, overridable through the environment below). A stage that
# runs out gets SIGINT (Ctrl-C) first, so pytest still prints its summary and writes its XML and
# the bench suite records the rest as skipped and writes a complete bench.json; SIGKILL follows
# 20 s later if it does not stop.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# no network here: pip must not look for an index or a newer pip (also for tests that run pip)
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
PROBE_TIMEOUT="${GPU_CHECK_PROBE_TIMEOUT:-60}"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-170}"
MICRO_TIMEOUT="${GPU_CHECK_MICRO_TIMEOUT:-35}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-165}"
BENCH_BUDGET=$(( BENCH_TIMEOUT - 45 ))   # no new case or provider starts after this (the clock starts after imports)
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
if ! "$PY" -c "import fastgan.kernels, fastgan.benchmarks" 2>/dev/null; then
  # The editable install failed (e.g. an old setuptools without the `wheel` package). Fall back
  # to an import shim: a sitecustomize.py on PYTHONPATH (outside $OUT, whose files come back)
  # that maps fastgan.kernels -> kernels/ and fastgan.benchmarks -> benchmarks/ as setup.py does;
  # `fastgan` itself is found in the repository root (every command here runs from it).
  echo "== editable install failed: using an import shim (see env.log for pip's error)" | tee -a "$OUT/env.log"
  SHIM="$(mktemp -d)"
  cat > "$SHIM/sitecustomize.py" <<PYEOF
import importlib.util, os, sys
_MAP = {"fastgan.kernels": "$PWD/kernels", "fastgan.benchmarks": "$PWD/benchmarks", "fastgan": "$PWD/fastgan"}
class _FastganShim:
    @staticmethod
    def find_spec(name, path=None, target=None):
        folder = _MAP.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
sys.meta_path.append(_FastganShim)  # last: an installed or local fastgan wins
PYEOF
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import fastgan.kernels, fastgan.benchmarks" || { echo "install failed; see $OUT/env.log"; exit 1; }
fi

echo "== capture probe: autograd.grad(create_graph=True) in one CUDA graph" | tee -a "$OUT/env.log"
FASTGAN_TEST_DEVICE=cuda timeout -s INT -k 10 "$PROBE_TIMEOUT" "$PY" -m pytest tests/test_graphs.py -q -rA \
  -p no:cacheprovider -k "autograd_grad_create_graph or capture_step_penalties" > "$OUT/probe.tmp" 2>&1
rc=$?
cat "$OUT/probe.tmp" >> "$OUT/env.log"; rm -f "$OUT/probe.tmp"
grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/env.log" | tail -n 6
[ $rc -eq 0 ] || { echo "capture probe: exit $rc (error text in env.log)"; status=1; }

echo "== tests on CUDA (compiled kernels, gpu-marked tests included)"
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
FASTGAN_TEST_DEVICE=cuda timeout -s INT -k 20 "$TEST_TIMEOUT" "$PY" -m pytest tests -q -p no:cacheprovider $XDIST \
  --junitxml="$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1
rc=$?
tail -n 25 "$OUT/pytest.log"
[ $rc -eq 0 ] || { echo "tests: exit $rc"; status=1; }

echo "== pytest-benchmark micro cases"
if "$PY" -c "import pytest_benchmark" 2>/dev/null; then
  timeout -s INT -k 20 "$MICRO_TIMEOUT" "$PY" -m pytest benchmarks -q -p no:cacheprovider --benchmark-only \
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
timeout -s INT -k 20 "$BENCH_TIMEOUT" "$PY" -m fastgan bench --quick --device cuda --json "$OUT/bench.json" \
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
