"""Fused bias + activation + gain + clamp, forward and backward (first and second order).

Math (z = x + b broadcast along the channel dim, a = act, m = [|a(z) * gain| <= clamp]):

    forward        y   = clamp(a(z) * gain, -clamp, clamp)
    order 1 (bwd)  out = g * gain * a'(z) * m                 (g = dL/dy)
    order 2        out = g * dy * gain * a''(z) * m           (g = dL/d(dx), the 2nd-order pass)

and in both backward orders the bias gradient sum(out) over every dim but the channel is
reduced in the same pass (per-tile partial sums, then ``channel_sums``: one small kernel that
adds each channel's partials and writes db in the bias dtype).

Layout: any dense tensor (NCHW, channels_last, any ``dim``) is, in memory, a 3-d array
[OUTER, C, INNER] with INNER = stride of the channel dim. Two tilings cover it:
- INNER == 1 ("channels last"): tiles [BLOCK_R rows of OUTER, BLOCK_I channels];
- INNER > 1 ("planar"): rows are (outer, channel) pairs, tiles [BLOCK_R rows, BLOCK_I of INNER].
Offsets are int64, so tensors over 2^31 elements index correctly.
"""
import torch
import triton
import triton.language as tl

from .activation import ACT_IDS, act_clamp, act_d1, act_d2, act_fwd, scalar_arg
from .common import TILE_ELEMENTS, check_launch_dtype, is_dense, is_interpreted, split_float, vector

__all__ = ["bias_act_fwd", "bias_act_bwd", "channel_layout", "channel_sums", "partials_layout"]


@triton.jit
def _tile(pid, OUTER, C, INNER, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    """Element offsets, mask and channel index (broadcastable to the tile) of tile ``pid``."""
    if CHANNELS_LAST:
        n_cb = (C + BLOCK_I - 1) // BLOCK_I
        pid_r = pid // n_cb
        pid_c = pid % n_cb
        rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = pid_c * BLOCK_I + tl.arange(0, BLOCK_I)
        offs = rows[:, None] * C + cols[None, :]
        mask = (rows < OUTER)[:, None] & (cols < C)[None, :]
        chan = cols[None, :]
        chan_mask = (cols < C)[None, :]
    else:
        n_ib = (INNER + BLOCK_I - 1) // BLOCK_I
        pid_r = pid // n_ib
        pid_i = pid % n_ib
        rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        offs = rows[:, None] * INNER + cols[None, :]
        mask = (rows < OUTER * C)[:, None] & (cols < INNER)[None, :]
        chan = (rows % C)[:, None]
        chan_mask = (rows < OUTER * C)[:, None]
    return offs, mask, chan, chan_mask


@triton.jit
def _partial_sum_offsets(pid, OUTER, C, INNER, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                         BLOCK_I: tl.constexpr):
    """Where tile ``pid`` stores its bias-gradient partial sums (and which entries are valid).

    channels last: partial[pid_r, c], the sum over the tile's rows; shape [cdiv(OUTER, BLOCK_R), C]
    planar:        partial[row, pid_i], the sum over the tile's cols; shape [OUTER * C, cdiv(INNER, BLOCK_I)]
    """
    if CHANNELS_LAST:
        n_cb = (C + BLOCK_I - 1) // BLOCK_I
        cols = (pid % n_cb) * BLOCK_I + tl.arange(0, BLOCK_I)
        offs = (pid // n_cb).to(tl.int64) * C + cols
        mask = cols < C
    else:
        n_ib = (INNER + BLOCK_I - 1) // BLOCK_I
        rows = (pid // n_ib).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        offs = rows * n_ib + pid % n_ib
        mask = rows < OUTER * C
    return offs, mask


@triton.jit
def _partial_tile(t0, chans, T, TI, C, BLOCK_T: tl.constexpr):
    """Offsets and mask of the partial sums of tiles t0 .. t0 + BLOCK_T - 1 for the channels ``chans``
    (rows: tiles, columns: channels), in the layouts of ``_partial_sum_offsets``: tile t of a channel
    is (row block t // TI, column block t % TI), TI = 1 for channels last."""
    t = t0 + tl.arange(0, BLOCK_T)
    offs = ((t // TI).to(tl.int64)[:, None] * C + chans[None, :]) * TI + (t % TI)[:, None]
    return offs, (t < T)[:, None] & (chans < C)[None, :]


@triton.jit
def _channel_sums_kernel(p0_ptr, p1_ptr, out0_ptr, out1_ptr, T, TI, C, TWO: tl.constexpr, IS_F64: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[c] = sum over the T tiles of partial[tile, c], for one partial buffer (or two: TWO),
    accumulated in float32 (float64) and stored in the output's dtype."""
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    if IS_F64:
        acc0 = tl.zeros([BLOCK_C], dtype=tl.float64)
    else:
        acc0 = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc1 = acc0
    for t0 in range(0, T, BLOCK_T):
        offs, mask = _partial_tile(t0, chans, T, TI, C, BLOCK_T)
        acc0 = acc0 + tl.sum(tl.load(p0_ptr + offs, mask=mask, other=0.0).to(acc0.dtype), axis=0)
        if TWO:
            acc1 = acc1 + tl.sum(tl.load(p1_ptr + offs, mask=mask, other=0.0).to(acc0.dtype), axis=0)
    tl.store(out0_ptr + chans, acc0.to(out0_ptr.dtype.element_ty), mask=chans < C)
    if TWO:
        tl.store(out1_ptr + chans, acc1.to(out1_ptr.dtype.element_ty), mask=chans < C)


@triton.jit
def _bias_act_fwd_kernel(x_ptr, m_ptr, s_ptr, b_ptr, y_ptr, OUTER, C, INNER, alpha, gain, clamp,
                         alpha_lo, gain_lo, clamp_lo,
                         ACT: tl.constexpr, HAS_CENTER: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                         HAS_CLAMP: tl.constexpr, IS_F64: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    pid = tl.program_id(0)
    # float64: the scalars come as float32 hi + lo pairs (common.split_float)
    alpha = scalar_arg(alpha, alpha_lo, IS_F64)
    gain = scalar_arg(gain, gain_lo, IS_F64)
    clamp = scalar_arg(clamp, clamp_lo, IS_F64)
    offs, mask, chan, chan_mask = _tile(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    z = x.to(tl.float64) if IS_F64 else x.to(tl.float32)
    if HAS_CENTER:  # per-channel center and scale: the batch-norm epilogue z = (x - mean) * scale + b
        z -= tl.load(m_ptr + chan, mask=chan_mask, other=0.0).to(z.dtype)
    if HAS_SCALE:
        z *= tl.load(s_ptr + chan, mask=chan_mask, other=0.0).to(z.dtype)
    if HAS_BIAS:
        z += tl.load(b_ptr + chan, mask=chan_mask, other=0.0).to(z.dtype)
    y = act_fwd(z, alpha, ACT) * gain
    if HAS_CLAMP:
        y = act_clamp(y, clamp)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_bwd_kernel(g_ptr, x_ptr, b_ptr, dy_ptr, out_ptr, partial_ptr, OUTER, C, INNER,
                         alpha, gain, clamp, alpha_lo, gain_lo, clamp_lo,
                         ACT: tl.constexpr, ORDER: tl.constexpr, HAS_BIAS: tl.constexpr,
                         HAS_CLAMP: tl.constexpr, NEED_DB: tl.constexpr, IS_F64: tl.constexpr,
                         CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr):
    pid = tl.program_id(0)
    alpha = scalar_arg(alpha, alpha_lo, IS_F64)
    gain = scalar_arg(gain, gain_lo, IS_F64)
    clamp = scalar_arg(clamp, clamp_lo, IS_F64)
    offs, mask, chan, chan_mask = _tile(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    z = x.to(tl.float64) if IS_F64 else x.to(tl.float32)
    if HAS_BIAS:
        z += tl.load(b_ptr + chan, mask=chan_mask, other=0.0).to(z.dtype)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(z.dtype)
    # the clamp zeroes the upstream gradient (dy) before act' multiplies it, as in the reference:
    # where act' is NaN (tanh at NaN, swish at inf) the product stays NaN
    if ORDER == 1:
        if HAS_CLAMP:
            g = tl.where(tl.abs(act_fwd(z, alpha, ACT) * gain) <= clamp, g, 0.0)
        out = g * gain * act_d1(z, alpha, ACT)
    else:
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(z.dtype)
        if HAS_CLAMP:
            dy = tl.where(tl.abs(act_fwd(z, alpha, ACT) * gain) <= clamp, dy, 0.0)
        out = g * dy * gain * act_d2(z, alpha, ACT)
    out = tl.where(mask, out, 0.0)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if NEED_DB:
        # tl.sum stays in the kernel body: the interpreter cannot run it inside a helper.
        p_offs, p_mask = _partial_sum_offsets(pid, OUTER, C, INNER, CHANNELS_LAST, BLOCK_R, BLOCK_I)
        if CHANNELS_LAST:
            tl.store(partial_ptr + p_offs, tl.sum(out, axis=0), mask=p_mask)
        else:
            tl.store(partial_ptr + p_offs, tl.sum(out, axis=1), mask=p_mask)


# ----------------------------------------------------------------------------- launchers

def channel_layout(x: torch.Tensor, dim: int):
    """(OUTER, C, INNER) of a dense tensor seen in memory as [OUTER, C, INNER], or None.

    INNER is the product of the sizes of the dims laid out inside the channel dim; size-1
    dims are ignored (their strides carry no information).
    """
    if not is_dense(x):
        return None
    c = x.shape[dim]
    if x.numel() == 0:
        return 0, c, 1
    if c == 1:
        return 1, 1, x.numel()
    s = x.stride(dim)
    inner = 1
    for d in range(x.dim()):
        if d != dim and x.shape[d] > 1 and x.stride(d) < s:
            inner *= x.shape[d]
    if inner != s:
        return None
    return x.numel() // (c * inner), c, inner


def _same_layout(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` with the memory layout of the dense tensor ``ref`` (a copy only if it differs)."""
    if all(sx == sr for sx, sr, n in zip(x.stride(), ref.stride(), ref.shape) if n > 1):
        return x
    out = torch.empty_like(ref, dtype=x.dtype)
    out.copy_(x)
    return out


def _blocks(outer: int, c: int, inner: int):
    """(channels_last, BLOCK_R, BLOCK_I, n_programs) for one tiling of [OUTER, C, INNER]."""
    tile = TILE_ELEMENTS * (16 if is_interpreted() else 1)
    if inner == 1:
        block_i = min(triton.next_power_of_2(c), 256)
        block_r = max(1, min(tile // block_i, triton.next_power_of_2(outer)))
        return True, block_r, block_i, triton.cdiv(outer, block_r) * triton.cdiv(c, block_i)
    rows = outer * c
    block_i = min(triton.next_power_of_2(inner), 2048)
    block_r = max(1, min(tile // block_i, triton.next_power_of_2(rows)))
    return False, block_r, block_i, triton.cdiv(rows, block_r) * triton.cdiv(inner, block_i)


def partials_layout(outer: int, c: int, inner: int, cl: bool, block_r: int, block_i: int):
    """(shape, T, TI) of the per-tile partial sums of one tiling (``_partial_sum_offsets``): T
    tiles per channel, TI of them along a planar row (1 for channels last)."""
    if cl:
        t = triton.cdiv(outer, block_r)
        return (t, c), t, 1
    ti = triton.cdiv(inner, block_i)
    return (outer * c, ti), outer * ti, ti


def reduce_blocks(c: int, t: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_T) of a per-channel pass over ``t`` tile partials: a few channels per
    program (several programs for wide layers), tiles read in chunks of about one elementwise
    tile, no larger than ``t`` needs."""
    block_c = min(triton.next_power_of_2(c), 32)
    chunk = max(16, TILE_ELEMENTS * (16 if is_interpreted() else 1) // block_c)
    return block_c, min(chunk, max(16, triton.next_power_of_2(t)))


def channel_sums(partials: list, outs: list, t: int, ti: int) -> None:
    """outs[k][c] = the sum over the tiles of partials[k] (one or two buffers, one launch)."""
    c = outs[0].numel()
    block_c, block_t = reduce_blocks(c, t)
    two = len(partials) == 2
    _channel_sums_kernel[(triton.cdiv(c, block_c),)](
        partials[0], partials[-1], outs[0], outs[-1], t, ti, c, TWO=two,
        IS_F64=partials[0].dtype == torch.float64, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=4)


def _dense(x: torch.Tensor, dim: int):
    layout = channel_layout(x, dim)
    if layout is None:
        x = x.contiguous()
        layout = channel_layout(x, dim)
    return x, layout


def _scalar_args(alpha: float, gain: float, clamp: float | None) -> tuple[float, ...]:
    """(alpha, gain, clamp, alpha_lo, gain_lo, clamp_lo): the kernels' float arguments as
    float32 hi/lo pairs (see ``common.split_float``; clamp 0.0 when absent)."""
    (a, a_lo), (g, g_lo), (c, c_lo) = (split_float(v) for v in (alpha, gain, clamp if clamp is not None else 0.0))
    return a, g, c, a_lo, g_lo, c_lo


def _num_warps(block_r: int, block_i: int) -> int:
    return 8 if block_r * block_i >= 4096 else 4


def _output_like(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty_like(x)
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or out.stride() != x.stride():
        raise ValueError("out must match the (dense) input in shape, dtype, device and strides")
    return out


def bias_act_fwd(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float,
                 gain: float, clamp: float | None, out: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None, center: torch.Tensor | None = None) -> torch.Tensor:
    """y = clamp(act((x - center) * scale + b) * gain); y has x's dtype and memory layout (written
    into ``out`` if given). ``center`` and ``scale`` (per channel, optional) serve the batch-norm
    epilogue; they and ``b`` may then be float32 for half inputs (read in the compute precision)."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"kernel input must be float16/bfloat16/float32/float64, got {x.dtype}")
    if scale is None and center is None:
        check_launch_dtype(x, b)
    b, scale, center = vector(b), vector(scale), vector(center)
    x, (outer, c, inner) = _dense(x, dim)
    y = _output_like(x, out)
    if x.numel() == 0:
        return y
    cl, block_r, block_i, n = _blocks(outer, c, inner)
    _bias_act_fwd_kernel[(n,)](
        x, center if center is not None else x, scale if scale is not None else x, b if b is not None else x, y,
        outer, c, inner, *_scalar_args(alpha, gain, clamp),
        ACT=ACT_IDS[act], HAS_CENTER=center is not None, HAS_SCALE=scale is not None, HAS_BIAS=b is not None,
        HAS_CLAMP=clamp is not None,
        IS_F64=x.dtype == torch.float64, CHANNELS_LAST=cl, BLOCK_R=block_r, BLOCK_I=block_i,
        num_warps=_num_warps(block_r, block_i))
    return y


def bias_act_bwd(g: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str,
                 alpha: float, gain: float, clamp: float | None, order: int = 1,
                 dy: torch.Tensor | None = None, need_db: bool = False, out: torch.Tensor | None = None):
    """Backward of bias_act, returning ``(out, db)`` (db is None unless ``need_db``).

    order 1: out = g * gain * act'(x + b) * m                 (the input gradient dx)
    order 2: out = g * dy * gain * act''(x + b) * m           (d(dx)/dx applied to g)
    db = sum of out over every dim but ``dim``, accumulated in float32 (float64 for float64).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    if order == 2 and dy is None:
        raise ValueError("order 2 needs dy, the upstream gradient of the first backward")
    check_launch_dtype(x, b)
    b = vector(b)
    x, (outer, c, inner) = _dense(x, dim)
    g = _same_layout(g, x)
    dy = _same_layout(dy, x) if dy is not None else g
    out = _output_like(x, out)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.numel() == 0:
        db = torch.zeros(c, dtype=x.dtype, device=x.device) if need_db else None
        return out, db
    cl, block_r, block_i, n = _blocks(outer, c, inner)
    shape, tiles, tiles_i = partials_layout(outer, c, inner, cl, block_r, block_i)
    partial = torch.empty(shape, dtype=acc_dtype, device=x.device) if need_db else out
    _bias_act_bwd_kernel[(n,)](
        g, x, b if b is not None else x, dy, out, partial, outer, c, inner,
        *_scalar_args(alpha, gain, clamp),
        ACT=ACT_IDS[act], ORDER=order, HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None,
        NEED_DB=need_db, IS_F64=x.dtype == torch.float64, CHANNELS_LAST=cl,
        BLOCK_R=block_r, BLOCK_I=block_i, num_warps=_num_warps(block_r, block_i))
    db = None
    if need_db:
        db = torch.empty(c, dtype=b.dtype if b is not None else x.dtype, device=x.device)
        channel_sums([partial], [db], tiles, tiles_i)
    return out, db
