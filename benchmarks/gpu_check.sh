#!/usr/bin/env bash
# The one script a lent GPU runs (DESIGN.md section 4). From the repository root:
#
#     bash benchmarks/gpu_check.sh            # results under $OUT (or ./gpu_check_out)
#
# The open questions first (issue 14), every torch.compile provider last:
# 1. offline editable install (no network on the GPU machine: --no-deps --no-build-isolation)
# 2. the capture probe: does autograd.grad(create_graph=True) + backward + Adam capture in ONE CUDA
#    graph and replay like eager (plain torch and fastgan layers, then capture_step with R1 and
#    WGAN-GP)? Verdict and error text go to env.log
# 3. the headline iteration (DCGAN-64 WGAN-GP, batch 64, bf16): eager, fastgan, fastgan+graphs,
#    then compile; the conv dispatcher's cache after it is the per-layer Triton-vs-cuDNN table of
#    the real step (conv_dispatch.json, printed)
# 4. the whole test suite compiled for CUDA (FASTGAN_TEST_DEVICE=cuda: the kernel tests run the
#    compiled kernels on CUDA tensors, and the @pytest.mark.gpu tests run)
# 5. the quick benchmark suite without compile, then its compile providers; merged into bench.json
# 6. the compact speedup summary, printed last
# Files under $OUT: env.log pytest.log pytest.xml bench.json bench.log conv_dispatch.json summary.txt
# [bench.png]. Budget: about 7 minutes (stage timeouts 50 + 90 + 150 + 70 + 60 s, plus install and
# summary; each overridable below). A stage that runs out gets SIGINT first (pytest still writes its
# summary and XML, the bench suite a complete JSON); SIGKILL follows 20 s later.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# no network here: pip must not look for an index or a newer pip (also for tests that run pip)
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
PROBE_TIMEOUT="${GPU_CHECK_PROBE_TIMEOUT:-50}"
HEADLINE_TIMEOUT="${GPU_CHECK_HEADLINE_TIMEOUT:-90}"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-150}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-70}"
COMPILE_TIMEOUT="${GPU_CHECK_COMPILE_TIMEOUT:-60}"
HEADLINE="step.dcgan64.wgan_gp.iter"
export FASTGAN_CACHE_DIR="$OUT/cache"   # the conv dispatcher's measured choices, copied to $OUT below
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

echo "== headline iteration: eager, fastgan, fastgan+graphs, then compile"
timeout -s INT -k 20 "$HEADLINE_TIMEOUT" "$PY" -m fastgan bench --quick --device cuda --cases "$HEADLINE" \
  --dtypes bfloat16 --json "$OUT/bench_headline.json" --time-budget $(( HEADLINE_TIMEOUT - 30 )) > "$OUT/bench.log" 2>&1
rc=$?
tail -n 8 "$OUT/bench.log"
[ $rc -eq 0 ] || { echo "headline: exit $rc"; status=1; }
"$PY" - "$OUT" <<'PYEOF' 2>&1 | tee -a "$OUT/bench.log"
import json, os, shutil, sys
out = sys.argv[1]
src = os.path.join(out, "cache", "conv_dispatch.json")
if not os.path.exists(src):
    print("no conv dispatch cache (no Triton conv ran)")
    sys.exit(0)
shutil.copy(src, os.path.join(out, "conv_dispatch.json"))
print("per-shape Triton vs cuDNN of the headline step (the dispatcher's own timings, ms):")
for key, e in sorted(json.load(open(src)).items()):
    if isinstance(e, dict):
        print(f"  {e['impl']:<6} triton {e.get('t_triton_ms')!s:>8}  vendor {e.get('t_vendor_ms')!s:>8}  {key}")
PYEOF

echo "== tests on CUDA (compiled kernels, gpu-marked tests included)"
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
FASTGAN_TEST_DEVICE=cuda timeout -s INT -k 20 "$TEST_TIMEOUT" "$PY" -m pytest tests -q -p no:cacheprovider $XDIST \
  --junitxml="$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1
rc=$?
tail -n 25 "$OUT/pytest.log"
[ $rc -eq 0 ] || { echo "tests: exit $rc"; status=1; }

echo "== quick benchmark suite without compile, then its compile providers"
timeout -s INT -k 20 "$BENCH_TIMEOUT" "$PY" -m fastgan bench --quick --device cuda --json "$OUT/bench_rest.json" \
  --exclude "$HEADLINE" --providers eager,fastgan,fastgan+graphs --time-budget $(( BENCH_TIMEOUT - 25 )) \
  >> "$OUT/bench.log" 2>&1
rc=$?
[ $rc -eq 0 ] || { echo "bench: exit $rc"; tail -n 20 "$OUT/bench.log"; status=1; }
timeout -s INT -k 20 "$COMPILE_TIMEOUT" "$PY" -m fastgan bench --quick --device cuda --json "$OUT/bench_compile.json" \
  --exclude "$HEADLINE" --providers compile --time-budget $(( COMPILE_TIMEOUT - 25 )) >> "$OUT/bench.log" 2>&1
rc=$?
[ $rc -eq 0 ] || { echo "bench compile: exit $rc"; status=1; }
# one document: the headline run's records first, then the others' (a case and provider once)
"$PY" - "$OUT" <<'PYEOF' || status=1
import json, os, sys
out = sys.argv[1]
parts = [os.path.join(out, f) for f in ("bench_headline.json", "bench_rest.json", "bench_compile.json")]
docs = [json.load(open(p)) for p in parts if os.path.exists(p)]
if docs:
    merged, seen = dict(docs[0]), set()
    merged["records"] = []
    for d in docs:
        for r in d["records"]:
            if (r["case"], r["provider"], r["dtype"]) not in seen:
                seen.add((r["case"], r["provider"], r["dtype"]))
                merged["records"].append(r)
    json.dump(merged, open(os.path.join(out, "bench.json"), "w"), indent=1)
for p in parts:
    if os.path.exists(p):
        os.remove(p)
PYEOF
rm -rf "$OUT/cache"
if [ -f "$OUT/bench.json" ] && "$PY" -c "import matplotlib" 2>/dev/null; then
  "$PY" -c "import json, sys; from fastgan.benchmarks.plot import plot_result; plot_result(json.load(open(sys.argv[1])), sys.argv[2])" \
    "$OUT/bench.json" "$OUT/bench.png" >/dev/null 2>&1
fi

echo "== summary"
grep -E "passed|failed|error" "$OUT/pytest.log" | tail -n 1
if [ -f "$OUT/bench.json" ]; then
  "$PY" -m fastgan bench --summary "$OUT/bench.json" > "$OUT/summary.txt" 2>&1 || status=1
  cat "$OUT/summary.txt"
else
  echo "no bench.json"
fi
exit $status
