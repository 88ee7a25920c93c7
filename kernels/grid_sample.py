"""grid_sample (bilinear, zero padding, align_corners=False): forward and backward.

For output pixel p of image n with grid (gx, gy) in [-1, 1]:

    ix = ((gx + 1) W - 1) / 2,  x0 = floor(ix),  fx = ix - x0     (the same along y with H)
    y[c, p] = sum over the corners (x0 + a, y0 + b), a, b in {0, 1}, inside the image, of
              wx_a wy_b x[c, y0 + b, x0 + a],   wx_0 = 1 - fx, wx_1 = fx

Backward, for g = dL/dy:
    dx[c, corner] += g[c, p] wx_a wy_b                                       (atomic adds)
    dgx[p] = W / 2 * sum_c g[c, p] ((x01 - x00) wy_0 + (x11 - x10) wy_1)     (x_ba = x[c, y0 + b, x0 + a])
    dgy[p] = H / 2 * sum_c g[c, p] ((x10 - x00) wx_0 + (x11 - x01) wx_1)

One program takes BLOCK_P output pixels of one image and walks the channels in BLOCK_C
chunks, so the corner weights are computed once and the grid gradient is a sum in registers
(no atomics); dx accumulates in float32 (float64 for float64) with atomic adds. Coordinates
are clamped to [-2, size + 1] before the floor (beyond it every corner is outside anyway), so
no integer conversion overflows. Tensors are read through their strides.
"""
import torch
import triton
import triton.language as tl

from .common import check_launch_dtype, is_channels_last, is_interpreted

__all__ = ["grid_sample_fwd", "grid_sample_bwd"]


@triton.jit
def _corners(g_ptr, n, p, P, WO, H, W, sg_n, sg_h, sg_w, sg_k, IS_F64: tl.constexpr):
    """Sampling position of the output pixels p: (x0, y0, fx, fy, mask of p), fractions in the
    compute precision."""
    p_ok = p < P
    g_base = g_ptr + n * sg_n + (p // WO) * sg_h + (p % WO) * sg_w
    gx = tl.load(g_base, mask=p_ok, other=0.0)
    gy = tl.load(g_base + sg_k, mask=p_ok, other=0.0)
    if IS_F64:
        gx = gx.to(tl.float64)
        gy = gy.to(tl.float64)
    else:
        gx = gx.to(tl.float32)
        gy = gy.to(tl.float32)
    ix = tl.minimum(tl.maximum(((gx + 1) * W - 1) * 0.5, -2.0), W + 1.0)
    iy = tl.minimum(tl.maximum(((gy + 1) * H - 1) * 0.5, -2.0), H + 1.0)
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    return x0f.to(tl.int32), y0f.to(tl.int32), ix - x0f, iy - y0f, p_ok


@triton.jit
def _grid_sample_fwd_kernel(x_ptr, g_ptr, y_ptr, C, H, W, P, WO,
                            sx_n, sx_c, sx_h, sx_w, sg_n, sg_h, sg_w, sg_k, sy_n, sy_c, sy_h, sy_w,
                            IS_F64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    x0, y0, fx, fy, p_ok = _corners(g_ptr, n, p, P, WO, H, W, sg_n, sg_h, sg_w, sg_k, IS_F64)
    x1 = x0 + 1
    y1 = y0 + 1
    ok00 = p_ok & (x0 >= 0) & (x0 < W) & (y0 >= 0) & (y0 < H)
    ok01 = p_ok & (x1 >= 0) & (x1 < W) & (y0 >= 0) & (y0 < H)
    ok10 = p_ok & (x0 >= 0) & (x0 < W) & (y1 >= 0) & (y1 < H)
    ok11 = p_ok & (x1 >= 0) & (x1 < W) & (y1 >= 0) & (y1 < H)
    o00 = (y0 * sx_h + x0 * sx_w)[:, None]
    o01 = (y0 * sx_h + x1 * sx_w)[:, None]
    o10 = (y1 * sx_h + x0 * sx_w)[:, None]
    o11 = (y1 * sx_h + x1 * sx_w)[:, None]
    fx = fx[:, None]
    fy = fy[:, None]
    y_rows = y_ptr + n * sy_n + ((p // WO) * sy_h + (p % WO) * sy_w)[:, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = (c < C)[None, :]
        x_c = x_ptr + n * sx_n + (c * sx_c)[None, :]
        v00 = tl.load(x_c + o00, mask=ok00[:, None] & c_ok, other=0.0).to(fx.dtype)
        v01 = tl.load(x_c + o01, mask=ok01[:, None] & c_ok, other=0.0).to(fx.dtype)
        v10 = tl.load(x_c + o10, mask=ok10[:, None] & c_ok, other=0.0).to(fx.dtype)
        v11 = tl.load(x_c + o11, mask=ok11[:, None] & c_ok, other=0.0).to(fx.dtype)
        out = (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy
        tl.store(y_rows + (c * sy_c)[None, :], out.to(y_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok)


@triton.jit
def _grid_sample_bwd_kernel(dy_ptr, x_ptr, g_ptr, dx_ptr, dg_ptr, C, H, W, P, WO,
                            sd_n, sd_c, sd_h, sd_w, sx_n, sx_c, sx_h, sx_w, sg_n, sg_h, sg_w, sg_k,
                            sdx_n, sdx_c, sdx_h, sdx_w,
                            NEED_DX: tl.constexpr, NEED_DGRID: tl.constexpr, IS_F64: tl.constexpr,
                            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    x0, y0, fx, fy, p_ok = _corners(g_ptr, n, p, P, WO, H, W, sg_n, sg_h, sg_w, sg_k, IS_F64)
    x1 = x0 + 1
    y1 = y0 + 1
    ok00 = (p_ok & (x0 >= 0) & (x0 < W) & (y0 >= 0) & (y0 < H))[:, None]
    ok01 = (p_ok & (x1 >= 0) & (x1 < W) & (y0 >= 0) & (y0 < H))[:, None]
    ok10 = (p_ok & (x0 >= 0) & (x0 < W) & (y1 >= 0) & (y1 < H))[:, None]
    ok11 = (p_ok & (x1 >= 0) & (x1 < W) & (y1 >= 0) & (y1 < H))[:, None]
    fx = fx[:, None]
    fy = fy[:, None]
    d_rows = dy_ptr + n * sd_n + ((p // WO) * sd_h + (p % WO) * sd_w)[:, None]
    dix = tl.zeros((BLOCK_P,), dtype=fx.dtype)
    diy = tl.zeros((BLOCK_P,), dtype=fx.dtype)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = (c < C)[None, :]
        g = tl.load(d_rows + (c * sd_c)[None, :], mask=p_ok[:, None] & c_ok, other=0.0).to(fx.dtype)
        if NEED_DX:
            dx_c = dx_ptr + n * sdx_n + (c * sdx_c)[None, :]
            tl.atomic_add(dx_c + (y0 * sdx_h + x0 * sdx_w)[:, None], g * (1 - fx) * (1 - fy), mask=ok00 & c_ok)
            tl.atomic_add(dx_c + (y0 * sdx_h + x1 * sdx_w)[:, None], g * fx * (1 - fy), mask=ok01 & c_ok)
            tl.atomic_add(dx_c + (y1 * sdx_h + x0 * sdx_w)[:, None], g * (1 - fx) * fy, mask=ok10 & c_ok)
            tl.atomic_add(dx_c + (y1 * sdx_h + x1 * sdx_w)[:, None], g * fx * fy, mask=ok11 & c_ok)
        if NEED_DGRID:
            x_c = x_ptr + n * sx_n + (c * sx_c)[None, :]
            v00 = tl.load(x_c + (y0 * sx_h + x0 * sx_w)[:, None], mask=ok00 & c_ok, other=0.0).to(fx.dtype)
            v01 = tl.load(x_c + (y0 * sx_h + x1 * sx_w)[:, None], mask=ok01 & c_ok, other=0.0).to(fx.dtype)
            v10 = tl.load(x_c + (y1 * sx_h + x0 * sx_w)[:, None], mask=ok10 & c_ok, other=0.0).to(fx.dtype)
            v11 = tl.load(x_c + (y1 * sx_h + x1 * sx_w)[:, None], mask=ok11 & c_ok, other=0.0).to(fx.dtype)
            dix += tl.sum(g * ((v01 - v00) * (1 - fy) + (v11 - v10) * fy), axis=1)
            diy += tl.sum(g * ((v10 - v00) * (1 - fx) + (v11 - v01) * fx), axis=1)
    if NEED_DGRID:  # dg is a dense [N, HO, WO, 2] buffer in the compute precision
        dg = dg_ptr + (n * P + p) * 2
        tl.store(dg, dix * (W * 0.5), mask=p_ok)
        tl.store(dg + 1, diy * (H * 0.5), mask=p_ok)


# ----------------------------------------------------------------------------- launchers

def _blocks(p: int, c: int):
    np2 = triton.next_power_of_2
    block_c = min(np2(c), 64 if not is_interpreted() else 256)
    block_p = min(np2(p), max(16, (4096 if is_interpreted() else 1024) // block_c))
    return block_p, block_c


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def grid_sample_fwd(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """y [N, C, HO, WO] = bilinear samples of x [N, C, H, W] at grid [N, HO, WO, 2] (x, y in
    [-1, 1], align_corners=False, zeros outside); channels_last when x is."""
    check_launch_dtype(x, grid)
    n, c, h, w = x.shape
    ho, wo = grid.shape[1], grid.shape[2]
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    y = torch.empty((n, c, ho, wo), dtype=x.dtype, device=x.device, memory_format=fmt)
    if y.numel() == 0:
        return y
    block_p, block_c = _blocks(ho * wo, c)
    _grid_sample_fwd_kernel[(triton.cdiv(ho * wo, block_p), n)](
        x, grid, y, c, h, w, ho * wo, wo, *x.stride(), *grid.stride(), *y.stride(),
        IS_F64=x.dtype == torch.float64, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return y


def grid_sample_bwd(dy: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, need_dx: bool, need_dgrid: bool):
    """(dx, dgrid) of grid_sample for dy = dL/dy; each None unless asked for. dx has x's
    dtype and strides (``torch.empty_like``), dgrid is dense with grid's dtype."""
    check_launch_dtype(x, grid, dy)
    n, c, h, w = x.shape
    ho, wo = grid.shape[1], grid.shape[2]
    acc = _acc_dtype(x)
    dx = torch.zeros_like(x, dtype=acc) if need_dx else None
    dg = torch.zeros((n, ho, wo, 2), dtype=acc, device=x.device) if need_dgrid else None
    if dy.numel() and (need_dx or need_dgrid):
        block_p, block_c = _blocks(ho * wo, c)
        _grid_sample_bwd_kernel[(triton.cdiv(ho * wo, block_p), n)](
            dy, x, grid, dx if need_dx else x, dg if need_dgrid else x, c, h, w, ho * wo, wo,
            *dy.stride(), *x.stride(), *grid.stride(), *(dx.stride() if need_dx else (0, 0, 0, 0)),
            NEED_DX=need_dx, NEED_DGRID=need_dgrid, IS_F64=x.dtype == torch.float64,
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return (dx.to(x.dtype) if need_dx else None), (dg.to(grid.dtype) if need_dgrid else None)
