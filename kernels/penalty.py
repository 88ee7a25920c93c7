"""Gradient penalties: the WGAN-GP interpolation, the per-sample gradient norm + penalty
reduction, and its backward.

Layout: every tensor here is dense with the batch dim outermost in memory (NCHW or
channels_last), so sample n owns the memory range [n * M, (n + 1) * M) with M = numel / N.
The launchers copy to contiguous otherwise; outputs keep their input's layout.

    interpolate       x[n, :] = eps[n] * real[n, :] + (1 - eps[n]) * fake[n, :]
    penalty forward   s_n = sum_k g[n, k]^2                      (float32 / float64 accumulation)
                      wgan-gp: P = sum_n w (sqrt(s_n) - c)^2,  coef_n = 2 w (sqrt(s_n) - c) / sqrt(s_n)
                      r1/r2:   P = sum_n w s_n,                coef_n = 2 w
                      (coef_n = 0 where s_n == 0: the safe-norm convention, no NaN; a NaN or
                      inf gradient gives NaN/inf as the reference does)
    penalty backward  dg[n, k] = dP * coef_n * g[n, k]           (one pointwise pass)

``w`` (the weight, e.g. gamma / N) is chosen by the caller. The forward kernel runs one
program per sample, so the per-sample terms land in a length-N buffer whose sum is P (one
small reduction, no host synchronisation).
"""
import torch
import triton
import triton.language as tl

from .common import check_launch_dtype, is_dense, is_interpreted, split_float as _split, vector

__all__ = ["PENALTY_KINDS", "interpolate", "grad_penalty_fwd", "grad_penalty_bwd"]

PENALTY_KINDS = {"wgan-gp": 0, "r1": 1, "r2": 1}


@triton.jit
def _interpolate_kernel(real_ptr, fake_ptr, eps_ptr, out_ptr, TOTAL, M,
                        IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    r = tl.load(real_ptr + offs, mask=mask, other=0.0)
    f = tl.load(fake_ptr + offs, mask=mask, other=0.0)
    e = tl.load(eps_ptr + offs // M, mask=mask, other=0.0)
    if IS_F64:
        r = r.to(tl.float64)
        f = f.to(tl.float64)
        e = e.to(tl.float64)
    else:
        r = r.to(tl.float32)
        f = f.to(tl.float32)
        e = e.to(tl.float32)
    out = e * r + (1.0 - e) * f
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_penalty_fwd_kernel(g_ptr, coef_ptr, term_ptr, M, ITERS, weight_hi, weight_lo, center_hi, center_lo,
                             KIND: tl.constexpr, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    base = g_ptr + n.to(tl.int64) * M
    # float scalar arguments arrive as float32 on the GPU: float64 values come as hi + lo
    if IS_F64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
        weight = tl.full((), weight_hi, tl.float64) + weight_lo
        center = tl.full((), center_hi, tl.float64) + center_lo
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        weight = tl.full((), weight_hi, tl.float32)
        center = tl.full((), center_hi, tl.float32)
    for i in range(0, ITERS):
        offs = i * BLOCK + tl.arange(0, BLOCK)
        g = tl.load(base + offs, mask=offs < M, other=0.0).to(acc.dtype)
        acc += g * g
    sq = tl.sum(acc, axis=0)
    if KIND == 0:
        norm = tl.sqrt(sq)
        dev = norm - center
        term = weight * dev * dev
        safe = tl.where(norm == 0.0, 1.0, norm)
        coef = tl.where(norm == 0.0, 0.0, 2.0 * weight * dev / safe)
    else:
        term = weight * sq
        coef = 2.0 * weight
    tl.store(term_ptr + n, term)
    tl.store(coef_ptr + n, coef)


@triton.jit
def _grad_penalty_bwd_kernel(g_ptr, coef_ptr, dp_ptr, out_ptr, TOTAL, M,
                             IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    c = tl.load(coef_ptr + offs // M, mask=mask, other=0.0)
    dp = tl.load(dp_ptr)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    if IS_F64:
        g = g.to(tl.float64)
    else:
        g = g.to(tl.float32)
    out = (dp * c) * g
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers

def _batch_major(x: torch.Tensor) -> bool:
    """Dense with sample n in [n * M, (n + 1) * M) of memory."""
    return is_dense(x) and (x.shape[0] <= 1 or x.stride(0) == x.numel() // x.shape[0])


def _pointwise_block(total: int) -> int:
    block = 4096 * (16 if is_interpreted() else 1)
    return max(16, min(block, triton.next_power_of_2(total)))


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``eps[n] * real[n] + (1 - eps[n]) * fake[n]`` computed in float32 (float64 for float64),
    stored in real's dtype and layout; ``eps`` holds N values (float32 or float64)."""
    check_launch_dtype(real, fake)
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have one shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if eps.numel() != real.shape[0] or eps.device != real.device:
        raise ValueError(f"eps must hold {real.shape[0]} values on {real.device}")
    same = all(a == b for a, b, size in zip(real.stride(), fake.stride(), real.shape) if size > 1)
    if not (_batch_major(real) and same):
        real, fake = real.contiguous(), fake.contiguous()
    eps = vector(eps.reshape(-1)).to(_acc_dtype(real))
    out = torch.empty_like(real)
    total = real.numel()
    if total == 0:
        return out
    block = _pointwise_block(total)
    _interpolate_kernel[(triton.cdiv(total, block),)](
        real, fake, eps, out, total, total // real.shape[0],
        IS_F64=real.dtype == torch.float64, BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return out


def grad_penalty_fwd(g: torch.Tensor, kind: str, weight: float, center: float):
    """``(penalty, coef)`` for the input gradient ``g`` of shape [N, ...].

    penalty is a 0-d float32 tensor (float64 for float64 g); coef [N] is what the backward
    needs (see the module docstring). ``weight`` multiplies every per-sample term.
    """
    if kind not in PENALTY_KINDS:
        raise ValueError(f"unknown penalty kind {kind!r}; expected one of {sorted(PENALTY_KINDS)}")
    check_launch_dtype(g)
    if not _batch_major(g):
        g = g.contiguous()
    n = g.shape[0]
    m = g.numel() // max(n, 1)
    acc = _acc_dtype(g)
    coef = torch.empty(n, dtype=acc, device=g.device)
    term = torch.empty(n, dtype=acc, device=g.device)
    if n == 0:
        return term.sum(), coef
    block = max(16, min(4096 * (4 if is_interpreted() else 1), triton.next_power_of_2(max(m, 1))))
    _grad_penalty_fwd_kernel[(n,)](
        g, coef, term, m, triton.cdiv(m, block), *_split(weight), *_split(center),
        KIND=PENALTY_KINDS[kind], IS_F64=g.dtype == torch.float64, BLOCK=block,
        num_warps=8 if block >= 4096 else 4)
    return (term.reshape(()) if n == 1 else term.sum()), coef


def grad_penalty_bwd(dp: torch.Tensor, g: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``dp * coef[n] * g[n, ...]`` in g's dtype and layout; ``dp`` is a 0-d tensor (read on the device)."""
    check_launch_dtype(g)
    if not _batch_major(g):
        g = g.contiguous()
    out = torch.empty_like(g)
    total = g.numel()
    if total == 0:
        return out
    coef, dp = vector(coef), dp.reshape(1).to(coef.dtype)
    block = _pointwise_block(total)
    _grad_penalty_bwd_kernel[(triton.cdiv(total, block),)](
        g, coef, dp, out, total, total // g.shape[0],
        IS_F64=g.dtype == torch.float64, BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return out
