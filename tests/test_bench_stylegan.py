"""The StyleGAN cases of the benchmark suite: every op case builds and its eager reference runs on
the CPU (tiny sizes), fastgan says why it needs CUDA, a CUDA quick run keeps four of them; the
StyleGAN2 D step with R1 and G step with path length compute the reference's gradients."""
import pytest
import torch

import fastgan
from fastgan.benchmarks import run
from fastgan.benchmarks.cases_stylegan import QUICK_CUDA, SPECS, _sg2_steps, stylegan_cases, stylegan_step_cases

from .utils import assert_close


def test_every_case_builds_and_runs_its_reference_on_the_cpu():
    cases = stylegan_cases(quick=True, device_type="cpu")
    assert {c.case.rsplit(".", 1)[0] for c in cases} == set(SPECS)
    for case in cases:
        fns = case.make(torch.device("cpu"), torch.float32)
        out = fns["eager"]()
        assert all(torch.isfinite(t).all() for t in (out if isinstance(out, (tuple, list)) else [out])), case.case
        assert "needs CUDA" in fns["fastgan"]
        assert 0 < case.bytes < 1 << 20 and case.flops > 0


def test_cuda_case_lists():
    quick = [c.case for c in run.all_cases(quick=True, device_type="cuda")]
    assert {f"{name}.fwdbwd" for name in QUICK_CUDA} <= set(quick)
    full = stylegan_cases(quick=False, device_type="cuda")
    assert len(full) == 4 * len(SPECS) and {c.shape[0] for c in full} == {8}
    steps = stylegan_step_cases(quick=True, device_type="cuda")
    assert [c.case for c in steps] == ["step.sg2_256.r1.d.B8", "step.sg2_256.pl.g.B8"]
    assert {c.case for c in steps} <= set(quick)
    assert "skipped in --quick" in steps[0].make(torch.device("cuda"), torch.float32)["compile"]


@pytest.mark.parametrize("what", ["d", "g"])
def test_stylegan2_steps_match_the_eager_reference(what):
    """One D step with R1 / G step with the path-length penalty: fastgan's kernels (the interpreter)
    give the eager reference's parameter gradients."""
    cfg = dict(res=8, batch=2, z=4, cbase=32, cmax=4, mapping=1)
    grads = []
    for backend in ("interpret", "eager"):
        with fastgan.use_backend(backend):
            step, G, D = _sg2_steps(cfg, torch.device("cpu"), what)
            torch.manual_seed(1)
            step()
        grads.append([p.grad for p in (D if what == "d" else G).parameters()])
    assert all(g is not None for g in grads[1])
    for i, (ours, ref) in enumerate(zip(*grads)):
        assert_close(ours, ref, torch.float32, f"parameter {i}")
