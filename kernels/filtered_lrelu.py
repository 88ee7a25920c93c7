"""filtered_lrelu with separable filters, fused: the upsampled intermediate lives in registers only.

Per axis (x of size IN, up/down factors, padding p0/p1, correlation taps gu (``up`` per axis
folded in) and gd), the op is y = D a(U x) with the banded matrices

    U[k, i] = gu[i * up + p0 - k]     (zero insertion, padding, FIR: the intermediate z = U x)
    D[o, k] = gd[k - o * down]        (FIR, decimation)

over the intermediate of length L = IN * up + p0 + p1 - len(gu) + 1 (OUT = (L - len(gd)) // down + 1);
in 2-d, Z = U_h X U_w^T and Y = D_h A D_w^T. a(z) = clamp(lrelu(z, slope) * gain) with
a'(z) = gain * (1 if z > 0 else slope) * [|lrelu(z) * gain| <= clamp], piecewise constant. So:

    MODE 0, forward     out = D a(U x)                      (tiles of y)
    MODE 1, linearised  out = D (a'(U x) * (U v))           (tiles of y; v has x's shape)
    MODE 2, backward    out = U^T (a'(U x) * (D^T dy))      (tiles of x)

and the modes close under differentiation: the gradient of mode 2 w.r.t. dy is mode 1, of
mode 1 w.r.t. v is mode 2, and both are constant in x (a'' = 0): gradients of any order.

One program computes one output tile of one (n, c) plane with three small matrix products
per side: the band matrices are built in registers from the taps (``_band``), the input tile
is loaded once (bias added inside the image, zero outside), Z and the activation exist only
in registers, and the output tile is stored; tiles overlap by the filters' halo. The tile
geometry of each axis is one row of an int32 plan tensor (``PLAN_FIELDS``), made on the host
once per geometry and kept on the device.
Products run through ``conv._accumulate`` (float32 with TF32 rounding as the conv kernel
decides, exact float32 in the interpreter, multiply + sum in float64). Tensors are read and
written through their strides; channels_last inputs work but each plane is then strided.
"""
import functools
import math

import torch
import triton
import triton.language as tl

from .activation import scalar_arg
from .common import check_launch_dtype, is_channels_last, is_interpreted, split_float
from .conv import _accumulate, _use_tf32

__all__ = ["filtered_lrelu_fwd", "filtered_lrelu_lin", "filtered_lrelu_bwd", "PLAN_FIELDS"]

FORWARD, LINEARISED, BACKWARD = 0, 1, 2

# One axis of a launch (origins are tile * step + base, absolute indices along the axis):
#   OV, ON        outputs per tile, output size
#   KS, KB        intermediate origin
#   XS, XB, XN    x (the activation's argument) origin and size
#   SS, SB, SN    signal origin and size (v in mode 1, dy in mode 2)
#   UP, P0, FU    U: taps gu[i * UP + P0 - k], FU taps
#   R1, C1, O1, T1  signal band: taps1[row * R1 + col * C1 + O1], T1 taps (rows: intermediate)
#   R2, C2, O2, T2  output band: taps2[row * R2 + col * C2 + O2], T2 taps (rows: output)
PLAN_FIELDS = ("OV", "ON", "KS", "KB", "XS", "XB", "XN", "SS", "SB", "SN", "UP", "P0", "FU",
               "R1", "C1", "O1", "T1", "R2", "C2", "O2", "T2")
_ROW = 24  # plan row length (PLAN_FIELDS padded)


@triton.jit
def _plan(plan_ptr, AXIS: tl.constexpr):
    p = plan_ptr + AXIS * 24
    return (tl.load(p + 0), tl.load(p + 1), tl.load(p + 2), tl.load(p + 3), tl.load(p + 4), tl.load(p + 5),
            tl.load(p + 6), tl.load(p + 7), tl.load(p + 8), tl.load(p + 9), tl.load(p + 10), tl.load(p + 11),
            tl.load(p + 12), tl.load(p + 13), tl.load(p + 14), tl.load(p + 15), tl.load(p + 16), tl.load(p + 17),
            tl.load(p + 18), tl.load(p + 19), tl.load(p + 20))


@triton.jit
def _band(taps_ptr, T, rows, cols, RS, CS, OFF):
    """M[r, c] = taps[rows[r] * RS + cols[c] * CS + OFF], zero outside the T taps (float32/64)."""
    idx = rows[:, None] * RS + cols[None, :] * CS + OFF
    return tl.load(taps_ptr + idx, mask=(idx >= 0) & (idx < T), other=0.0)


@triton.jit
def _filter2d(mh, t, mwt, IS_F64: tl.constexpr, ROUND_TF32: tl.constexpr, TF32: tl.constexpr):
    """mh @ t @ mwt in the compute precision."""
    if IS_F64:
        dt = tl.float64
    else:
        dt = tl.float32
    r = _accumulate(tl.zeros((mh.shape[0], t.shape[1]), dtype=dt), mh, t, IS_F64, False, ROUND_TF32, TF32)
    return _accumulate(tl.zeros((mh.shape[0], mwt.shape[1]), dtype=dt), r, mwt, IS_F64, False, ROUND_TF32, TF32)


@triton.jit
def _filtered_lrelu_kernel(
        x_ptr, s_ptr, b_ptr, gu_ptr, t1_ptr, t2_ptr, out_ptr, plan_ptr, C, N_TW,
        sx_n, sx_c, sx_h, sx_w, ss_n, ss_c, ss_h, ss_w, so_n, so_c, so_h, so_w,
        gain, slope, clamp, gain_lo, slope_lo, clamp_lo,
        MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, IS_F64: tl.constexpr,
        TF32: tl.constexpr, ROUND_TF32: tl.constexpr, BO_H: tl.constexpr, BO_W: tl.constexpr,
        BT_H: tl.constexpr, BT_W: tl.constexpr, BX_H: tl.constexpr, BX_W: tl.constexpr,
        BS_H: tl.constexpr, BS_W: tl.constexpr):
    plane = tl.program_id(0)
    n = (plane // C).to(tl.int64)
    c = plane % C
    th = tl.program_id(1) // N_TW
    tw = tl.program_id(1) % N_TW
    OV_H, ON_H, KS_H, KB_H, XS_H, XB_H, XN_H, SS_H, SB_H, SN_H, UP_H, P0_H, FU_H, \
        R1_H, C1_H, O1_H, T1_H, R2_H, C2_H, O2_H, T2_H = _plan(plan_ptr, 0)
    OV_W, ON_W, KS_W, KB_W, XS_W, XB_W, XN_W, SS_W, SB_W, SN_W, UP_W, P0_W, FU_W, \
        R1_W, C1_W, O1_W, T1_W, R2_W, C2_W, O2_W, T2_W = _plan(plan_ptr, 1)
    gain = scalar_arg(gain, gain_lo, IS_F64)
    slope = scalar_arg(slope, slope_lo, IS_F64)
    clamp = scalar_arg(clamp, clamp_lo, IS_F64)

    k_h = th * KS_H + KB_H + tl.arange(0, BT_H)  # intermediate rows / columns of this tile
    k_w = tw * KS_W + KB_W + tl.arange(0, BT_W)

    # ---- z = U (x + b) over the tile's intermediate (bias inside the image, zero padding)
    i_h = th * XS_H + XB_H + tl.arange(0, BX_H)
    i_w = tw * XS_W + XB_W + tl.arange(0, BX_W)
    inside = ((i_h >= 0) & (i_h < XN_H))[:, None] & ((i_w >= 0) & (i_w < XN_W))[None, :]
    xt = tl.load(x_ptr + n * sx_n + c * sx_c + (i_h * sx_h)[:, None] + (i_w * sx_w)[None, :], mask=inside,
                 other=0.0)
    if IS_F64:
        xt = xt.to(tl.float64)
    else:
        xt = xt.to(tl.float32)
    if HAS_BIAS:
        xt = tl.where(inside, xt + tl.load(b_ptr + c).to(xt.dtype), 0.0)
    u_h = _band(gu_ptr, FU_H, k_h, i_h, -1, UP_H, P0_H)
    u_wt = _band(gu_ptr, FU_W, i_w, k_w, UP_W, -1, P0_W)
    z = _filter2d(u_h, xt, u_wt, IS_F64, ROUND_TF32, TF32)
    v = tl.where(z > 0, z, z * slope) * gain

    if MODE == 0:
        a = v
        if HAS_CLAMP:
            a = tl.minimum(tl.maximum(a, -clamp), clamp)
    else:  # a'(z) * (the signal through its band)
        s_h = th * SS_H + SB_H + tl.arange(0, BS_H)
        s_w = tw * SS_W + SB_W + tl.arange(0, BS_W)
        s_in = ((s_h >= 0) & (s_h < SN_H))[:, None] & ((s_w >= 0) & (s_w < SN_W))[None, :]
        st = tl.load(s_ptr + n * ss_n + c * ss_c + (s_h * ss_h)[:, None] + (s_w * ss_w)[None, :], mask=s_in,
                     other=0.0).to(xt.dtype)
        p = _filter2d(_band(t1_ptr, T1_H, k_h, s_h, R1_H, C1_H, O1_H), st,
                      _band(t1_ptr, T1_W, s_w, k_w, C1_W, R1_W, O1_W), IS_F64, ROUND_TF32, TF32)
        a = tl.where(z > 0, p, p * slope) * gain
        if HAS_CLAMP:
            a = tl.where(tl.abs(v) <= clamp, a, 0.0)

    # ---- out = (output band) a (output band)^T, stored where this tile owns the output
    o_h = th * OV_H + tl.arange(0, BO_H)
    o_w = tw * OV_W + tl.arange(0, BO_W)
    out = _filter2d(_band(t2_ptr, T2_H, o_h, k_h, R2_H, C2_H, O2_H), a,
                    _band(t2_ptr, T2_W, k_w, o_w, C2_W, R2_W, O2_W), IS_F64, ROUND_TF32, TF32)
    own = ((tl.arange(0, BO_H) < OV_H) & (o_h < ON_H))[:, None] & ((tl.arange(0, BO_W) < OV_W) & (o_w < ON_W))[None, :]
    tl.store(out_ptr + n * so_n + c * so_c + (o_h * so_h)[:, None] + (o_w * so_w)[None, :],
             out.to(out_ptr.dtype.element_ty), mask=own)


# ----------------------------------------------------------------------------- host side

def _np2(v: int) -> int:
    return max(16, triton.next_power_of_2(max(1, v)))


def _axis(mode: int, n_in: int, up: int, p0: int, p1: int, fu: int, fd: int, down: int, bt: int):
    """(plan row, tiles, BO, BT, BX, BS) of one axis for an intermediate tile of ``bt`` (power of 2)."""
    mid = n_in * up + p0 + p1 - fu + 1
    n_out = (mid - fd) // down + 1
    u = (up, p0, fu)
    if mode != BACKWARD:  # tiles of y: OV outputs need (OV - 1) * down + fd intermediate samples
        step = up // math.gcd(up, down)  # OV * down divisible by up: the x origin is affine in the tile
        ov = ((bt - fd) // down + 1) // step * step
        ks, kb, xs, xb = ov * down, 0, ov * down // up, -p0 // up
        ss, sb, sn = xs, xb, n_in
        band1, band2, n_own = (-1, up, p0, fu), (-down, 1, 0, fd), n_out
        bs = (bt + fu - 2) // up + 2
    else:  # tiles of x: IV inputs reach (IV - 1) * up + fu intermediate samples
        step = down // math.gcd(up, down)
        ov = ((bt - fu) // up + 1) // step * step
        ks, kb, xs, xb = ov * up, p0 - fu + 1, ov, (1 - fu) // up
        ss, sb, sn = ov * up // down, (p0 - fu - fd + 2) // down, n_out
        band1, band2, n_own = (1, -down, 0, fd), (up, -1, p0, fu), n_in
        bs = (bt + fd - 2) // down + 2
    if ov < 1:
        return None
    row = (ov, n_own, ks, kb, xs, xb, n_in, ss, sb, sn, *u, *band1, *band2)
    return row, triton.cdiv(n_own, ov), _np2(ov), bt, _np2((bt + fu - 2) // up + 2), _np2(bs)


def _tile(mode: int, n_in, up, p0, p1, fu, fd, down, dtype, tile=None):
    """The axis plan with the smallest intermediate tile that holds at least one output (GPU:
    at least 64 samples, 32 in float64; the interpreter covers the whole axis where it can;
    ``tile`` forces the smallest)."""
    mid = n_in * up + p0 + p1 - fu + 1
    if tile is not None:
        bt = tile
    elif is_interpreted():
        bt = min(_np2(mid + max(fu, fd) + up + down), 128)
    else:
        bt = 32 if dtype == torch.float64 else 64
    while True:
        plan = _axis(mode, n_in, up, p0, p1, fu, fd, down, bt)
        if plan is not None:
            return plan
        bt *= 2


@functools.lru_cache(maxsize=256)
def _plan_tensor(rows: tuple, device: torch.device) -> torch.Tensor:
    """The plan on the device, made once per geometry (so that later launches copy nothing from
    the host and can be captured in a CUDA graph)."""
    return torch.tensor(rows, dtype=torch.int32, device=device)


def _launch(mode, x, s, b, gu, gd, up, down, padding, gain, slope, clamp, out_hw, tile):
    check_launch_dtype(x, s, b)
    n, c, h, w = x.shape
    cl = is_channels_last(x)
    fmt = torch.channels_last if cl else torch.contiguous_format
    shape = (n, c, h, w) if mode == BACKWARD else (n, c, *out_hw)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    gu, gd = gu.to(device=x.device, dtype=acc).contiguous(), gd.to(device=x.device, dtype=acc).contiguous()
    top, bottom, left, right = padding
    rows, tiles, blocks = [], [], []
    for n_in, p0, p1 in ((h, top, bottom), (w, left, right)):
        row, t, *blk = _tile(mode, n_in, up, p0, p1, gu.numel(), gd.numel(), down, x.dtype, tile)
        rows.append(list(row) + [0] * (_ROW - len(row)))
        tiles.append(t)
        blocks.append(blk)
    plan = _plan_tensor(tuple(map(tuple, rows)), x.device)
    (bo_h, bt_h, bx_h, bs_h), (bo_w, bt_w, bx_w, bs_w) = blocks
    sig = s if s is not None else x
    hi, lo = zip(*(split_float(v) for v in (gain, slope, clamp if clamp is not None else 0.0)))
    tf32 = _use_tf32(x)  # half inputs, and float32 where cuDNN convolutions may use TF32
    t1, t2 = (gu, gd) if mode != BACKWARD else (gd, gu)
    _filtered_lrelu_kernel[(n * c, tiles[0] * tiles[1])](
        x, sig, b if b is not None else x, gu, t1, t2, out, plan, c, tiles[1],
        *x.stride(), *sig.stride(), *out.stride(), *hi, *lo,
        MODE=mode, HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None, IS_F64=x.dtype == torch.float64,
        TF32=tf32 and not is_interpreted(), ROUND_TF32=tf32 and not is_interpreted(),
        BO_H=bo_h, BO_W=bo_w, BT_H=bt_h, BT_W=bt_w, BX_H=bx_h, BX_W=bx_w, BS_H=bs_h, BS_W=bs_w,
        num_warps=4 if x.dtype == torch.float64 else 8)
    return out


def filtered_lrelu_fwd(x, b, gu, gd, up, down, padding, gain, slope, clamp, out_hw, tile=None):
    """y = D clamp(lrelu(U (x + b)) * gain) (mode 0) for 1-d correlation taps gu (with up's gain)
    and gd; ``padding`` is (top, bottom, left, right), ``out_hw`` the output size; ``tile`` forces
    the intermediate tile size (a power of 2, at least 16)."""
    return _launch(FORWARD, x, None, b, gu, gd, up, down, padding, gain, slope, clamp, out_hw, tile)


def filtered_lrelu_lin(v, x, b, gu, gd, up, down, padding, gain, slope, clamp, out_hw, tile=None):
    """D (a'(U (x + b)) * (U v)) (mode 1): the forward linearised at x, applied to v."""
    return _launch(LINEARISED, x, v, b, gu, gd, up, down, padding, gain, slope, clamp, out_hw, tile)


def filtered_lrelu_bwd(dy, x, b, gu, gd, up, down, padding, gain, slope, clamp, tile=None):
    """U^T (a'(U (x + b)) * (D^T dy)) (mode 2): the input gradient for dy."""
    return _launch(BACKWARD, x, dy, b, gu, gd, up, down, padding, gain, slope, clamp, None, tile)
