"""Shared test helpers: the error metric and tolerances of DESIGN.md section 3, and the
compile-for-sm_90 runner."""
import os
import subprocess
import sys

import pytest
import torch

# ||out - ref|| / ||ref|| bounds per dtype (float32 with tf32 dots: TOL_TF32).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
TOL_TF32 = 5e-4


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error in float64; NaN or Inf anywhere in ``out`` gives inf (never passes)."""
    out = out.detach().to(device="cpu", dtype=torch.float64)
    ref = ref.detach().to(device="cpu", dtype=torch.float64)
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(out, ref, dtype, what="output", tol=None):
    tol = TOL[dtype] if tol is None else tol
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so that any element a kernel forgets to write fails the comparison."""
    return t.fill_(float("nan"))


def compile_for_sm90(script: str, tmp_path) -> str:
    """Run ``script`` (which calls triton.compile for sm_90) in a fresh process without the
    interpreter and return its stdout; skips with a GPU (the real kernels compile there) or
    without Triton's NVIDIA backend / ptxas."""
    if torch.cuda.is_available():
        pytest.skip("a GPU compiles the real kernels in the other tests")
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTGAN_BACKEND")}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("no ptxas to compile for the GPU here")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def check_against_ref(fn, ref, inputs, dtype, tol=None, what="y"):
    """``fn(*inputs)`` against ``ref`` on float64 copies of the same inputs: the output and, for one
    random cotangent (in the output's dtype, given to both), the gradient of every input that
    requires grad. Returns the output."""
    ours = [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
            for t in inputs]
    refs = [t.detach().double().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
            for t in inputs]
    y, y_ref = fn(*ours), ref(*refs)
    assert y.dtype == dtype, f"{what}: dtype {y.dtype} != {dtype}"
    assert_close(y, y_ref, dtype, what, tol)
    wanted = [i for i, t in enumerate(ours) if isinstance(t, torch.Tensor) and t.requires_grad]
    if wanted:
        g = torch.randn_like(y_ref).to(y.dtype)  # the reference gets the same (rounded) cotangent
        grads = torch.autograd.grad(y, [ours[i] for i in wanted], g)
        grads_ref = torch.autograd.grad(y_ref, [refs[i] for i in wanted], g.double())
        for i, a, r in zip(wanted, grads, grads_ref):
            assert_close(a, r, dtype, f"gradient of input {i}", tol)
    return y
