"""Batch normalisation (training statistics) fused with the activation epilogue.

Math, per channel c over the M = N * H * W elements of that channel:

    mean, var     = batch mean and biased variance of x
    x_hat         = (x - mean) * invstd,            invstd = 1 / sqrt(var + eps)
    u             = x_hat * w + b  =  (x - mean) * scale + b      (scale = w * invstd)
    y             = clamp(act(u) * gain, -clamp, clamp)

Forward, three launches: ``bn_stats`` runs a reduction producing per-tile count, mean and M2 of
x - s (s one element of the channel: a large offset common to the channel cancels exactly
before anything is summed, and there is no sum-of-squares cancellation), then one small kernel
merging each channel's tiles with Chan's parallel formula and writing the per-channel
``stats`` [4, C] = (mean, var, scale, unbiased var); the bias_act kernel then normalises with a
per-channel center and scale (``bias_act_fwd(..., scale=, center=)``). u is always formed as
(x - mean) * scale + b, never as x * scale + (b - mean * scale), whose two terms cancel when
|mean| >> std.

Backward, three launches (a reduction, ``channel_sums``, a pointwise pass; one write of dx):

    g       = dy * gain * act'(u) * [|act(u) * gain| <= clamp]
    db      = sum g,   dw = sum g * x_hat
    dx      = scale * (g - db / M - x_hat * dw / M)

The kernels read the statistics from ``stats`` and recompute invstd from var: no per-channel
host-side arithmetic between the launches. Layouts and tiling are those of bias_act ([OUTER, C,
INNER] views of dense tensors).
"""
import torch
import triton
import triton.language as tl

from .activation import ACT_IDS, act_d1, act_fwd, scalar_arg
from .bias_act import (_blocks, _dense, _num_warps, _partial_sum_offsets, _partial_tile, _scalar_args, _tile,
                       channel_sums, partials_layout, reduce_blocks)
from .common import check_launch_dtype, split_float, vector

__all__ = ["bn_stats", "bn_finalize", "bn_act_bwd", "STATS_ROWS"]

# rows of the per-channel statistics tensor [4, C] that bn_stats returns
STATS_ROWS = ("mean", "var", "scale", "unbiased_var")


@triton.jit
def _bn_stats_kernel(x_ptr, count_ptr, mean_ptr, m2_ptr, OUTER, C, INNER,
                     IS_F64: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """Per tile and channel, of x - s (s = x[0, c, 0], the channel's first element in [OUTER, C,
    INNER]): element count, mean and M2 = sum (x - s - mean)^2."""
    pid = tl.program_id(0)
    offs, mask, chan, chan_mask = _tile(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    x = x.to(tl.float64) if IS_F64 else x.to(tl.float32)
    shift = tl.load(x_ptr + chan.to(tl.int64) * INNER, mask=chan_mask, other=0.0).to(x.dtype)
    x = tl.where(mask, x - shift, 0.0)
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
def _bn_finalize_kernel(count_ptr, mean_ptr, m2_ptr, x_ptr, w_ptr, stats_ptr, rm_ptr, rv_ptr, nbt_ptr,
                        T, TI, C, INNER, eps, eps_lo, momentum, momentum_lo,
                        HAS_SHIFT: tl.constexpr, HAS_WEIGHT: tl.constexpr, IS_F64: tl.constexpr, RUNNING: tl.constexpr,
                        COUNT: tl.constexpr, CUMULATIVE: tl.constexpr, BLOCK_T: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """Merge each channel's T tiles (Chan et al.: counts n_a, n_b, means, M2s) and write
    stats[:, c] = (s + mean, var, w * invstd, var * n / (n - 1)) (s = 0 without HAS_SHIFT: partials
    of x itself, as the conv epilogue writes).

    RUNNING: running_mean/var <- running + f * (batch mean / unbiased var - running), with
    f = momentum, or (CUMULATIVE) f = 1 / num_batches_tracked, the counter already counting this
    batch. COUNT: program 0 adds 1 to num_batches_tracked (no program reads it then)."""
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = chans < C
    if IS_F64:
        zero = tl.zeros([BLOCK_C], dtype=tl.float64)
    else:
        zero = tl.zeros([BLOCK_C], dtype=tl.float32)
    n_a, mean_a, m2_a = zero, zero, zero
    for t0 in range(0, T, BLOCK_T):
        offs, mask = _partial_tile(t0, chans, T, TI, C, BLOCK_T)
        n = tl.load(count_ptr + offs, mask=mask, other=0.0)
        mu = tl.load(mean_ptr + offs, mask=mask, other=0.0)
        m2 = tl.load(m2_ptr + offs, mask=mask, other=0.0)
        n_b = tl.sum(n, axis=0)
        mean_b = tl.sum(n * mu, axis=0) / tl.maximum(n_b, 1.0)
        d = tl.where(mask, mu - mean_b[None, :], 0.0)
        m2_b = tl.sum(m2 + n * d * d, axis=0)
        total = n_a + n_b
        frac = n_b / tl.maximum(total, 1.0)
        delta = mean_b - mean_a
        mean_a = mean_a + delta * frac
        m2_a = m2_a + m2_b + delta * delta * n_a * frac
        n_a = total
    n_a = tl.maximum(n_a, 2.0)  # masked channels (the launcher refuses M <= 1)
    if HAS_SHIFT:
        shift = tl.load(x_ptr + chans.to(tl.int64) * INNER, mask=ok, other=0.0).to(zero.dtype)
    else:
        shift = zero
    var = m2_a / n_a
    scale = 1.0 / tl.sqrt(var + scalar_arg(eps, eps_lo, IS_F64))
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + chans, mask=ok, other=0.0).to(zero.dtype)
    tl.store(stats_ptr + chans, shift + mean_a, mask=ok)
    tl.store(stats_ptr + C + chans, var, mask=ok)
    tl.store(stats_ptr + 2 * C + chans, scale, mask=ok)
    unbiased = m2_a / (n_a - 1.0)
    tl.store(stats_ptr + 3 * C + chans, unbiased, mask=ok)
    if RUNNING:
        if CUMULATIVE:
            f = 1.0 / tl.load(nbt_ptr).to(zero.dtype)
        else:
            f = scalar_arg(momentum, momentum_lo, IS_F64)
        rm = tl.load(rm_ptr + chans, mask=ok, other=0.0)
        rv = tl.load(rv_ptr + chans, mask=ok, other=0.0)
        rm_new = rm.to(zero.dtype) + f * (shift + mean_a - rm.to(zero.dtype))
        rv_new = rv.to(zero.dtype) + f * (unbiased - rv.to(zero.dtype))
        tl.store(rm_ptr + chans, rm_new.to(rm_ptr.dtype.element_ty), mask=ok)
        tl.store(rv_ptr + chans, rv_new.to(rv_ptr.dtype.element_ty), mask=ok)
    if COUNT:
        if tl.program_id(0) == 0:
            tl.store(nbt_ptr, tl.load(nbt_ptr) + 1)


@triton.jit
def _bn_act_grad_terms(pid, dy_ptr, x_ptr, stats_ptr, b_ptr, OUTER, C, INNER, eps, alpha, gain, clamp, eps_lo,
                       alpha_lo, gain_lo, clamp_lo, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
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
    mean = tl.load(stats_ptr + chan, mask=chan_mask, other=0.0).to(x.dtype)
    var = tl.load(stats_ptr + C + chan, mask=chan_mask, other=0.0).to(x.dtype)
    scale = tl.load(stats_ptr + 2 * C + chan, mask=chan_mask, other=0.0).to(x.dtype)
    x_hat = (x - mean) / tl.sqrt(var + scalar_arg(eps, eps_lo, IS_F64))
    u = (x - mean) * scale
    if HAS_BIAS:
        u += tl.load(b_ptr + chan, mask=chan_mask, other=0.0).to(x.dtype)
    if HAS_CLAMP:  # zero dy where clamped, then act' (NaN stays NaN, as in bias_act's backward)
        dy = tl.where(tl.abs(act_fwd(u, alpha, ACT) * gain) <= clamp, dy, 0.0)
    g = tl.where(mask, dy * gain * act_d1(u, alpha, ACT), 0.0)
    return offs, mask, chan, chan_mask, g, x_hat, scale


@triton.jit
def _bn_act_bwd_reduce_kernel(dy_ptr, x_ptr, stats_ptr, b_ptr, sg_ptr, sgx_ptr, OUTER, C, INNER,
                              eps, alpha, gain, clamp, eps_lo, alpha_lo, gain_lo, clamp_lo,
                              ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                              IS_F64: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                              BLOCK_I: tl.constexpr):
    """Per-tile partial sums of g and g * x_hat (pass 1 of the backward)."""
    pid = tl.program_id(0)
    offs, mask, chan, chan_mask, g, x_hat, scale = _bn_act_grad_terms(
        pid, dy_ptr, x_ptr, stats_ptr, b_ptr, OUTER, C, INNER, eps, alpha, gain, clamp, eps_lo, alpha_lo, gain_lo,
        clamp_lo, ACT, HAS_BIAS, HAS_CLAMP, IS_F64, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    gx = g * x_hat
    p_offs, p_mask = _partial_sum_offsets(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    if CHANNELS_LAST:
        tl.store(sg_ptr + p_offs, tl.sum(g, axis=0), mask=p_mask)
        tl.store(sgx_ptr + p_offs, tl.sum(gx, axis=0), mask=p_mask)
    else:
        tl.store(sg_ptr + p_offs, tl.sum(g, axis=1), mask=p_mask)
        tl.store(sgx_ptr + p_offs, tl.sum(gx, axis=1), mask=p_mask)


@triton.jit
def _bn_act_bwd_dx_kernel(dy_ptr, x_ptr, dx_ptr, stats_ptr, b_ptr, sum_g_ptr, sum_gx_ptr, OUTER, C, INNER,
                          eps, alpha, gain, clamp, eps_lo, alpha_lo, gain_lo, clamp_lo,
                          ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                          IS_F64: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_I: tl.constexpr):
    """dx = scale * (g - sum(g) / M - x_hat * sum(g * x_hat) / M) (pass 2 of the backward)."""
    pid = tl.program_id(0)
    offs, mask, chan, chan_mask, g, x_hat, scale = _bn_act_grad_terms(
        pid, dy_ptr, x_ptr, stats_ptr, b_ptr, OUTER, C, INNER, eps, alpha, gain, clamp, eps_lo, alpha_lo, gain_lo,
        clamp_lo, ACT, HAS_BIAS, HAS_CLAMP, IS_F64, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    if IS_F64:  # M, the elements per channel, in the compute precision
        m = tl.full((), OUTER, tl.float64) * INNER
    else:
        m = tl.full((), OUTER, tl.float32) * INNER
    mg = tl.load(sum_g_ptr + chan, mask=chan_mask, other=0.0).to(g.dtype) / m
    mgx = tl.load(sum_gx_ptr + chan, mask=chan_mask, other=0.0).to(g.dtype) / m
    dx = scale * (g - mg - x_hat * mgx)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _launch_args(x: torch.Tensor, act: str, clamp, cl: bool, block_r: int, block_i: int, **flags):
    return dict(ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None, IS_F64=x.dtype == torch.float64, CHANNELS_LAST=cl,
                BLOCK_R=block_r, BLOCK_I=block_i, num_warps=_num_warps(block_r, block_i), **flags)


def bn_stats(x: torch.Tensor, dim: int = 1, weight: torch.Tensor | None = None, eps: float = 1e-5,
             running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
             num_batches_tracked: torch.Tensor | None = None, momentum: float | None = 0.1) -> torch.Tensor:
    """Per-channel statistics along ``dim`` as one tensor [4, C] in float32 (float64 for float64):
    rows ``STATS_ROWS`` = mean, biased var, scale = weight / sqrt(var + eps) (1 / sqrt(var + eps)
    without a weight) and the unbiased var. Two launches: the per-tile partials, their merge.

    The merge also updates the running statistics in place when both are given, as torch's
    batch norm does: ``running += f * (batch value - running)`` with f = ``momentum``, and adds 1
    to ``num_batches_tracked`` when given. ``momentum=None`` is torch's cumulative average
    (f = 1 / num_batches_tracked): then the caller counts this batch first (``add_(1)``), since
    the kernel's programs read the counter."""
    check_launch_dtype(x)
    x, (outer, c, inner) = _dense(x, dim)
    if outer * inner <= 1:
        raise ValueError(f"batch statistics need more than one element per channel, got [{outer}, {c}, {inner}]")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    cl, block_r, block_i, n = _blocks(outer, c, inner)
    shape, tiles, tiles_i = partials_layout(outer, c, inner, cl, block_r, block_i)
    count, mean, m2 = (torch.empty(shape, dtype=acc, device=x.device) for _ in range(3))
    _bn_stats_kernel[(n,)](x, count, mean, m2, outer, c, inner, IS_F64=x.dtype == torch.float64, CHANNELS_LAST=cl,
                           BLOCK_R=block_r, BLOCK_I=block_i, num_warps=_num_warps(block_r, block_i))
    return _finalize((count, mean, m2), tiles, tiles_i, c, (x, inner), weight, eps, running_mean, running_var,
                     num_batches_tracked, momentum)


def bn_finalize(partials, weight: torch.Tensor | None = None, eps: float = 1e-5,
                running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                num_batches_tracked: torch.Tensor | None = None, momentum: float | None = 0.1) -> torch.Tensor:
    """``bn_stats``'s result from per-tile partials of x itself, (count, mean, M2), each [T, C] as
    ``conv_act_fwd(..., bn_partials=)`` writes them: one launch, running statistics and counter
    as ``bn_stats``."""
    count = partials[0]
    if count.dim() != 2 or count.shape[0] < 1 or any(p.shape != count.shape or not p.is_contiguous()
                                                     for p in partials):
        raise ValueError(f"partials must be three contiguous [T, C] tensors (T >= 1), got "
                         f"{[tuple(p.shape) for p in partials]}")
    return _finalize(partials, count.shape[0], 1, count.shape[1], None, weight, eps, running_mean, running_var,
                     num_batches_tracked, momentum)


def _finalize(partials, tiles: int, tiles_i: int, c: int, shift, weight, eps, running_mean, running_var,
              num_batches_tracked, momentum) -> torch.Tensor:
    """The merge launch: stats [4, C] from the partials (of x - x[0, c, 0] with ``shift`` = (x,
    INNER) of the dense [OUTER, C, INNER] view; of x itself with None), running statistics
    updated."""
    count, mean, m2 = partials
    weight = vector(weight)
    running = running_mean is not None and running_var is not None
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if running and (not t.is_contiguous() or t.shape != (c,) or t.device != count.device):
            raise ValueError(f"{name} must be a contiguous [{c}] tensor on {count.device}, got "
                             f"{tuple(t.shape)} on {t.device}")
    if running and momentum is None and num_batches_tracked is None:
        raise ValueError("momentum=None (the cumulative average) needs num_batches_tracked")
    if num_batches_tracked is not None and (num_batches_tracked.numel() != 1
                                            or num_batches_tracked.device != count.device):
        raise ValueError(f"num_batches_tracked must be a one-element tensor on {count.device}, got shape "
                         f"{tuple(num_batches_tracked.shape)} on {num_batches_tracked.device}")
    stats = torch.empty((len(STATS_ROWS), c), dtype=count.dtype, device=count.device)
    block_c, block_t = reduce_blocks(c, tiles)
    x, inner = shift if shift is not None else (stats, 1)
    _bn_finalize_kernel[(triton.cdiv(c, block_c),)](
        count, mean, m2, x, weight if weight is not None else stats, stats,
        running_mean if running else stats, running_var if running else stats,
        num_batches_tracked if num_batches_tracked is not None else stats,
        tiles, tiles_i, c, inner, *split_float(eps), *split_float(momentum if momentum is not None else 0.0),
        HAS_SHIFT=shift is not None, HAS_WEIGHT=weight is not None, IS_F64=count.dtype == torch.float64,
        RUNNING=running, COUNT=running and num_batches_tracked is not None and momentum is not None,
        CUMULATIVE=running and momentum is None, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=4)
    return stats


def bn_act_bwd(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, bias: torch.Tensor | None, eps: float,
               dim: int, act: str, alpha: float, gain: float, clamp: float | None):
    """(dx, sum g, sum g * x_hat) for the fused batch-norm + activation (see module docstring),
    given the forward's ``stats`` (``bn_stats``, with the same weight and eps) and bias:
    u = (x - mean) * scale + bias. The sums are float32 (float64)."""
    check_launch_dtype(x, dy)
    bias = vector(bias)
    x, (outer, c, inner) = _dense(x, dim)
    if stats.shape != (len(STATS_ROWS), c):
        raise ValueError(f"stats must be [{len(STATS_ROWS)}, {c}] (bn_stats), got {tuple(stats.shape)}")
    stats = stats.contiguous()
    if dy.stride() != x.stride():
        dy = torch.empty_like(x).copy_(dy)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    cl, block_r, block_i, n = _blocks(outer, c, inner)
    shape, tiles, tiles_i = partials_layout(outer, c, inner, cl, block_r, block_i)
    sg, sgx = (torch.empty(shape, dtype=acc, device=x.device) for _ in range(2))
    meta = _launch_args(x, act, clamp, cl, block_r, block_i, HAS_BIAS=bias is not None)
    (e, e_lo), (a, g, cp, a_lo, g_lo, cp_lo) = split_float(eps), _scalar_args(alpha, gain, clamp)
    scalars = (e, a, g, cp, e_lo, a_lo, g_lo, cp_lo)
    b = bias if bias is not None else x
    _bn_act_bwd_reduce_kernel[(n,)](dy, x, stats, b, sg, sgx, outer, c, inner, *scalars, **meta)
    sum_g, sum_gx = (torch.empty(c, dtype=acc, device=x.device) for _ in range(2))
    channel_sums([sg, sgx], [sum_g, sum_gx], tiles, tiles_i)
    dx = torch.empty_like(x)
    _bn_act_bwd_dx_kernel[(n,)](dy, x, dx, stats, b, sum_g, sum_gx, outer, c, inner, *scalars, **meta)
    return dx, sum_g, sum_gx
