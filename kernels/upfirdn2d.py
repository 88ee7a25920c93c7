"""upfirdn2d: zero-insertion upsampling, pad/crop, 2-D FIR filter and decimation in one pass.

Per channel, with ``taps`` the correlation taps (the filter already flipped and scaled):

    y[oy, ox] = sum_{ty, tx} taps[ty, tx] * u[oy * down_h + ty - pad_t, ox * down_w + tx - pad_l]

where u is x with ``up - 1`` zeros after every pixel (u[i * up] = x[i], zero elsewhere and
outside the image). Only the taps with ``oy * down_h + ty - pad_t`` divisible by up_h reach a
pixel; they are ``ty = ry + j * up_h`` with ``ry = (pad_t - oy * down_h) mod up_h``, so each
output loops over ceil(fh / up_h) * ceil(fw / up_w) taps and no zero is ever read. Negative
padding (cropping) needs nothing special: an output in range never reaches a cropped pixel.

One program computes a [BLOCK_C, BLOCK_H, BLOCK_W] block of one image's output; x and y are
addressed through their strides (NCHW and channels_last run without a copy; the wide tile
axis follows the contiguous one). Accumulation is float32 (float64 for float64). Batch
offsets are int64; the batch is grid axis 2 (at most 65535 images a launch).
"""
import torch
import triton
import triton.language as tl

from .common import check_launch_dtype, is_channels_last, is_interpreted
from .geometry import FirGeom

__all__ = ["upfirdn2d_fwd"]


@triton.jit
def _upfirdn2d_kernel(x_ptr, f_ptr, y_ptr, C, H, W, OH, OW,
                      sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
                      FH, FW, UP_H, UP_W, DOWN_H, DOWN_W, PAD_T, PAD_L, PHASE_T, PHASE_L, NTH, NTW,
                      IS_F64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)
    n_wb = (OW + BLOCK_W - 1) // BLOCK_W
    oy = (pid // n_wb) * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = (pid % n_wb) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2).to(tl.int64)
    c_ok = (c < C)[:, None, None]
    # first live tap of each output (PHASE_* = pad mod up >= 0, so every operand of % is >= 0)
    ay = oy * DOWN_H - PAD_T
    ry = (PHASE_T + UP_H - (oy * DOWN_H) % UP_H) % UP_H
    ax = ox * DOWN_W - PAD_L
    rx = (PHASE_L + UP_W - (ox * DOWN_W) % UP_W) % UP_W
    if IS_F64:
        acc = tl.zeros((BLOCK_C, BLOCK_H, BLOCK_W), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_C, BLOCK_H, BLOCK_W), dtype=tl.float32)
    x_plane = x_ptr + n * sx_n + (c * sx_c)[:, None, None]
    for i in range(0, NTW):
        tx = rx + i * UP_W
        ix = (ax + tx) // UP_W  # exact: ax + tx is a multiple of UP_W
        ok_x = (tx < FW) & (ix >= 0) & (ix < W) & (ox < OW)
        for j in range(0, NTH):
            ty = ry + j * UP_H
            iy = (ay + ty) // UP_H
            ok = ((ty < FH) & (iy >= 0) & (iy < H) & (oy < OH))[:, None] & ok_x[None, :]
            tap = tl.load(f_ptr + (ty * FW)[:, None] + tx[None, :], mask=ok, other=0.0).to(acc.dtype)
            v = tl.load(x_plane + (iy * sx_h)[None, :, None] + (ix * sx_w)[None, None, :], mask=c_ok & ok[None],
                        other=0.0)
            acc += v.to(acc.dtype) * tap[None]
    out = (y_ptr + n * sy_n + (c * sy_c)[:, None, None] + (oy * sy_h)[None, :, None]
           + (ox * sy_w)[None, None, :])
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=c_ok & ((oy < OH)[:, None] & (ox < OW)[None, :])[None])


def _blocks(c: int, oh: int, ow: int, channels_last: bool):
    """(BLOCK_C, BLOCK_H, BLOCK_W, num_warps). GPU: about 2048 outputs a program, the contiguous
    axis widest; interpreter: one program per image where it fits (each program is one numpy pass)."""
    np2 = triton.next_power_of_2
    if is_interpreted():
        block_w = min(np2(ow), 64)
        block_c = min(np2(c), 32)
        return block_c, max(1, min(np2(oh), 16384 // (block_c * block_w))), block_w, 4
    if channels_last:
        block_c = min(np2(c), 64)
        block_w = min(np2(ow), max(1, 256 // block_c))
    else:
        block_c, block_w = 1, min(np2(ow), 128)
    block_h = max(1, min(np2(oh), 2048 // (block_c * block_w)))
    return block_c, block_h, block_w, 8 if block_c * block_h * block_w >= 2048 else 4


def upfirdn2d_fwd(x: torch.Tensor, taps: torch.Tensor, geom: FirGeom) -> torch.Tensor:
    """y = upfirdn2d of x [N, C, H, W] (any strides) with the 2-D correlation taps ``taps``
    [fh, fw] (read in the compute precision) and ``geom``; y is channels_last when x is."""
    check_launch_dtype(x)
    if taps.dim() != 2:
        raise ValueError(f"taps must be 2-d [fh, fw], got shape {tuple(taps.shape)}")
    n, c, h, w = x.shape
    fh, fw = taps.shape
    oh, ow = geom.output_hw((h, w), (fh, fw))
    cl = is_channels_last(x)
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last if cl else torch.contiguous_format)
    if y.numel() == 0:
        return y
    if x.numel() == 0:
        return y.zero_()
    taps = taps.to(device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    (uh, uw), (dh, dw), (pt, _, pl, _) = geom.up, geom.down, geom.padding
    block_c, block_h, block_w, warps = _blocks(c, oh, ow, cl)
    grid = (triton.cdiv(oh, block_h) * triton.cdiv(ow, block_w), triton.cdiv(c, block_c), n)
    _upfirdn2d_kernel[grid](
        x, taps, y, c, h, w, oh, ow, *x.stride(), *y.stride(),
        fh, fw, uh, uw, dh, dw, pt, pl, pt % uh, pl % uw, triton.cdiv(fh, uh), triton.cdiv(fw, uw),
        IS_F64=x.dtype == torch.float64, BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w,
        num_warps=warps)
    return y
