"""The StyleGAN cases of the benchmark suite: every op case builds and its eager reference runs on
the CPU (tiny sizes), fastgan says why it needs CUDA, a CUDA quick run keeps four of them; the
StyleGAN2 D step with R1 and G step with path length compute the reference's gradients."""
import pytest
import torch

from fastgan.benchmarks import run
from fastgan.benchmarks.harness import Lazy
from fastgan.benchmarks.cases_stylegan import QUICK_CUDA, SG2_KINDS, SPECS, stylegan_cases, stylegan_step_cases



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
    assert [c.case for c in steps] == [f"step.sg2_128.{k}.B32" for k in SG2_KINDS]
    full = [c.case for c in stylegan_step_cases(quick=False, device_type="cuda")]
    assert full == [f"step.sg2_{r}.{k}.B{b}" for r, b in ((128, 32), (256, 16)) for k in SG2_KINDS]
    assert {c.case for c in steps} <= set(quick)
    fns = steps[0].make(torch.device("cuda"), torch.float32)  # builds nothing yet: no CUDA needed
    assert "skipped in --quick" in fns["compile"] and isinstance(fns["fastgan+graphs"], (Lazy, str))


def test_stylegan2_trainer_steps_run_on_the_cpu():
    """Each StyleGAN2 step case builds fastgan's trainer and runs its plain-torch provider (tiny, on
    the CPU); a step moves the weights of the network it updates; fastgan says it needs CUDA.
    (The fused trainer against the plain one: test_stylegan2.py.)"""
    cases = stylegan_step_cases(quick=True, device_type="cpu")
    assert [c.case for c in cases] == [f"step.sg2_16.{k}.B4" for k in SG2_KINDS]
    for case in cases:
        fns = case.make(torch.device("cpu"), torch.float32)
        assert "needs CUDA" in fns["fastgan"] and fns["fastgan+graphs"] == "CUDA graphs need a CUDA device"
        fns["eager"].build()()


@pytest.mark.filterwarnings("ignore:capture_step")
def test_graphed_step_provider_says_why_it_cannot_time():
    """The fastgan+graphs provider (``cases_steps.graphed_step``) on a CPU: a trainer that runs
    eager steps is named with its warning; one whose graphs never capture is refused."""
    from fastgan.benchmarks.cases_steps import graphed_step
    from fastgan.benchmarks.cases_stylegan import SG2_TINY, _sg2_trainer
    from fastgan.train import graphs as G

    net = {k: v for k, v in SG2_TINY.items() if k not in ("res", "batch")}
    real = torch.rand(4, 3, 16, 16) * 2 - 1

    def build(emulate=False):
        tr = _sg2_trainer(torch.device("cpu"), 16, 4, net, False, "none", 0.0, (1, 1), cuda_graphs=True)
        if emulate:  # the graph bookkeeping with eager CapturedSteps (nothing captures on a CPU)
            tr.graphs = G.TrainerGraphs(tr)
        return tr

    assert graphed_step(build, "d", real) == f"CUDA graphs unavailable: {G.CPU_FALLBACK_MESSAGE}"
    assert graphed_step(lambda: build(emulate=True), "d", real) == (
        f"CUDA graphs: nothing was captured after {G.WARMUP_STEPS + 2} calls")
