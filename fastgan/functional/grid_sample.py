"""grid_sample: bilinear sampling with zero padding and align_corners=False (the mode StyleGAN2-ADA's
augmentation uses), with second-order gradients between the input and the output.

=================  ======================================  =========================================
op                 computes                                its backward
=================  ======================================  =========================================
grid_sample        y = sample(input at grid)               grid_sample_backward
grid_sample_       d_input = sample^T(dy), d_grid          d/d(dy) of d_input: grid_sample(g, grid);
backward           (each only when asked for)              d/d(input) of d_input is zero; a second
                                                           order through d_grid or w.r.t. the grid
                                                           raises
=================  ======================================  =========================================

d_input is linear in dy and does not depend on the input, so the R1 penalty of a
discriminator behind the augmentation (a gradient with respect to the input, then its
gradient with respect to the parameters) needs exactly the first row of the second order;
the rest is refused with a clear error instead of a silent zero. (torch's own grid_sample
passes gradgradcheck in input and grid on torch 2.13's CPU build.) The eager backend runs
``_grid_sample_ref`` (gathers, any order).
"""
import torch
from torch import Tensor

from .. import backend as _backend
from ..kernels.common import is_channels_last
from .fused_op import FusedOp

__all__ = ["grid_sample"]


def _grid_sample_ref(input: Tensor, grid: Tensor) -> Tensor:
    """The eager reference, written with gathers (differentiable to any order in input and grid)."""
    n, c, h, w = input.shape
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = ix.detach().floor(), iy.detach().floor()
    fx, fy = ix - x0, iy - y0
    flat = input.reshape(n, c, h * w)
    out = 0
    for xs, wx in ((x0, 1 - fx), (x0 + 1, fx)):
        for ys, wy in ((y0, 1 - fy), (y0 + 1, fy)):
            inside = ((xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)).to(input.dtype)
            idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).long().reshape(n, 1, -1).expand(n, c, -1)
            v = flat.gather(2, idx).reshape(n, c, *ix.shape[1:])
            out = out + v * (wx * wy * inside)[:, None]
    return out


# ----------------------------------------------------------------------------- grid_sample

def _forward(input: Tensor, grid: Tensor) -> Tensor:
    return _backend.kernels().grid_sample_fwd(input, grid)


def _fake(input, grid):
    fmt = torch.channels_last if is_channels_last(input) else torch.contiguous_format
    return torch.empty((input.shape[0], input.shape[1], grid.shape[1], grid.shape[2]), dtype=input.dtype,
                       device=input.device, memory_format=fmt)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    input, grid = ctx.saved_tensors
    need_input, need_grid = ctx.needs_input_grad
    d_input, d_grid = GRID_SAMPLE_BACKWARD(dy, input, grid, need_input, need_grid)
    return (d_input if need_input else None), (d_grid if need_grid else None)


GRID_SAMPLE = FusedOp("grid_sample", _forward, _fake, _setup, _backward)


# ----------------------------------------------------------------------------- grid_sample_backward

def _bwd_forward(dy: Tensor, input: Tensor, grid: Tensor, need_input: bool, need_grid: bool) -> tuple[Tensor, Tensor]:
    d_input, d_grid = _backend.kernels().grid_sample_bwd(dy, input, grid, need_input, need_grid)
    return (d_input if need_input else input.new_empty((0,))), (d_grid if need_grid else grid.new_empty((0,)))


def _bwd_fake(dy, input, grid, need_input, need_grid):
    return (torch.empty_like(input) if need_input else input.new_empty((0,)),
            torch.empty(grid.shape, dtype=grid.dtype, device=grid.device) if need_grid else grid.new_empty((0,)))


def _bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])
    ctx.set_materialize_grads(False)


def _bwd_backward(ctx, gg_input, gg_grid):
    (grid,) = ctx.saved_tensors
    if gg_grid is not None:
        raise RuntimeError("fastgan::grid_sample: a second-order gradient through the grid gradient is not "
                           "supported (only between the input and the output)")
    if gg_input is not None and ctx.needs_input_grad[2]:
        raise RuntimeError("fastgan::grid_sample: the second-order gradient with respect to the grid is not "
                           "supported (only between the input and the output); detach the grid")
    d_dy = GRID_SAMPLE(gg_input, grid) if gg_input is not None and ctx.needs_input_grad[0] else None
    return d_dy, None, None, None, None  # d_input does not depend on the input


GRID_SAMPLE_BACKWARD = FusedOp("grid_sample_backward", _bwd_forward, _bwd_fake, _bwd_setup, _bwd_backward)


# ----------------------------------------------------------------------------- public

def grid_sample(input: Tensor, grid: Tensor) -> Tensor:
    """``F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)``.

    input [N, C, H, W] (float16/bfloat16/float32/float64, any layout; channels_last is kept),
    grid [N, H_out, W_out, 2] of input's dtype, (x, y) in [-1, 1]. Differentiable with respect
    to both; second order between input and output (what R1 through an augmentation needs).
    """
    if not isinstance(input, torch.Tensor) or not isinstance(grid, torch.Tensor):
        raise TypeError("input and grid must be torch.Tensors")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-d [N, C, H, W], got shape {tuple(input.shape)}")
    if grid.dim() != 4 or grid.shape[0] != input.shape[0] or grid.shape[3] != 2:
        raise ValueError(f"grid must be [N, H_out, W_out, 2] with N = input.shape[0] = {input.shape[0]}, "
                         f"got shape {tuple(grid.shape)}")
    if grid.dtype != input.dtype:
        raise TypeError(f"grid must have input's dtype {input.dtype}, got {grid.dtype}")
    if grid.device != input.device:
        raise ValueError(f"grid must be on input's device {input.device}, got {grid.device}")
    if _backend.backend_for(input) == "eager":
        return _grid_sample_ref(input, grid)
    return GRID_SAMPLE(input, grid)
