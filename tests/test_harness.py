"""The benchmark harness on the CPU: one tiny case end to end, the JSON schema, the table,
and the command-line entry points (fastgan bench, python -m benchmarks, fastgan info)."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from fastgan.benchmarks import harness
from fastgan.benchmarks.run import main as bench_main


def _tiny_case(fail_compile=False):
    def make(device, dtype):
        x = torch.randn(64, 32, device=device, dtype=dtype)
        fns = {"eager": lambda: torch.relu(x) * 2.0, "fastgan": "fastgan needs CUDA here"}
        if fail_compile:
            def broken():
                raise RuntimeError("torch.compile with aot_autograd does not currently support double backward")
            fns["compile"] = broken
        return fns
    return harness.Case(case="tiny.relu.fwd", family="ops", shape=[64, 32], dtype="float32",
                        bytes=2 * 64 * 32 * 4, flops=2 * 64 * 32, make=make, images=64)


@pytest.fixture(scope="module")
def doc():
    return harness.run([_tiny_case(fail_compile=True)], ["eager", "compile", "fastgan"], torch.device("cpu"),
                       quick=True, log=lambda s: None)


@pytest.fixture
def fixed_ceilings(monkeypatch):
    """Skip the ceiling measurement (runs that test the harness's control flow, not numbers)."""
    monkeypatch.setattr(harness, "measure_ceilings", lambda device, quick=True: {
        "copy_gbps": 1.0, "bf16_tflops": 1.0, "fp32_tflops": 1.0})


def test_document_follows_the_schema(doc):
    harness.validate(doc)
    assert doc["schema"] == harness.SCHEMA and doc["gpu"] is None
    assert doc["nvml"]["available"] is False and doc["nvml"]["reason"]
    assert doc["torch"] == torch.__version__
    for k in ("copy_gbps", "bf16_tflops", "fp32_tflops"):
        assert doc["ceilings"][k] > 0
    by_provider = {r["provider"]: r for r in doc["records"]}
    assert set(by_provider) == {"eager", "compile", "fastgan"}
    eager = by_provider["eager"]
    assert eager["error"] is None and 0 < eager["p20_ms"] <= eager["median_ms"] <= eager["p80_ms"]
    assert eager["gbps"] == pytest.approx(2 * 64 * 32 * 4 / (eager["median_ms"] * 1e-3) / 1e9)
    assert eager["images_per_s"] == pytest.approx(64 / (eager["median_ms"] * 1e-3))
    assert eager["roofline_frac"] > 0
    assert eager["energy_j"] is None and eager["peak_mem_bytes"] is None  # no GPU, no NVML
    assert "double backward" in by_provider["compile"]["error"]
    assert by_provider["compile"]["median_ms"] is None
    assert by_provider["fastgan"]["error"] == "fastgan needs CUDA here"


def test_interrupt_finishes_the_document(fixed_ceilings):
    """Ctrl-C (gpu_check.sh's ``timeout -s INT``) mid-run: the case in progress and the rest are
    recorded as skipped, and the document written so far stays valid."""

    def interrupted(device, dtype):
        raise KeyboardInterrupt

    cases = [_tiny_case(), harness.Case(case="tiny.interrupted", family="ops", shape=[1], dtype="float32", bytes=4,
                                        flops=0, make=interrupted), _tiny_case()]
    written = []
    out = harness.run(cases, ["eager"], torch.device("cpu"), log=lambda s: None,
                      on_progress=lambda d: written.append(len(d["records"])))
    harness.validate(out)
    assert out["interrupted"] is True and written == [0, 1]
    errors = [r["error"] for r in out["records"]]
    assert errors[0] is None and all(e.startswith("skipped: interrupted") for e in errors[1:]) and len(errors) == 3


def test_sigint_is_raised_inside_a_case_and_recorded_between_cases(fixed_ceilings):
    """A real SIGINT: inside a case it interrupts at once; one that lands between cases (or
    whose KeyboardInterrupt Python swallowed: raised in an import lock's weakref callback) is
    recorded and ends the run at the next case, never at an arbitrary line of the run's own
    bookkeeping."""
    import signal

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores SIGINT
    try:
        with harness.sigint_guard() as guard:
            os.kill(os.getpid(), signal.SIGINT)  # outside a case: recorded, not raised
            assert guard.requested.is_set()
            with pytest.raises(KeyboardInterrupt):
                with guard.raising():
                    os.kill(os.getpid(), signal.SIGINT)
                    for _ in range(1000):  # the handler runs between bytecodes
                        pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        def after_the_first(d):  # a Ctrl-C while the first case's results are written
            if len(d["records"]) == 1:
                os.kill(os.getpid(), signal.SIGINT)

        out = harness.run([_tiny_case(), _tiny_case()], ["eager"], torch.device("cpu"), log=lambda s: None,
                          on_progress=after_the_first)
        assert out["interrupted"] is True
        assert out["records"][0]["error"] is None and out["records"][1]["error"].startswith("skipped: interrupted")
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # an ignored SIGINT stays ignored (as Python leaves it)
        with harness.sigint_guard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert not guard.requested.is_set() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_interrupt_keeps_the_finished_providers_of_the_case(fixed_ceilings):
    """compile runs last within a case; an interrupt during it keeps the other providers' records."""

    def make(device, dtype):
        x = torch.randn(64, device=device, dtype=dtype)

        def compiled():
            raise KeyboardInterrupt

        return {"compile": compiled, "eager": lambda: x * 2, "fastgan": "fastgan needs CUDA here"}

    case = harness.Case(case="tiny.mixed", family="layers", shape=[64], dtype="float32", bytes=512, flops=0,
                        make=make)
    assert harness.provider_order(["compile", "eager", "fastgan"]) == ["eager", "fastgan", "compile"]
    out = harness.run([case, _tiny_case()], ["compile", "eager", "fastgan"], torch.device("cpu"),
                      log=lambda s: None)
    harness.validate(out)
    assert out["interrupted"] is True
    first = [(r["case"], r["provider"]) for r in out["records"][:3]]
    assert first == [("tiny.mixed", "eager"), ("tiny.mixed", "fastgan"), ("tiny.mixed", "compile")]
    eager, fastgan, compiled = out["records"][:3]
    assert eager["error"] is None and eager["median_ms"] > 0, "finished before the interrupt: kept"
    assert fastgan["error"] == "fastgan needs CUDA here"
    assert compiled["error"].startswith("skipped: interrupted") and compiled["median_ms"] is None
    assert [r["error"].startswith("skipped: interrupted") for r in out["records"][3:]] == [True] * 3


def test_an_interrupt_hidden_behind_another_error_still_ends_the_run(fixed_ceilings):
    """Ctrl-C inside torch.cuda.graph surfaces as capture_end's RuntimeError with the
    KeyboardInterrupt in its chain: the run must stop, not record an error and go on."""

    def hidden():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    def make(device, dtype):
        return {"eager": hidden}

    case = harness.Case(case="tiny.hidden", family="ops", shape=[1], dtype="float32", bytes=4, flops=0, make=make)
    out = harness.run([case, _tiny_case()], ["eager"], torch.device("cpu"), log=lambda s: None)
    harness.validate(out)
    assert out["interrupted"] is True
    assert [r["error"].startswith("skipped: interrupted") for r in out["records"]] == [True, True]


def test_step_records_carry_energy_per_1k_images(monkeypatch, fixed_ceilings):
    """images_per_s and J per 1000 images (the issue-6 metrics) from one measured energy per call."""
    monkeypatch.setattr(harness, "energy_per_call_j", lambda fn, device, median_ms, seconds=0.3: 0.5)
    out = harness.run([_tiny_case()], ["eager"], torch.device("cpu"), log=lambda s: None)
    rec = out["records"][0]
    assert rec["energy_j"] == 0.5 and rec["energy_j_per_1k_images"] == pytest.approx(0.5 / 64 * 1000)
    assert "7.8 J/1k img" in harness.to_summary(out)


class _SteppedCounter:
    """A fake energy counter: a constant power, the counter updated every ``period`` seconds of
    a fake clock that each call of the workload advances by ``call_s``."""

    def __init__(self, watts, period, call_s, start):
        self.watts, self.period, self.call_s, self.t = watts, period, call_s, start

    def call(self):
        self.t += self.call_s

    def read_mj(self):
        last_update = math.floor(self.t / self.period) * self.period
        return int(round(self.watts * last_update * 1e3))

    def clock(self):
        return self.t


@pytest.mark.parametrize("start", [0.001, 0.099, 0.55])
def test_busy_power_is_windowed_on_counter_updates(start):
    """A counter updated every 100 ms read around a 0.25 s loop is off by up to 20%; windowed on
    its updates the mean power is right to within the polling lag."""
    c = _SteppedCounter(watts=350.0, period=0.1, call_s=0.007, start=start)
    watts = harness.busy_power_w(c.call, c.read_mj, seconds=0.25, clock=c.clock)
    assert watts == pytest.approx(350.0, rel=0.03)
    frozen = _SteppedCounter(watts=0.0, period=0.1, call_s=0.007, start=start)
    assert harness.busy_power_w(frozen.call, frozen.read_mj, seconds=0.3, clock=frozen.clock) is None
    assert harness.busy_power_w(c.call, lambda: None, seconds=0.3, clock=c.clock) is None


def test_budget_is_checked_between_providers(monkeypatch, fixed_ceilings):
    clock = {"t": 0.0}
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock["t"])

    def slow_timing(fn, device, quick=True, min_calls=10):
        fn()
        clock["t"] += 10.0  # each provider's timing takes 10 s of the run's budget
        return 1.0, 1.0, 1.0

    monkeypatch.setattr(harness, "time_fn", slow_timing)
    out = harness.run([_tiny_case(), _tiny_case()], ["eager", "compile"], torch.device("cpu"),
                      log=lambda s: None, budget_s=5.0)
    harness.validate(out)
    errors = [(r["provider"], r["error"]) for r in out["records"]]
    assert errors[0] == ("eager", None)
    assert errors[1][0] == "compile" and errors[1][1].startswith("skipped: the run's time budget was spent before "
                                                                 "this provider")
    assert all(e.startswith("skipped: the run's time budget (5 s) was spent before this case") for _, e in errors[2:])


def test_validate_rejects_broken_documents(doc):
    bad = json.loads(json.dumps(doc))
    del bad["records"][0]["median_ms"]
    with pytest.raises(ValueError, match="lacks"):
        harness.validate(bad)
    bad = json.loads(json.dumps(doc))
    bad["records"][0]["provider"] = "cudnn"
    with pytest.raises(ValueError, match="provider"):
        harness.validate(bad)
    bad = json.loads(json.dumps(doc))
    bad["ceilings"]["copy_gbps"] = 0
    with pytest.raises(ValueError, match="copy_gbps"):
        harness.validate(bad)
    bad = json.loads(json.dumps(doc))
    eager = next(r for r in bad["records"] if r["provider"] == "eager")
    eager["p80_ms"] = eager["median_ms"] / 2
    with pytest.raises(ValueError, match="percentiles"):
        harness.validate(bad)


def test_speedups_are_ratios_within_the_run(doc):
    fake = json.loads(json.dumps(doc))
    for r in fake["records"]:
        r["error"], r["median_ms"] = None, {"eager": 2.0, "compile": 1.0, "fastgan": 0.5}[r["provider"]]
    ratios = harness.speedups(fake)
    assert ratios[("tiny.relu.fwd", "float32", "fastgan")] == (4.0, 2.0)
    table = harness.to_markdown(fake)
    assert "| tiny.relu.fwd | float32 | fastgan | 0.5000 |" in table and "| 4.00 | 2.00 |" in table


def test_roofline_fraction_uses_the_larger_floor():
    case = _tiny_case()
    ceilings = {"copy_gbps": 1.0, "bf16_tflops": 1.0, "fp32_tflops": 1.0}
    floor_s = case.bytes / 1e9
    assert harness.roofline_fraction(case, floor_s * 1e3 * 2, ceilings) == pytest.approx(0.5)


def test_write_json_is_atomic_and_readable(doc, tmp_path):
    path = tmp_path / "sub" / "r.json"
    harness.write_json(doc, str(path))
    assert json.loads(path.read_text())["records"] == doc["records"]
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_bench_cli_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench_main(["--device", "cpu", "--cases", "bias_act.lrelu.fwd", "--dtypes", "float32",
                     "--providers", "eager,fastgan", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    harness.validate(doc)
    fastgan_recs = [r for r in doc["records"] if r["provider"] == "fastgan"]
    assert fastgan_recs and all("needs CUDA" in r["error"] for r in fastgan_recs)
    assert "| bias_act.lrelu.fwd.1MB | float32 | eager |" in capsys.readouterr().out


def test_bench_cli_rejects_bad_arguments(capsys):
    assert bench_main(["--device", "cpu", "--providers", "cudnn"]) == 2
    assert bench_main(["--device", "cpu", "--cases", "no.such.case"]) == 2
    assert "no case matches" in capsys.readouterr().err


def _run(args, **kw):
    env = {k: v for k, v in os.environ.items() if k != "FASTGAN_BACKEND"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600, **kw)


def test_python_m_benchmarks_lists_cases():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = _run(["-m", "benchmarks", "--device", "cpu", "--list"], cwd=root)
    assert r.returncode == 0, r.stderr
    assert "bias_act.tanh.fwdbwd.1MB" in r.stdout


def test_fastgan_info_runs_and_checks_the_interpreter():
    r = _run(["-m", "fastgan", "info"])
    assert r.returncode == 0, r.stderr
    for key in ("fastgan", "torch", "triton", "NVML", "backend for cpu tensors", "triton interpreter works"):
        assert key in r.stdout
    from fastgan import backend

    problem = backend.interpreter_problem()  # e.g. the GPU machine: triton 3.6 with numpy 2.5
    if problem is None:
        assert re.search(r"triton interpreter works\s+yes", r.stdout), r.stdout
    else:
        assert re.search(r"triton interpreter works\s+no \(.*cannot run with numpy", r.stdout), r.stdout


def test_markdown_leaves_out_providers_that_do_not_apply(doc):
    fake = json.loads(json.dumps(doc))
    na = dict(fake["records"][0], provider="fastgan+graphs", error="n/a: steps only", median_ms=None, p20_ms=None,
              p80_ms=None, gbps=None, tflops=None, roofline_frac=None, images_per_s=None)
    fake["records"].append(na)
    harness.validate(fake)
    table = harness.to_markdown(fake)
    assert "fastgan+graphs" not in table and "| img/s |" in table
    eager = next(r for r in fake["records"] if r["provider"] == "eager")
    assert f"| {eager['images_per_s']:.0f} |" in table
    summary = harness.to_summary(fake)
    assert "tiny.relu.fwd" in summary and "graphs" not in summary.splitlines()[1]
