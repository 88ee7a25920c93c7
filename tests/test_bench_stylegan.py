"""The StyleGAN op cases of the benchmark suite: every case builds and its eager reference runs on
the CPU (tiny sizes), fastgan says why it needs CUDA, and a CUDA quick run keeps four of them."""
import torch

from fastgan.benchmarks import run
from fastgan.benchmarks.cases_stylegan import QUICK_CUDA, SPECS, stylegan_cases


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
