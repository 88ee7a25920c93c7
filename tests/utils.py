"""Shared test helpers: the error metric and tolerances of DESIGN.md section 3."""
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
