"""The benchmark suite on the CPU: the quick run on tiny cases (schema, images/s, why fastgan
does not run here), the torch.compile configuration of penalty steps, --compare, --plot,
--summary, --time-budget, the case lists of a CUDA run (built, not run) and the
pytest-benchmark micro cases."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastgan.benchmarks import cases_steps, harness, run
from fastgan.benchmarks.compare import compare, load_result
from fastgan.benchmarks.run import main as bench_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _restore_settings():
    before = (dict(harness.COMPILE), dict(cases_steps.COMPILE_PENALTY))
    yield
    harness.COMPILE.update(before[0])
    cases_steps.COMPILE_PENALTY.update(before[1])


# ----------------------------------------------------------------------------- the CPU quick run

@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    rc = bench_main(["--quick", "--device", "cpu", "--json", str(out),
                     "--cases", "step.dcgan32w8.ns.d,step.dcgan32w8.wgan_gp.iter,bias_act.lrelu.fwd,"
                                "d_loss.ns.fwdbwd.N64,conv2d_act.3x3.lrelu.fwd",
                     "--dtypes", "float32", "--providers", "eager,fastgan,fastgan+graphs"])
    assert rc == 0
    return json.loads(out.read_text())


def test_quick_cpu_run_follows_the_schema(cpu_run):
    harness.validate(cpu_run)
    assert cpu_run["mode"] == "quick" and cpu_run["compile_backend"] == "inductor"
    assert {r["family"] for r in cpu_run["records"]} == {"steps", "ops"}
    assert {r["provider"] for r in cpu_run["records"]} == {"eager", "fastgan", "fastgan+graphs"}
    ops = [r for r in cpu_run["records"] if r["family"] == "ops"]
    assert {r["case"].split(".")[0] for r in ops} == {"bias_act", "d_loss", "conv2d_act"}
    for r in ops:
        if r["provider"] == "eager":
            assert r["error"] is None and r["roofline_frac"] > 0
        elif r["provider"] == "fastgan":
            assert "needs CUDA" in r["error"] and r["median_ms"] is None
        else:
            assert r["error"].startswith("n/a: ")


def test_step_cases_report_images_per_second(cpu_run):
    steps = {(r["case"], r["provider"]): r for r in cpu_run["records"] if r["family"] == "steps"}
    assert {c for c, _ in steps} == {"step.dcgan32w8.ns.d.B4", "step.dcgan32w8.wgan_gp.iter.B4"}
    for case in ("step.dcgan32w8.ns.d.B4", "step.dcgan32w8.wgan_gp.iter.B4"):
        eager = steps[(case, "eager")]
        assert eager["error"] is None
        assert eager["images_per_s"] == pytest.approx(4 / (eager["median_ms"] * 1e-3))
        assert eager["shape"] == [4, 3, 32, 32] and eager["precision"] == "float32"
        assert eager["energy_j"] is None  # no NVML on the CPU
        assert "needs CUDA" in steps[(case, "fastgan")]["error"]
        assert steps[(case, "fastgan+graphs")]["error"] == "CUDA graphs need a CUDA device"
    assert steps[("step.dcgan32w8.wgan_gp.iter.B4", "eager")]["penalty"] == "wgan-gp"


def test_summary_and_result_name(cpu_run, tmp_path, capsys):
    path = tmp_path / "r.json"
    harness.write_json(cpu_run, str(path))
    assert bench_main(["--summary", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("step.dcgan32w8.ns.d.B4"))
    assert "fp32" in line and "eager" in line and "img/s" in line and "graphs" in line
    name = harness.result_filename(dict(cpu_run, gpu="NVIDIA H100 80GB HBM3", commit="0123456789abcdef-dirty",
                                        date="2025-01-31T10:00:00+00:00"))
    assert name == "2025-01-31_h100-80gb-hbm3_0123456-dirty.json"
    assert f"benchmarks/results/{harness.result_filename(cpu_run)}" in out


def test_time_budget_records_skipped_cases(tmp_path):
    out = tmp_path / "b.json"
    rc = bench_main(["--device", "cpu", "--cases", "bias_act.lrelu.fwd", "--dtypes", "float32", "--providers",
                     "eager", "--time-budget", "0", "--json", str(out)])
    assert rc == 0
    doc = load_result(str(out))
    assert doc["records"] and all(r["error"].startswith("skipped: ") for r in doc["records"])


# ----------------------------------------------------------------------------- torch.compile of penalty steps

def test_compile_penalty_step_records_the_default_error_and_the_config(tmp_path):
    """The one torch.compile case of these tests (aot_eager: dynamo + aot_autograd, no codegen)."""
    out = tmp_path / "c.json"
    rc = bench_main(["--device", "cpu", "--cases", "step.dcgan32w8.r1.d", "--providers", "eager,compile",
                     "--compile-backend", "aot_eager", "--json", str(out)])
    assert rc == 0
    doc = load_result(str(out))
    comp = next(r for r in doc["records"] if r["provider"] == "compile")
    assert comp["error"] is None and comp["median_ms"] > 0 and comp["images_per_s"] > 0
    assert "does not currently support double backward" in comp["compile_default_error"]
    assert comp["config"].startswith("func: ") and "aot_eager" in comp["config"]
    assert doc["compile_backend"] == "aot_eager"


@pytest.mark.parametrize("loss,penalty", [("wgan", "wgan-gp"), ("ns", "r1")])
def test_func_d_step_computes_the_trainers_gradients(loss, penalty):
    """The compiled 'func' D step does the same work as Trainer.d_step (dynamo only, backend eager)."""
    import fastgan

    harness.COMPILE["backend"] = "eager"
    cpu = torch.device("cpu")
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    ref = cases_steps._trainer(cpu, False, 32, 8, 4, loss, penalty, fused=False)
    tr = cases_steps._compile_trainer(cpu, False, 32, 8, 4, loss, penalty)
    step = cases_steps._func_d_step(tr)
    for trainer, fn in ((ref, ref.d_step), (tr, step)):  # equal seeds: equal noise and interpolation weights
        with fastgan.use_backend("eager"):
            fn(real)
    for (name, p), q in zip(ref.D.named_parameters(), tr.D.parameters()):
        assert p.grad is not None and q.grad is not None, name
        scale = max(p.grad.abs().max().item(), 1e-12)
        assert (p.grad - q.grad).abs().max().item() / scale < 1e-4, name
        assert torch.allclose(p, q, atol=1e-6), name  # the same Adam update
    assert tr.d_steps == ref.d_steps == 1


def test_split_d_runs_the_plain_module_for_the_penalty_pass():
    calls = []
    plain = lambda x: calls.append("plain") or x.sum((1, 2, 3))  # noqa: E731
    compiled = lambda x: calls.append("compiled") or x.sum((1, 2, 3))  # noqa: E731
    d = cases_steps._SplitD.__new__(cases_steps._SplitD)
    torch.nn.Module.__init__(d)
    d.plain, d.compiled = plain, compiled
    x = torch.randn(2, 3, 4, 4)
    d(x)
    d(x.requires_grad_(True))
    d(x * 2)  # not a leaf: a G output in the G step
    assert calls == ["compiled", "plain", "compiled"]


# ----------------------------------------------------------------------------- what a CUDA run would run

def test_quick_cuda_case_list_covers_every_family_and_provider():
    cases = run.all_cases(quick=True, device_type="cuda")
    names = [c.case for c in cases]
    assert len(names) == len(set((c.case, c.dtype) for c in cases))
    assert {c.family for c in cases} == {"ops", "layers", "steps"}
    assert [c.family for c in cases] == sorted((c.family for c in cases), key=run.FAMILIES.index)
    ops = {n.split(".")[0] for c, n in zip(cases, names) if c.family == "ops"}
    assert {"bias_act", "conv2d_act", "conv_transpose2d_act", "d_loss", "g_loss", "grad_penalty"} <= ops
    layers = [n for c, n in zip(cases, names) if c.family == "layers"]
    assert any(n.startswith("conv2d_act.dcgan_d") for n in layers)
    assert any(n.startswith("conv_transpose2d_act.dcgan_g") for n in layers)
    steps = [c for c in cases if c.family == "steps" and c.case.startswith("step.dcgan")]
    kinds = {c.case.split(".", 2)[2].rsplit(".", 1)[0] for c in steps}
    assert kinds == {"ns.d", "wgan_gp.d", "r1.d", "ns.g", "wgan_gp.iter"}
    assert {"step.sg2_128.r1.d.B32", "step.sg2_128.pl.g.B32", "step.sg2_128.iter.B32"} <= set(names)  # StyleGAN2
    # the headline (a full iteration with the penalty, 64x64, batch 64) runs first: a run cut
    # short by its time budget keeps it
    assert run.all_cases(quick=True, device_type="cuda")[0].case == "step.dcgan64.wgan_gp.iter.B64"
    assert all(c.images == c.shape[0] for c in steps)
    assert {c.dtype for c in steps} == {"bfloat16"} and any(c.shape == [64, 3, 64, 64] for c in steps)
    # every step case offers all four providers (the builders are not run here)
    fns = steps[0].make(torch.device("cpu"), torch.float32)
    assert set(harness.PROVIDERS) <= set(fns)
    # and the command line asks for all four by default
    import argparse

    p = argparse.ArgumentParser()
    run.add_arguments(p)
    assert p.parse_args([]).providers.split(",") == list(harness.PROVIDERS)


def test_full_cuda_grid_has_both_resolutions_batches_and_dtypes():
    steps = [c for c in run.all_cases(quick=False, device_type="cuda") if c.case.startswith("step.dcgan")]
    assert {(c.shape[2], c.shape[0], c.dtype) for c in steps} == {
        (r, b, d) for r in (32, 64) for b in (64, 256) for d in ("float32", "bfloat16")}
    assert len(steps) == 8 * len(cases_steps.STEP_KINDS)
    quick_ops = [c for c in run.all_cases(quick=True, device_type="cuda") if c.family != "steps"]
    assert len(quick_ops) <= 25  # each is one more torch.compile: the quick suite's time


def test_cpu_run_has_no_large_cases():
    for c in run.all_cases(quick=True, device_type="cpu"):
        assert c.bytes < 64 << 20, c.case


# ----------------------------------------------------------------------------- compare

def _doc(medians: dict, errors: dict | None = None, gpu="NVIDIA H200") -> dict:
    recs = []
    for (case, provider), ms in medians.items():
        rec = {k: None for k in harness.RECORD_FIELDS}
        rec.update(case=case, family="ops", provider=provider, dtype="float32", shape=[1])
        if ms is None:
            rec["error"] = (errors or {}).get((case, provider), "boom")
        else:
            rec.update(median_ms=ms, p20_ms=ms * 0.9, p80_ms=ms * 1.1, gbps=1.0)
        recs.append(rec)
    return {"schema": harness.SCHEMA, "commit": "abc", "date": "2025-01-01T00:00:00+00:00", "host": "h",
            "gpu": gpu, "driver": "1", "cuda": "12", "torch": "2.11", "triton": "3.6",
            "ceilings": {"copy_gbps": 4000.0, "bf16_tflops": 700.0, "fp32_tflops": 50.0}, "records": recs}


def _write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_compare_ratios_and_flags(tmp_path, capsys):
    a = _doc({("x", "eager"): 1.0, ("x", "fastgan"): 0.5, ("y", "fastgan"): 2.0, ("z", "fastgan"): 1.0,
              ("gone", "eager"): 1.0})
    b = _doc({("x", "eager"): 1.02, ("x", "fastgan"): 0.6, ("y", "fastgan"): 1.0, ("z", "fastgan"): None,
              ("new", "eager"): 3.0})
    rows = {(r["case"], r["provider"]): r for r in compare(a, b, threshold=0.05)}
    assert rows[("x", "eager")]["ratio"] == pytest.approx(1.02) and rows[("x", "eager")]["flag"] == ""
    assert rows[("x", "fastgan")]["ratio"] == pytest.approx(1.2) and rows[("x", "fastgan")]["flag"] == "REGRESSION"
    assert rows[("y", "fastgan")]["flag"] == "faster"
    assert rows[("z", "fastgan")]["flag"] == "error in B" and "boom" in rows[("z", "fastgan")]["note"]
    assert rows[("gone", "eager")]["flag"] == "only in A" and rows[("new", "eager")]["flag"] == "only in B"
    assert compare(a, b, threshold=0.25)[1]["flag"] == ""  # 1.2 is within 25 %

    pa, pb = _write(tmp_path, "a.json", a), _write(tmp_path, "b.json", b)
    assert bench_main(["--compare", pa, pb, "--threshold", "0.1"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("x ") and "fastgan" in ln)
    assert "0.5000" in line and "0.6000" in line and "1.200" in line and "REGRESSION" in line
    assert "1 regression(s), 1 faster" in out


def test_compare_warns_about_different_machines(tmp_path, capsys):
    pa = _write(tmp_path, "a.json", _doc({("x", "eager"): 1.0}))
    pb = _write(tmp_path, "b.json", _doc({("x", "eager"): 1.0}, gpu="NVIDIA A100"))
    assert bench_main(["--compare", pa, pb]) == 0
    assert "different GPUs" in capsys.readouterr().out


def test_compare_errors_are_clear(tmp_path, capsys):
    good = _write(tmp_path, "good.json", _doc({("x", "eager"): 1.0}))
    assert bench_main(["--compare", good, str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    bad_schema = _doc({("x", "eager"): 1.0})
    bad_schema["schema"] = 99
    assert bench_main(["--compare", _write(tmp_path, "s.json", bad_schema), good]) == 2
    assert "not a valid result document: schema 99" in capsys.readouterr().err
    no_records = _doc({})
    del no_records["records"]
    assert bench_main(["--compare", good, _write(tmp_path, "r.json", no_records)]) == 2
    assert "lacks ['records']" in capsys.readouterr().err
    (tmp_path / "t.json").write_text("{not json")
    assert bench_main(["--compare", good, str(tmp_path / "t.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert bench_main(["--compare", good, _write(tmp_path, "l.json", [1, 2])]) == 2
    assert "not a result document" in capsys.readouterr().err
    assert bench_main(["--summary", str(tmp_path / "missing.json")]) == 2


def test_compare_module_entry_point(tmp_path):
    pa = _write(tmp_path, "a.json", _doc({("x", "eager"): 1.0}))
    r = subprocess.run([sys.executable, "-m", "fastgan.benchmarks.compare", pa, pa], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1 compared: 0 regression(s)" in r.stdout


# ----------------------------------------------------------------------------- plot

def test_plot(tmp_path, capsys):
    from fastgan.benchmarks.plot import matplotlib_missing

    png = tmp_path / "p.png"
    args = ["--device", "cpu", "--cases", "bias_act.lrelu.fwd", "--dtypes", "float32", "--providers",
            "eager,fastgan", "--plot", str(png)]
    if matplotlib_missing():
        assert bench_main(args) == 2
        err = capsys.readouterr().err
        assert "--plot needs matplotlib" in err and "pip install" in err
        assert not png.exists()
        return
    assert bench_main(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- harness details

def test_lazy_providers_extra_fields_and_the_cpu_guard():
    built = []

    def make(device, dtype):
        x = torch.randn(16, device=device, dtype=dtype)

        def build():
            built.append(1)
            return (lambda: x * 2), {"config": "lazy one", "median_ms": "ignored"}

        def broken():
            raise RuntimeError("cannot build")

        return {"eager": harness.Lazy(build), "compile": harness.Lazy(broken),
                "fastgan": lambda: x * 3, "fastgan+graphs": harness.Lazy(build)}

    case = harness.Case(case="t.lazy", family="steps", shape=[16], dtype="float32", bytes=128, flops=16,
                        make=make, images=16, extra={"model": "tiny"})
    recs = {r["provider"]: r for r in harness.run_case(case, ["eager", "compile", "fastgan"], torch.device("cpu"),
                                                       {"copy_gbps": 1.0, "bf16_tflops": 1.0, "fp32_tflops": 1.0},
                                                       log=lambda s: None)}
    assert built == [1]  # the unselected provider's builder never ran
    assert recs["eager"]["config"] == "lazy one" and recs["eager"]["median_ms"] > 0
    assert recs["eager"]["model"] == "tiny" and recs["fastgan"]["model"] == "tiny"
    assert recs["compile"]["error"] == "setup failed: RuntimeError: cannot build"
    assert "needs CUDA" in recs["fastgan"]["error"]  # never timed on the CPU


def test_main_test_run_does_not_collect_the_benchmarks():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert 'testpaths = ["tests"]' in text  # benchmarks/test_*.py run only when asked for


def test_pytest_benchmark_micro_cases(tmp_path):
    pytest.importorskip("pytest_benchmark")
    out = tmp_path / "micro.json"
    env = {k: v for k, v in os.environ.items() if k not in ("FASTGAN_BACKEND", "TRITON_INTERPRET")}
    r = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_micro.py", "--benchmark-only", "-q",
                        "-p", "no:cacheprovider", "-k", "bias_act_lrelu_fwd and not fwdbwd",
                        f"--benchmark-json={out}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    got = {b["params"]["provider"]: b for b in doc["benchmarks"]}
    assert set(got) == {"torch", "fastgan"}
    backend = got["fastgan"]["extra_info"]["backend"]
    assert backend == "triton" if torch.cuda.is_available() else backend.startswith("eager")
    assert all(b["stats"]["median"] > 0 and b["group"] == "bias_act.lrelu.fwd" for b in got.values())


def test_host_overhead_measures_both_paths_of_a_fused_op():
    """fastgan bench --host-overhead: the Function and the custom op, with and without grad."""
    from fastgan.benchmarks.host_overhead import measure

    results = measure(calls=50, repeats=3)
    assert {"Function.apply", "torch.ops custom op"} <= set(results)
    for row in results.values():
        assert row["no_grad_us"] > 0 and row["requires_grad_us"] > 0


def test_count_launches_counts_aten_and_triton_launches_not_views():
    """The launch counter: views and allocations are not launches, every Triton launch is, and the
    interpreter's own host copies during a launch are not counted."""
    from collections import Counter

    from fastgan.benchmarks.launches import count_launches
    from fastgan.backend import kernels

    x = torch.randn(4, 6, requires_grad=True)
    counts = Counter()
    with count_launches(counts):
        y = torch.nn.functional.leaky_relu(x.view(2, 12).t() * 2, 0.2)  # view, t: no launch
        y.sum().backward()
        kernels().bias_act_fwd(torch.randn(2, 3, 4), None, 1, "tanh", 0.0, 1.0, None)
    assert counts["aten.mul"] == 2 and counts["aten.leaky_relu"] == 1 and counts["aten.leaky_relu_backward"] == 1
    assert "aten.view" not in counts and "aten.t" not in counts and "aten.empty_like" not in counts
    assert counts["triton._bias_act_fwd_kernel"] == 1 and "aten.copy_" not in counts


def test_static_report_compiles_recorded_launches_for_sm90(tmp_path):
    """fastgan bench --static on a tiny step: the launches are recorded without running them and
    compiled for sm_90 (registers, spills, wgmma, CTAs); a subset keeps it short."""
    pytest.importorskip("triton.backends.nvidia")
    if torch.cuda.is_available():
        pytest.skip("a GPU compiles the real kernels in the other tests")
    from fastgan.benchmarks.static import run, to_markdown

    doc = run(resolution=32, batch=2, width=4, limit=2)
    assert doc["launches"] >= 2 and len(doc["records"]) >= 1
    for r in doc["records"]:
        assert r["regs"] > 0 and r["sms"] == 132 and r["ctas"] >= 1 and r["mma"] in ("wgmma", "mma.sync", "none")
    assert "static sm_90 report" in to_markdown(doc)
    # pre-activations: G's tanh output is stored (batch 2, 3x32x32); D's lrelu outputs (4x16x16,
    # 8x8x8, 16x4x4 per image) are not, for its 4 images of the D step, 2 of WGAN-GP's interpolates
    # and 2 of the G step
    d_lrelu = 4 * 16 * 16 + 8 * 8 * 8 + 16 * 4 * 4
    assert doc["z_bytes"]["float32"] == {"stored": 2 * 3 * 32 * 32 * 4, "avoided": 8 * d_lrelu * 4}
    assert doc["z_bytes"]["bfloat16"] == {"stored": 2 * 3 * 32 * 32 * 2, "avoided": 8 * d_lrelu * 2}
    assert "MiB not stored" in to_markdown(doc)


def test_count_launches_runs_eager_and_fastgan_in_one_run():
    """fastgan bench --count-launches end to end on a small case (each provider in its process)."""
    from fastgan.benchmarks.launches import run, to_markdown

    doc = run("cpu", width=2, batch=2, resolution=32)
    for provider in ("eager", "fastgan"):
        for step in ("d_step", "g_step", "iteration"):
            res = doc["providers"][provider][step]
            assert res["total"] == res["aten"] + res["triton"] > 0
    assert doc["providers"]["eager"]["iteration"]["triton"] == 0 < doc["providers"]["fastgan"]["iteration"]["triton"]
    assert set(doc["ratio_fastgan_over_eager"]) == {"d_step", "g_step", "iteration"}
    assert "fastgan / eager" in to_markdown(doc)
