"""Batch normalisation (training statistics) fused with the activation epilogue.

Math, per channel c over the M = N * H * W elements of that channel:

    mean, var     = batch mean and biased variance of x
    x_hat         = (x - mean) * invstd,            invstd = 1 / sqrt(var + eps)
    u             = x_hat * w + b  =  (x - mean) * scale + b      (scale = w * invstd)
    y             = clamp(act(u) * gain, -clamp, clamp)

Forward: two passes over x: ``bn_stats`` (a reduction producing per-tile count, mean and M2 of
x - s, with s one element of the channel, merged with Chan's parallel formula: no sum-of-squares
cancellation, and a large offset common to the channel cancels exactly before anything is
summed), then the bias_act kernel with a per-channel center and scale
(``bias_act_fwd(..., scale=, center=)``). u is always formed as (x - mean) * scale + b, never
as x * scale + (b - mean * scale), whose two terms cancel when |mean| >> std.

Backward: two passes over (x, dy), one write of dx:

    g       = dy * gain * act'(u) * [|act(u) * gain| <= clamp]
    db      = sum g,   dw = sum g * x_hat                          (pass 1: a reduction)
    dx      = scale * (g - db / M - x_hat * dw / M)                 (pass 2: pointwise)

Layouts and tiling are those of bias_act ([OUTER, C, INNER] views of dense tensors).
"""
import torch
import triton
import triton.language as tl

from .activation import ACT_IDS, act_d1, act_fwd, scalar_arg
from .bias_act import _blocks, _dense, _num_warps, _partial_sum_offsets, _scalar_args, _tile
from .common import check_launch_dtype, vector

__all__ = ["bn_stats", "bn_act_bwd"]


@triton.jit
def _bn_stats_kernel(x_ptr, shift_ptr, count_ptr, mean_ptr, m2_ptr, OUTER, C, INNER,
                     IS_F64: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """Per tile and channel, of x - shift[channel]: element count, mean and M2 = sum (x - mean)^2."""
    pid = tl.program_id(0)
    offs, mask, chan, chan_mask = _tile(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    x = x.to(tl.float64) if IS_F64 else x.to(tl.float32)
    x = tl.where(mask, x - tl.load(shift_ptr + chan, mask=chan_mask, other=0.0), 0.0)
    ones = tl.where(mask, 1.0, 0.0).to(x.dtype)
    p_offs, p_mask = _partial_sum_offsets(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    if CHANNELS_LAST:  # channels along axis 1: reduce axis 0
        n = tl.sum(ones, axis=0)
        mean = tl.sum(x, axis=0) / tl.maximum(n, 1.0)
        d = tl.where(mask, x - mean[None, :], 0.0)
        m2 = tl.sum(d * d, axis=0)
    else:  # one channel per row: reduce axis 1
        n = tl.sum(ones, axis=1)
        mean = tl.sum(x, axis=1) / tl.maximum(n, 1.0)
        d = tl.where(mask, x - mean[:, None], 0.0)
        m2 = tl.sum(d * d, axis=1)
    tl.store(count_ptr + p_offs, n, mask=p_mask)
    tl.store(mean_ptr + p_offs, mean, mask=p_mask)
    tl.store(m2_ptr + p_offs, m2, mask=p_mask)


@triton.jit
def _bn_act_grad_terms(pid, dy_ptr, x_ptr, scale_ptr, beta_ptr, mean_ptr, invstd_ptr, OUTER, C, INNER,
                       alpha, gain, clamp, alpha_lo, gain_lo, clamp_lo, ACT: tl.constexpr,
                       HAS_CLAMP: tl.constexpr, IS_F64: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """For tile ``pid``: g = dy * gain * act'(u) * clamp-mask (zero outside the tensor), x_hat,
    the per-channel scale, and the tile's offsets, mask and channel index."""
    alpha = scalar_arg(alpha, alpha_lo, IS_F64)  # float64: hi + lo pairs (common.split_float)
    gain = scalar_arg(gain, gain_lo, IS_F64)
    clamp = scalar_arg(clamp, clamp_lo, IS_F64)
    offs, mask, chan, chan_mask = _tile(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    x = x.to(tl.float64) if IS_F64 else x.to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(x.dtype)
    scale = tl.load(scale_ptr + chan, mask=chan_mask, other=0.0).to(x.dtype)
    beta = tl.load(beta_ptr + chan, mask=chan_mask, other=0.0).to(x.dtype)
    mean = tl.load(mean_ptr + chan, mask=chan_mask, other=0.0).to(x.dtype)
    invstd = tl.load(invstd_ptr + chan, mask=chan_mask, other=0.0).to(x.dtype)
    u = (x - mean) * scale + beta
    if HAS_CLAMP:  # zero dy where clamped, then act' (NaN stays NaN, as in bias_act's backward)
        dy = tl.where(tl.abs(act_fwd(u, alpha, ACT) * gain) <= clamp, dy, 0.0)
    g = tl.where(mask, dy * gain * act_d1(u, alpha, ACT), 0.0)
    return offs, mask, chan, chan_mask, g, (x - mean) * invstd, scale


@triton.jit
def _bn_act_bwd_reduce_kernel(dy_ptr, x_ptr, scale_ptr, beta_ptr, mean_ptr, invstd_ptr, sg_ptr, sgx_ptr,
                              OUTER, C, INNER, alpha, gain, clamp, alpha_lo, gain_lo, clamp_lo,
                              ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, IS_F64: tl.constexpr,
                              CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """Per-tile partial sums of g and g * x_hat (pass 1 of the backward)."""
    pid = tl.program_id(0)
    offs, mask, chan, chan_mask, g, x_hat, scale = _bn_act_grad_terms(
        pid, dy_ptr, x_ptr, scale_ptr, beta_ptr, mean_ptr, invstd_ptr, OUTER, C, INNER, alpha, gain, clamp,
        alpha_lo, gain_lo, clamp_lo, ACT, HAS_CLAMP, IS_F64, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    gx = g * x_hat
    p_offs, p_mask = _partial_sum_offsets(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    if CHANNELS_LAST:
        tl.store(sg_ptr + p_offs, tl.sum(g, axis=0), mask=p_mask)
        tl.store(sgx_ptr + p_offs, tl.sum(gx, axis=0), mask=p_mask)
    else:
        tl.store(sg_ptr + p_offs, tl.sum(g, axis=1), mask=p_mask)
        tl.store(sgx_ptr + p_offs, tl.sum(gx, axis=1), mask=p_mask)


@triton.jit
def _bn_act_bwd_dx_kernel(dy_ptr, x_ptr, dx_ptr, scale_ptr, beta_ptr, mean_ptr, invstd_ptr, mg_ptr, mgx_ptr,
                          OUTER, C, INNER, alpha, gain, clamp, alpha_lo, gain_lo, clamp_lo,
                          ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, IS_F64: tl.constexpr,
                          CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """dx = scale * (g - mean(g) - x_hat * mean(g * x_hat)) (pass 2 of the backward)."""
    pid = tl.program_id(0)
    offs, mask, chan, chan_mask, g, x_hat, scale = _bn_act_grad_terms(
        pid, dy_ptr, x_ptr, scale_ptr, beta_ptr, mean_ptr, invstd_ptr, OUTER, C, INNER, alpha, gain, clamp,
        alpha_lo, gain_lo, clamp_lo, ACT, HAS_CLAMP, IS_F64, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    mg = tl.load(mg_ptr + chan, mask=chan_mask, other=0.0).to(g.dtype)
    mgx = tl.load(mgx_ptr + chan, mask=chan_mask, other=0.0).to(g.dtype)
    dx = scale * (g - mg - x_hat * mgx)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _partials(x, outer, c, inner, cl, block_r, block_i, dtype):
    shape = (triton.cdiv(outer, block_r), c) if cl else (outer * c, triton.cdiv(inner, block_i))
    return torch.empty(shape, dtype=dtype, device=x.device)


def _per_channel(p: torch.Tensor, outer: int, c: int, cl: bool) -> torch.Tensor:
    """Partials [tiles..., C] arranged as [T, C] (one column per channel)."""
    return p if cl else p.view(outer, c, -1).permute(0, 2, 1).reshape(-1, c)


def bn_stats(x: torch.Tensor, dim: int = 1):
    """(mean, biased var) per channel along ``dim``, in float32 (float64 for float64)."""
    check_launch_dtype(x)
    x, (outer, c, inner) = _dense(x, dim)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.numel() == 0:
        raise ValueError("batch statistics of an empty tensor")
    cl, block_r, block_i, n = _blocks(outer, c, inner)
    shift = x.as_strided((c,), (inner,)).to(acc, copy=True)  # the element (0, c, 0) of [OUTER, C, INNER]
    count, mean, m2 = (_partials(x, outer, c, inner, cl, block_r, block_i, acc) for _ in range(3))
    _bn_stats_kernel[(n,)](x, shift, count, mean, m2, outer, c, inner, IS_F64=x.dtype == torch.float64,
                           CHANNELS_LAST=cl, BLOCK_R=block_r, BLOCK_I=block_i,
                           num_warps=_num_warps(block_r, block_i))
    count, mean_t, m2 = (_per_channel(t, outer, c, cl) for t in (count, mean, m2))
    total = count.sum(0)
    mean = (count * mean_t).sum(0) / total                       # Chan et al.: merge the tiles
    m2 = (m2 + count * (mean_t - mean) ** 2).sum(0)
    return shift + mean, m2 / total


def bn_act_bwd(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
               scale: torch.Tensor, beta: torch.Tensor, dim: int, act: str, alpha: float, gain: float,
               clamp: float | None):
    """(dx, sum g, sum g * x_hat) for the fused batch-norm + activation (see module docstring).

    ``mean``, ``invstd``, ``scale`` (w * invstd) and ``beta`` (b, zeros without affine) are
    per-channel float32 (float64) vectors: u = (x - mean) * scale + beta.
    """
    check_launch_dtype(x, dy)
    mean, invstd, scale, beta = (vector(t) for t in (mean, invstd, scale, beta))
    x, (outer, c, inner) = _dense(x, dim)
    if dy.stride() != x.stride():
        dy = torch.empty_like(x).copy_(dy)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    cl, block_r, block_i, n = _blocks(outer, c, inner)
    sg, sgx = (_partials(x, outer, c, inner, cl, block_r, block_i, acc) for _ in range(2))
    meta = dict(ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None, IS_F64=x.dtype == torch.float64, CHANNELS_LAST=cl,
                BLOCK_R=block_r, BLOCK_I=block_i, num_warps=_num_warps(block_r, block_i))
    scalars = _scalar_args(alpha, gain, clamp)
    _bn_act_bwd_reduce_kernel[(n,)](dy, x, scale, beta, mean, invstd, sg, sgx, outer, c, inner, *scalars, **meta)
    sum_g = _per_channel(sg, outer, c, cl).sum(0)
    sum_gx = _per_channel(sgx, outer, c, cl).sum(0)
    m = outer * inner
    dx = torch.empty_like(x)
    _bn_act_bwd_dx_kernel[(n,)](dy, x, dx, scale, beta, mean, invstd, sum_g / m, sum_gx / m, outer, c, inner,
                                *scalars, **meta)
    return dx, sum_g, sum_gx
