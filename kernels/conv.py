"""Fused convolution / transposed convolution + bias + activation + gain + clamp (forward).

One implicit-GEMM kernel serves both ops (``TRANSPOSED`` is a compile-time switch):

    GEMM view:  M = output pixels (N * OH * OW), N = output channels of one group,
                K = taps x input channels of one group (KH * KW * Cin/groups)
    epilogue:   z = acc (fp32, fp64 for float64 inputs), y = clamp(act(z + b) * gain)

The A operand (the im2col matrix of x) is never materialised: each K block gathers its
input pixels straight from x through x's strides, so NCHW and channels_last (NHWC) inputs
both run without a copy; NHWC makes the channel (K) axis contiguous, the fast layout.
The weight is read through its strides too; on the GPU a weight in torch's default layout
is first copied to channels_last (small), so that its tile loads run along a contiguous axis.

Transposed convolution uses *phase decomposition* (no zero-inserted input): output pixels
are split by their phase (oh % stride_h, ow % stride_w) and each phase is one dense
sub-problem whose taps are only those kh with (phase + pad - kh * dil) divisible by the
stride; for them ih = oh // stride + (phase + pad - kh * dil) / stride exactly. Grid axis 1
runs over (group, phase); the taps of a phase are found in the kernel (a short scalar
loop), so the launch needs no host-side table (and stays CUDA-graph capturable).

K is walked in one of two ways (compile-time ``TAP_LOOP``):
- tap loop: for each tap (kh, kw), compute the row offsets and masks once, then walk the
  input channels in BLOCK_K chunks; used on the GPU when Cin/groups >= 16;
- flattened: K is one range decomposed per element into (tap, channel); no work is lost
  to channel padding when Cin/groups is small (RGB input layers), and under the
  interpreter it means fewer, larger steps.

Precision: fp16/bf16 inputs use tensor-core dots with fp32 accumulation. fp32 inputs use
tl.dot with ``input_precision="tf32"`` when ``TF32`` is set (the launcher follows
``torch.backends.cudnn.allow_tf32``, i.e. what F.conv2d itself does on CUDA, default on),
else "ieee"; tf32 operands are rounded to nearest first (``_round_tf32_rtne``: Triton may
truncate them, which doubles the error). The Triton interpreter computes dots exactly in fp32
whatever the flag.
Under the interpreter, fp16/bf16 tiles are converted to fp32 before the dot (its numpy
dot does not take bf16; bf16 x bf16 products are exact in fp32, as on tensor cores), and
bf16 outputs are rounded to nearest even explicitly (its fp32 -> bf16 cast truncates).
float64 (used by gradcheck only) takes an elementwise multiply + tl.sum path, since
tl.dot has no fp64 form on the GPU.

Offsets: the batch term (n * stride_n) is int64, so tensors over 2^31 elements index
correctly; per-image offsets stay int32 (one image is far below 2^31 elements).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .activation import ACT_IDS, act_clamp, act_fwd, scalar_arg
from .common import check_launch_dtype, is_channels_last, is_interpreted, split_float, vector
from .geometry import ConvGeom

__all__ = ["conv_act_fwd", "conv2d_act_fwd", "conv_transpose2d_act_fwd", "output_channels_last", "bn_partial_rows"]


@triton.jit
def _round_bf16_rtne(v):
    """fp32 -> the nearest bf16 value (ties to even), still as fp32, by integer rounding of the
    bits. Only for the interpreter, whose fp32 -> bf16 cast truncates (the GPU rounds to
    nearest even); after it the truncating cast is exact. NaN/Inf are not special-cased."""
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _round_tf32_rtne(v):
    """fp32 -> the nearest tf32 value (10 mantissa bits, ties to even), still as fp32; Inf/NaN
    unchanged. tl.dot's "tf32" mode may just drop the 13 low mantissa bits of fp32 operands
    (Triton documents this): a one-sided error about 2.6x that of the rounded conversion
    cuDNN's tf32 convolutions use, and above the tf32 test bound. Rounded here, the fused
    conv is as accurate as the vendor path the dispatcher may swap it for."""
    bits = v.to(tl.int32, bitcast=True)
    rounded = (bits + (0xFFF + ((bits >> 13) & 1))) & -8192
    special = (bits & 0x7F800000) == 0x7F800000
    return tl.where(special, bits, rounded).to(tl.float32, bitcast=True)


@triton.jit
def _accumulate(acc, a, b, IS_F64: tl.constexpr, UPCAST: tl.constexpr, ROUND_TF32: tl.constexpr,
                TF32: tl.constexpr):
    """acc + a @ b for one K step: float64 as multiply + sum (tl.dot has no float64), half inputs
    upcast when asked, float32 with TF32 (operands rounded to nearest first) or exact IEEE."""
    if IS_F64:
        acc += tl.sum(a[:, :, None].to(tl.float64) * b[None, :, :].to(tl.float64), axis=1)
    elif UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    elif ROUND_TF32:
        acc = tl.dot(_round_tf32_rtne(a), _round_tf32_rtne(b), acc, input_precision="tf32")
    elif TF32:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _conv_act_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, p_ptr, P_SPLIT, cnt_ptr, mean_ptr, m2_ptr, C_OUT,
        N, CIG, H, W, COG, OH, OW, OHP, OWP,
        sx_n, sx_c, sx_h, sx_w,
        sw_g, sw_o, sw_i, sw_h, sw_w,
        sy_n, sy_c, sy_h, sy_w,
        KH, KW, STR_H, STR_W, PAD_H, PAD_W, DIL_H, DIL_W, STEP_H, STEP_W,
        alpha, gain, clamp, alpha_lo, gain_lo, clamp_lo,
        TRANSPOSED: tl.constexpr, TAP_LOOP: tl.constexpr, ACT: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, STORE_Z: tl.constexpr,
        IS_F64: tl.constexpr, TF32: tl.constexpr, ROUND_TF32: tl.constexpr, UPCAST: tl.constexpr,
        RTNE_BF16: tl.constexpr, SPLIT_K: tl.constexpr, BN_STATS: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    pid_gp = tl.program_id(1)
    n_nblocks = (COG + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // n_nblocks
    pid_n = pid % n_nblocks

    # ---- which group (and, transposed, which output phase) this program works on
    if TRANSPOSED:
        n_phases = STR_H * STR_W
        g = pid_gp // n_phases
        phase = pid_gp % n_phases
        ph_h = phase // STR_W
        ph_w = phase % STR_W
    else:
        g = pid_gp
        ph_h = 0
        ph_w = 0

    # ---- rows: output pixels
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if TRANSPOSED:
        n = rm // (OHP * OWP)
        r = rm % (OHP * OWP)
        i = r // OWP
        j = r % OWP
        oh = ph_h + i * STR_H
        ow = ph_w + j * STR_W
        m_ok = (n < N) & (oh < OH) & (ow < OW)
        base_h = i  # ih = oh // STR_H + (ph + pad - kh * dil) / STR_H
        base_w = j
    else:
        n = rm // (OH * OW)
        r = rm % (OH * OW)
        oh = r // OW
        ow = r % OW
        m_ok = n < N
        base_h = oh * STR_H - PAD_H
        base_w = ow * STR_W - PAD_W
    n64 = n.to(tl.int64)
    x_rows = x_ptr + (n64 * sx_n + g * CIG * sx_c)  # [BLOCK_M] pointers

    # ---- columns: output channels of group g
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < COG
    w_base = w_ptr + g * sw_g

    # ---- taps of this phase (transposed): kh = kh0 + t * STEP_H, t < nkh
    if TRANSPOSED:
        kh0 = ph_h * 0
        nkh = ph_h * 0
        for qh in range(0, KH):
            ok_h = ((ph_h + PAD_H - qh * DIL_H + STR_H * KH * DIL_H) % STR_H) == 0
            kh0 = tl.where(ok_h & (nkh == 0), qh, kh0)
            nkh += ok_h.to(tl.int32)
        kw0 = ph_w * 0
        nkw = ph_w * 0
        for qw in range(0, KW):
            ok_w = ((ph_w + PAD_W - qw * DIL_W + STR_W * KW * DIL_W) % STR_W) == 0
            kw0 = tl.where(ok_w & (nkw == 0), qw, kw0)
            nkw += ok_w.to(tl.int32)
    else:
        kh0 = 0
        kw0 = 0
        nkh = KH
        nkw = KW

    if IS_F64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    rk = tl.arange(0, BLOCK_K)
    if TAP_LOOP:
        for th in range(0, nkh):
            kh = kh0 + th * STEP_H
            if TRANSPOSED:
                ih = base_h + (ph_h + PAD_H - kh * DIL_H) // STR_H
            else:
                ih = base_h + kh * DIL_H
            h_ok = m_ok & (ih >= 0) & (ih < H)
            for tw in range(0, nkw):
                kw = kw0 + tw * STEP_W
                if TRANSPOSED:
                    iw = base_w + (ph_w + PAD_W - kw * DIL_W) // STR_W
                else:
                    iw = base_w + kw * DIL_W
                row_ok = h_ok & (iw >= 0) & (iw < W)
                a_rows = x_rows + (ih * sx_h + iw * sx_w)
                w_tap = w_base + (kh * sw_h + kw * sw_w)
                for c0 in range(0, CIG, BLOCK_K):
                    c = c0 + rk
                    c_ok = c < CIG
                    a = tl.load(a_rows[:, None] + (c * sx_c)[None, :],
                                mask=row_ok[:, None] & c_ok[None, :], other=0.0)
                    b = tl.load(w_tap + (c * sw_i)[:, None] + (co * sw_o)[None, :],
                                mask=c_ok[:, None] & co_ok[None, :], other=0.0)
                    acc = _accumulate(acc, a, b, IS_F64, UPCAST, ROUND_TF32, TF32)
    else:
        K = nkh * nkw * CIG
        k_lo = 0
        k_hi = K
        if SPLIT_K > 1:  # this program's share of K (whole BLOCK_K steps); the sum runs in _split_k_epilogue
            k_chunk = ((K + BLOCK_K - 1) // BLOCK_K + SPLIT_K - 1) // SPLIT_K * BLOCK_K
            k_lo = tl.program_id(2) * k_chunk
            k_hi = tl.minimum(K, k_lo + k_chunk)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            k = k0 + rk
            k_ok = k < k_hi
            c = k % CIG
            t = k // CIG
            kh_v = kh0 + (t // nkw) * STEP_H
            kw_v = kw0 + (t % nkw) * STEP_W
            if TRANSPOSED:
                ih = base_h[:, None] + ((ph_h + PAD_H - kh_v * DIL_H) // STR_H)[None, :]
                iw = base_w[:, None] + ((ph_w + PAD_W - kw_v * DIL_W) // STR_W)[None, :]
            else:
                ih = base_h[:, None] + (kh_v * DIL_H)[None, :]
                iw = base_w[:, None] + (kw_v * DIL_W)[None, :]
            a_ok = (m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
            a = tl.load(x_rows[:, None] + (ih * sx_h + iw * sx_w + (c * sx_c)[None, :]), mask=a_ok, other=0.0)
            w_k = c * sw_i + kh_v * sw_h + kw_v * sw_w
            b = tl.load(w_base + w_k[:, None] + (co * sw_o)[None, :],
                        mask=k_ok[:, None] & co_ok[None, :], other=0.0)
            acc = _accumulate(acc, a, b, IS_F64, UPCAST, ROUND_TF32, TF32)

    # ---- epilogue on the accumulator: z = conv(x, w); y = clamp(act(z + b) * gain)
    out_ok = m_ok[:, None] & co_ok[None, :]
    chan = g * COG + co
    out_offs = (n64 * sy_n + oh * sy_h + ow * sy_w)[:, None] + (chan * sy_c)[None, :]
    if SPLIT_K > 1:  # a partial sum, in y's layout, in slice program_id(2) of the fp32 buffer
        tl.store(p_ptr + tl.program_id(2).to(tl.int64) * P_SPLIT + out_offs, acc, mask=out_ok)
    else:
        y = _epilogue(acc, b_ptr, y_ptr, z_ptr, out_offs, out_ok, chan[None, :], co_ok[None, :], alpha, gain, clamp,
                      alpha_lo, gain_lo, clamp_lo, ACT, HAS_BIAS, HAS_CLAMP, STORE_Z, IS_F64, RTNE_BF16)
        if BN_STATS > 0:  # normalisation partials of this tile, at [row, column] of [T, columns] buffers
            if BN_STATS == 1:  # batch norm: row pid_m * phases + phase, column chan
                tile, col, width = pid_m, chan, C_OUT
            else:  # instance norm (the tiles never straddle two images): per image, row tile * phases + phase
                tiles_per_image = (OHP * OWP) // BLOCK_M
                tile = pid_m % tiles_per_image
                col, width = (pid_m // tiles_per_image) * C_OUT + chan, N * C_OUT
            if TRANSPOSED:
                row = tile * (STR_H * STR_W) + phase
            else:
                row = tile
            _bn_partials(y.to(y_ptr.dtype.element_ty).to(acc.dtype), out_ok, row, col, co_ok, cnt_ptr, mean_ptr,
                         m2_ptr, width)


@triton.jit
def _bn_partials(y, ok, row, chan, chan_ok, cnt_ptr, mean_ptr, m2_ptr, C):
    """Per output channel of one tile, the count, mean and M2 = sum (y - mean)^2 of the stored y
    (``kernels.batch_norm_act``'s per-tile partials, merged by Chan's formula), at [row, chan] of
    [T, C] buffers."""
    ones = tl.where(ok, 1.0, 0.0).to(y.dtype)
    n = tl.sum(ones, axis=0)
    mean = tl.sum(tl.where(ok, y, 0.0), axis=0) / tl.maximum(n, 1.0)
    d = tl.where(ok, y - mean[None, :], 0.0)
    offs = row.to(tl.int64) * C + chan
    tl.store(cnt_ptr + offs, n, mask=chan_ok)
    tl.store(mean_ptr + offs, mean, mask=chan_ok)
    tl.store(m2_ptr + offs, tl.sum(d * d, axis=0), mask=chan_ok)


@triton.jit
def _epilogue(acc, b_ptr, y_ptr, z_ptr, out_offs, out_ok, chan, chan_ok, alpha, gain, clamp, alpha_lo, gain_lo,
              clamp_lo, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, STORE_Z: tl.constexpr,
              IS_F64: tl.constexpr, RTNE_BF16: tl.constexpr):
    """Store z = acc (when asked) and y = clamp(act(acc + b[chan]) * gain) at out_offs; returns y
    (in the accumulator's dtype, before the cast to y's)."""
    if STORE_Z:
        if RTNE_BF16:
            tl.store(z_ptr + out_offs, _round_bf16_rtne(acc).to(z_ptr.dtype.element_ty), mask=out_ok)
        else:
            tl.store(z_ptr + out_offs, acc.to(z_ptr.dtype.element_ty), mask=out_ok)
    alpha = scalar_arg(alpha, alpha_lo, IS_F64)  # float64: hi + lo pairs (common.split_float)
    gain = scalar_arg(gain, gain_lo, IS_F64)
    clamp = scalar_arg(clamp, clamp_lo, IS_F64)
    v = acc
    if HAS_BIAS:
        v += tl.load(b_ptr + chan, mask=chan_ok, other=0.0).to(acc.dtype)
    y = act_fwd(v, alpha, ACT) * gain
    if HAS_CLAMP:
        y = act_clamp(y, clamp)
    if RTNE_BF16:
        y = _round_bf16_rtne(y)
    tl.store(y_ptr + out_offs, y.to(y_ptr.dtype.element_ty), mask=out_ok)
    return y


@triton.jit
def _split_k_epilogue_kernel(p_ptr, b_ptr, y_ptr, z_ptr, TOTAL, C, INNER, alpha, gain, clamp, alpha_lo, gain_lo,
                             clamp_lo, SPLIT_K: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
                             HAS_CLAMP: tl.constexpr, STORE_Z: tl.constexpr, IS_F64: tl.constexpr,
                             RTNE_BF16: tl.constexpr, BLOCK: tl.constexpr):
    """acc = the sum of the SPLIT_K partial sums of each output element (y's memory order), then
    the conv epilogue; the channel of element o is (o // INNER) % C (INNER 1: channels_last)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    if IS_F64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(p_ptr + s * TOTAL + offs, mask=ok, other=0.0)
    _epilogue(acc, b_ptr, y_ptr, z_ptr, offs, ok, (offs // INNER) % C, ok, alpha, gain, clamp, alpha_lo, gain_lo,
              clamp_lo, ACT, HAS_BIAS, HAS_CLAMP, STORE_Z, IS_F64, RTNE_BF16)


# ----------------------------------------------------------------------------- launchers

def output_channels_last(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The memory format F.conv2d picks: channels_last when x or the weight is channels_last."""
    return is_channels_last(x) or is_channels_last(w)


SMS = 132  # an H200 (the lent GPU); a smaller GPU just runs more waves
# (BLOCK_M, BLOCK_N) from the largest down: the largest tile that still gives one CTA per SM wins
_TILES = ((128, 128), (128, 64), (64, 128), (64, 64), (64, 32), (64, 16))


def _blocks(m: int, cog: int, cig: int, k: int, dtype: torch.dtype, tap_loop: bool | None, grid1: int = 1):
    """(tap_loop, BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for one problem (``m`` rows of
    one phase and group, ``grid1`` groups x phases).

    GPU: the largest tile of ``_TILES`` that still launches a full wave of CTAs (fixed rules, so
    the choice is CUDA-graph safe and costs no tuning launches; the per-shape dispatcher compares
    the result against cuDNN anyway). No 128 x 128 tile for the transposed convolution (whose
    index math needs the registers): no spills (``fastgan bench --static`` checks it).
    Interpreter: few, large programs (each program is one numpy evaluation).
    """
    np2 = triton.next_power_of_2
    if is_interpreted():
        if tap_loop is None:
            tap_loop = False
        block_n = min(max(16, np2(cog)), 128)
        block_k = min(max(16, np2(cig if tap_loop else k)), 128)
        block_m = min(max(16, np2(m)), 1024)
        if dtype == torch.float64:  # the fp64 path materialises a [BM, BK, BN] product
            while block_m * block_k * block_n > (1 << 20) and block_m > 16:  # triton.TRITON_MAX_TENSOR_NUMEL
                block_m //= 2
        return tap_loop, block_m, block_n, block_k, 4, 1
    if tap_loop is None:
        tap_loop = cig >= 16
    if dtype == torch.float64:
        return tap_loop, 32, 16, 16, 4, 1
    half = dtype in (torch.float16, torch.bfloat16)
    for block_m, block_n in _TILES:
        if grid1 > 1 and block_m * block_n > 8192:  # transposed (phases) or grouped: 64 x 128 at most
            continue
        block_n = min(block_n, max(16, np2(cog)))
        if triton.cdiv(m, block_m) * triton.cdiv(cog, block_n) * grid1 >= SMS:
            break
    # BLOCK_K 32 for every dtype and 8 warps from 64 x 64 up: bf16 with BLOCK_K 64 spilled up to
    # 600 bytes at 255 registers (``fastgan bench --static``); these spill nothing
    block_k = min(max(16, np2(cig if tap_loop else k)), 32)
    num_warps = 8 if block_m * block_n >= 64 * 64 else 4
    num_stages = 3 if half else 2
    return tap_loop, block_m, block_n, block_k, num_warps, num_stages


def _use_tf32(x: torch.Tensor) -> bool:
    """The dot's input_precision flag: "tf32" (Triton's default, a no-op for fp16/bf16) for half
    inputs, and for fp32 when cuDNN convolutions may use tf32; "ieee" otherwise."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return True
    return x.dtype == torch.float32 and x.is_cuda and bool(torch.backends.cudnn.allow_tf32)


def _check_out(t, shape, like, name):
    if t is None:
        return
    if tuple(t.shape) != tuple(shape) or t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{name} must have shape {tuple(shape)}, dtype {like.dtype} and device "
                         f"{like.device}; got {tuple(t.shape)}, {t.dtype}, {t.device}")


def _split_k(ctas: int, k: int, block_k: int) -> int:
    """How many CTAs share one output tile's K when the tiles alone fill under half a wave
    (the critic's last layer, 512 -> 1: one tile, 128 serial K steps): enough for a wave, at
    least 4 K steps each."""
    if ctas * 2 >= SMS:
        return 1
    return max(1, min(triton.cdiv(SMS, ctas), triton.cdiv(k, block_k) // 4, 32))


class _Plan:
    """The launch geometry of one convolution: output shape and format, the implicit GEMM's
    rows (output pixels of one phase and group), the tiling and the split-K factor."""

    def __init__(self, x, w, geom: ConvGeom, tap_loop=None, split_k=None, dense_y: bool = True,
                 instance: bool = False):
        (sh, sw), (dh, dw), groups = geom.stride, geom.dilation, geom.groups
        n_, c_in, h, w_in = x.shape
        kh, kw = w.shape[2], w.shape[3]
        self.oh, self.ow = geom.output_hw((h, w_in), (kh, kw))
        if geom.transposed:
            self.cig, self.cog = c_in // groups, w.shape[1]
            self.ohp, self.owp = triton.cdiv(self.oh, sh), triton.cdiv(self.ow, sw)
            self.step = (sh // math.gcd(sh, dh), sw // math.gcd(sw, dw))
            self.phases = sh * sw
        else:
            self.cig, self.cog = w.shape[1], w.shape[0] // groups
            self.ohp, self.owp = self.oh, self.ow
            self.step = (1, 1)
            self.phases = 1
        self.rows, self.grid1 = n_ * self.ohp * self.owp, groups * self.phases
        self.cout = self.cog * groups
        self.shape = (n_, self.cout, self.oh, self.ow)
        self.k_total = kh * kw * self.cig
        self.tap, self.bm, self.bn, self.bk, self.warps, self.stages = _blocks(
            self.rows, self.cog, self.cig, self.k_total, x.dtype, tap_loop, self.grid1)
        self.instance = instance
        if instance:  # row tiles within one image: BLOCK_M divides the pixels of one image (and phase)
            while (self.ohp * self.owp) % self.bm and self.bm > 16:
                self.bm //= 2
        self.ctas = triton.cdiv(self.rows, self.bm) * triton.cdiv(self.cog, self.bn)
        if not dense_y:  # (a given y of other strides: the split epilogue walks dense memory)
            split_k = 1
        elif split_k is None:
            split_k = 1 if is_interpreted() else _split_k(self.ctas * self.grid1, self.k_total, self.bk)
        self.split_k = split_k
        if split_k > 1:
            self.tap = False  # the flattened K walk

    def bn_partial_rows(self) -> int:
        """Rows T of the [T, Cout] batch-norm partials the epilogue writes (one per row tile and
        phase), or of the [T, N * Cout] instance-norm ones (one per row tile of an image and
        phase); 0 when it writes none (split-K: no program holds a finished tile; instance: no
        tile of 16 rows or more divides an image)."""
        if self.split_k > 1:
            return 0
        if self.instance:
            per_image = self.ohp * self.owp
            return 0 if per_image % self.bm else per_image // self.bm * self.phases
        return triton.cdiv(self.rows, self.bm) * self.phases


def bn_partial_rows(x: torch.Tensor, w: torch.Tensor, geom: ConvGeom, instance: bool = False) -> int:
    """The rows T of the normalisation partials (count, mean, M2, each [T, Cout] in float32,
    float64 for float64; [T, N * Cout] with ``instance``: one column per image and channel) that
    ``conv_act_fwd(..., bn_partials=, instance=)`` fills for this convolution with a linear
    epilogue; 0 when this launch cannot (then run ``bn_stats`` on the output)."""
    if x.numel() == 0 or w.numel() == 0:
        return 0
    return _Plan(x, w, geom, instance=instance).bn_partial_rows()


def conv_act_fwd(x, w, b, geom: ConvGeom, act="linear", alpha=0.0, gain=1.0, clamp=None, *, store_z=False,
                 y=None, z=None, tap_loop=None, split_k=None, bn_partials=None, instance=False):
    """y = clamp(act(conv(x, w) + b) * gain) for the convolution ``geom`` describes (conv2d or
    conv_transpose2d); returns ``(y, z)`` with z = conv(x, w) (pre-bias) when ``store_z`` else None.

    x [N, Cin, H, W], w in torch's layout for the op ([Cout, Cin/g, KH, KW] or [Cin, Cout/g, KH, KW]),
    one float dtype, any strides. y (and z) are channels_last when x or w is, else NCHW (as
    F.conv2d). ``y``/``z`` may be given as preallocated outputs of the right shape (any strides;
    z's must equal y's). ``tap_loop`` forces the K-walk and ``split_k`` the number of CTAs sharing
    a tile's K (None: heuristics; split-K sums float32 partials in a second, elementwise kernel).
    ``bn_partials``: (count, mean, m2) buffers of shape [``bn_partial_rows``, Cout] that the
    epilogue fills with each tile's batch-norm partials of the stored y (a linear epilogue
    without clamp only: the statistics of the convolution's output); with ``instance`` they are
    per image and channel ([``bn_partial_rows(..., instance=True)``, N * Cout]).
    Arguments are assumed valid (the functional layer checks them).
    """
    check_launch_dtype(x, w, b)
    if act not in ACT_IDS:
        raise ValueError(f"unknown activation {act!r}")
    if bn_partials is not None and (act != "linear" or gain != 1.0 or clamp is not None):
        raise ValueError("bn_partials are the statistics of a linear epilogue's output (act 'linear', gain 1, "
                         "no clamp)")
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    transposed = geom.transposed
    n_, c_in, h, w_in = x.shape
    kh, kw = w.shape[2], w.shape[3]
    fmt = torch.channels_last if output_channels_last(x, w) else torch.contiguous_format
    plan = _Plan(x, w, geom, tap_loop, 1 if bn_partials is not None else split_k,
                 dense_y=y is None or y.is_contiguous(memory_format=fmt), instance=instance and bn_partials is not None)
    shape = plan.shape
    _check_out(y, shape, x, "y")
    _check_out(z, shape, x, "z")
    if bn_partials is not None:
        want = (plan.bn_partial_rows(), plan.cout * (n_ if instance else 1))
        if not want[0] or any(tuple(p.shape) != want or not p.is_contiguous() for p in bn_partials):
            raise ValueError(f"bn_partials must be three contiguous {want} buffers (bn_partial_rows)")
    if y is None:
        y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    if store_z:
        if z is None:
            z = torch.empty_like(y)
        elif z.stride() != y.stride():
            raise ValueError("z must have the same strides as y")
    else:
        z = None
    if y.numel() == 0:
        return y, z
    b = vector(b)
    if not is_interpreted() and w.numel() > 0 and w.stride(1) != 1 and w.stride(0) != 1:
        # On the GPU, read the weight tile along a contiguous axis: torch's default layout
        # has neither the reduction (Cin) nor the output-channel axis contiguous. The
        # channels_last copy ([O, kH, kW, I] in memory) makes Cin (conv) or Cout/groups
        # (transposed) contiguous; weights are small, so the copy costs little.
        w = w.contiguous(memory_format=torch.channels_last)
    if x.numel() == 0 or w.numel() == 0:
        # empty reduction (no input pixels or channels): every load is masked, z = 0;
        # give the kernel a real (never read) pointer instead of an empty allocation
        dummy = torch.zeros(1, dtype=x.dtype, device=x.device)
        x = dummy.as_strided(x.shape, [0] * 4) if x.numel() == 0 else x
        w = dummy.as_strided(w.shape, [0] * 4) if w.numel() == 0 else w
    cig, cog = plan.cig, plan.cog
    if transposed:  # weight [Cin, Cout/g, KH, KW]: group g starts at row g * Cin/g
        sw_g, sw_o, sw_i = cig * w.stride(0), w.stride(1), w.stride(0)
    else:  # weight [Cout, Cin/g, KH, KW]: group g starts at row g * Cout/g
        sw_g, sw_o, sw_i = cog * w.stride(0), w.stride(0), w.stride(1)
    split_k = plan.split_k
    partial = y
    if split_k > 1:  # float32 partial sums in y's layout, one slice per K share
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        partial = torch.empty_strided((split_k, *y.shape), (y.numel(), *y.stride()), dtype=acc_dtype, device=y.device)
    grid = (plan.ctas, plan.grid1, split_k)
    # alpha, gain, clamp as float32 hi/lo pairs: exact float64 scalars (see common.split_float)
    hi, lo = zip(*(split_float(v) for v in (alpha, gain, clamp if clamp is not None else 0.0)))
    epilogue_flags = dict(ACT=ACT_IDS[act], HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None,
                          STORE_Z=z is not None, IS_F64=x.dtype == torch.float64,
                          RTNE_BF16=is_interpreted() and x.dtype == torch.bfloat16)
    cnt, mean, m2 = bn_partials if bn_partials is not None else (y, y, y)
    _conv_act_kernel[grid](
        x, w, b if b is not None else w, y, z if z is not None else y, partial, y.numel(), cnt, mean, m2, plan.cout,
        n_, cig, h, w_in, cog, plan.oh, plan.ow, plan.ohp, plan.owp,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        sw_g, sw_o, sw_i, w.stride(2), w.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        kh, kw, sh, sw, ph, pw, dh, dw, *plan.step,
        *hi, *lo,
        TRANSPOSED=transposed, TAP_LOOP=plan.tap, TF32=_use_tf32(x),
        ROUND_TF32=_use_tf32(x) and x.dtype == torch.float32,
        UPCAST=is_interpreted() and x.dtype in (torch.float16, torch.bfloat16), SPLIT_K=split_k,
        BN_STATS=0 if bn_partials is None else 2 if instance else 1, BLOCK_M=plan.bm, BLOCK_N=plan.bn,
        BLOCK_K=plan.bk, num_warps=plan.warps,
        num_stages=plan.stages, **epilogue_flags)
    if split_k > 1:
        cl = output_channels_last(x, w)
        block = 1024
        _split_k_epilogue_kernel[(triton.cdiv(y.numel(), block),)](
            partial, b if b is not None else w, y, z if z is not None else y, y.numel(), plan.cout,
            1 if cl else plan.oh * plan.ow, *hi, *lo, SPLIT_K=split_k, BLOCK=block, num_warps=4, **epilogue_flags)
    return y, z


def conv2d_act_fwd(x, w, b, stride=1, padding=0, dilation=1, groups=1, act="linear", alpha=0.0,
                   gain=1.0, clamp=None, *, store_z=False, y=None, z=None, tap_loop=None, split_k=None):
    """:func:`conv_act_fwd` with F.conv2d's arguments."""
    return conv_act_fwd(x, w, b, ConvGeom.of(False, stride, padding, dilation, groups), act, alpha, gain, clamp,
                        store_z=store_z, y=y, z=z, tap_loop=tap_loop, split_k=split_k)


def conv_transpose2d_act_fwd(x, w, b, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                             act="linear", alpha=0.0, gain=1.0, clamp=None, *, store_z=False, y=None,
                             z=None, tap_loop=None, split_k=None):
    """:func:`conv_act_fwd` with F.conv_transpose2d's arguments (phase-decomposed: no
    zero-inserted input is built)."""
    return conv_act_fwd(x, w, b, ConvGeom.of(True, stride, padding, dilation, groups, output_padding), act,
                        alpha, gain, clamp, store_z=store_z, y=y, z=z, tap_loop=tap_loop, split_k=split_k)
