"""filtered_lrelu: bias, upsample + FIR, gain, leaky ReLU, clamp, FIR + downsample (StyleGAN3).

    y = upfirdn2d(a(upfirdn2d(x + b, fu, up=up, padding, gain=up**2)), fd, down=down)
    a(z) = clamp(lrelu(z, slope) * gain, -clamp, clamp)

With separable (1-d) or no filters the whole chain is one Triton kernel whose upsampled
intermediate never leaves registers (``kernels/filtered_lrelu.py``). a' is piecewise
constant, so the gradient is linear in dy with coefficients set by x alone:

=======================  =====================================  ==================================
op                       computes                               its backward
=======================  =====================================  ==================================
filtered_lrelu           y                                      dx = filtered_lrelu_backward(dy),
                                                                db = sum dx
filtered_lrelu_backward  U^T (a'(z) * D^T dy)                   d/d(dy): filtered_lrelu_linear;
                                                                d/dx, d/db: zero
filtered_lrelu_linear    D (a'(z) * U v)                        d/dv: filtered_lrelu_backward;
                                                                d/dx, d/db: zero
=======================  =====================================  ==================================

(z = U (x + b); U, D the up and down filter maps.) Gradients of any order therefore run
these kernels. A 2-d (non-separable) filter runs the chain as separate fused ops
(upfirdn2d, bias_act, upfirdn2d; the intermediate is written), differentiable to any order
too. The eager backend runs ``_filtered_lrelu_ref``. Filters are constants.
"""
import math
from typing import List, Optional

import torch
from torch import Tensor

from .. import backend as _backend
from ..kernels.common import is_channels_last
from ..kernels.geometry import FirGeom
from .activations import ActSpec, _finite_number
from .bias_act import BIAS_ACT, _bias_act_ref
from .fused_op import FusedOp
from .upfirdn2d import _correlation_taps, _fused, _upfirdn2d_ref, check_filter, check_image

__all__ = ["filtered_lrelu"]


def _geoms(up: int, down: int, padding) -> tuple[FirGeom, FirGeom]:
    """The two upfirdn2d of the chain: upsampling with the padding, then plain downsampling."""
    return FirGeom((up, up), (1, 1), tuple(padding)), FirGeom((1, 1), (down, down), (0, 0, 0, 0))


def _output_hw(in_hw, fu_hw, fd_hw, up, down, padding):
    g_up, g_down = _geoms(up, down, padding)
    return g_down.output_hw(g_up.output_hw(in_hw, fu_hw), fd_hw)


def _filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter) -> Tensor:
    """The eager reference: bias, upfirdn2d, lrelu epilogue and upfirdn2d references in turn."""
    g_up, g_down = _geoms(up, down, padding)
    z = _upfirdn2d_ref(_bias_act_ref(x, b, 1, ActSpec("linear", 0.0, 1.0, None)), fu, g_up, flip_filter, up * up)
    return _upfirdn2d_ref(ActSpec("lrelu", slope, gain, clamp).reference(z), fd, g_down, flip_filter, 1.0)


def _unfused(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter) -> Tensor:
    """The chain as separate fused ops (2-d filters)."""
    g_up, g_down = _geoms(up, down, padding)
    if b is not None:
        x = BIAS_ACT(x, b, 1, "linear", 0.0, 1.0, None)
    z = _fused(x, fu, g_up, flip_filter, up * up)
    return _fused(BIAS_ACT(z, None, 1, "lrelu", slope, gain, clamp), fd, g_down, flip_filter, 1.0)


# ----------------------------------------------------------------------------- the three fused ops

def _hw(x, gu, gd, up, down, padding):
    return _output_hw(tuple(x.shape[2:]), (gu.numel(),) * 2, (gd.numel(),) * 2, up, down, padding)


def _like(x, shape):
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _forward(x: Tensor, b: Optional[Tensor], gu: Tensor, gd: Tensor, up: int, down: int, padding: List[int],
             gain: float, slope: float, clamp: Optional[float]) -> Tensor:
    return _backend.kernels().filtered_lrelu_fwd(x, b, gu, gd, up, down, padding, gain, slope, clamp,
                                                 _hw(x, gu, gd, up, down, padding))


def _fake(x, b, gu, gd, up, down, padding, gain, slope, clamp):
    return _like(x, (x.shape[0], x.shape[1], *_hw(x, gu, gd, up, down, padding)))


def _setup(ctx, inputs, output):
    x, b, gu, gd, *args = inputs
    ctx.save_for_backward(x, b, gu, gd)
    ctx.args = args


def _backward(ctx, dy):
    x, b, gu, gd = ctx.saved_tensors
    dx = FILTERED_LRELU_BACKWARD(dy, x, b, gu, gd, *ctx.args)
    db = dx.sum(dim=(0, 2, 3)) if b is not None and ctx.needs_input_grad[1] else None
    return (dx if ctx.needs_input_grad[0] else None), db, None, None, None, None, None, None, None, None


FILTERED_LRELU = FusedOp("filtered_lrelu", _forward, _fake, _setup, _backward)


def _bwd_forward(dy: Tensor, x: Tensor, b: Optional[Tensor], gu: Tensor, gd: Tensor, up: int, down: int,
                 padding: List[int], gain: float, slope: float, clamp: Optional[float]) -> Tensor:
    return _backend.kernels().filtered_lrelu_bwd(dy, x, b, gu, gd, up, down, padding, gain, slope, clamp)


def _lin_forward(v: Tensor, x: Tensor, b: Optional[Tensor], gu: Tensor, gd: Tensor, up: int, down: int,
                 padding: List[int], gain: float, slope: float, clamp: Optional[float]) -> Tensor:
    return _backend.kernels().filtered_lrelu_lin(v, x, b, gu, gd, up, down, padding, gain, slope, clamp,
                                                 _hw(x, gu, gd, up, down, padding))


def _pair_setup(ctx, inputs, output):
    _, x, b, gu, gd, *args = inputs
    ctx.save_for_backward(x, b, gu, gd)
    ctx.args = args


def _bwd_backward(ctx, g):
    """Linear in dy (its transpose is the linearised forward); constant in x and b."""
    x, b, gu, gd = ctx.saved_tensors
    d_dy = FILTERED_LRELU_LINEAR(g, x, b, gu, gd, *ctx.args) if ctx.needs_input_grad[0] else None
    return (d_dy,) + (None,) * 10


def _lin_backward(ctx, g):
    x, b, gu, gd = ctx.saved_tensors
    d_v = FILTERED_LRELU_BACKWARD(g, x, b, gu, gd, *ctx.args) if ctx.needs_input_grad[0] else None
    return (d_v,) + (None,) * 10


FILTERED_LRELU_BACKWARD = FusedOp("filtered_lrelu_backward", _bwd_forward, lambda dy, x, *rest: _like(x, x.shape),
                                  _pair_setup, _bwd_backward)
FILTERED_LRELU_LINEAR = FusedOp("filtered_lrelu_linear", _lin_forward, lambda v, x, *rest: _fake(x, *rest),
                                _pair_setup, _lin_backward)


# ----------------------------------------------------------------------------- public

def _taps1d(f: Optional[Tensor], flip_filter: bool, gain: float, x: Tensor) -> Tensor:
    """The 1-d correlation taps of a separable (or absent) filter in the compute precision,
    sqrt(gain) per axis."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if f is None:
        return torch.full((1,), math.sqrt(gain), dtype=dtype, device=x.device)
    return _correlation_taps(f, flip_filter, gain, dtype, x.device)


def _check(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter):
    check_image(x)
    fu_hw, fd_hw = check_filter(fu, x, "fu"), check_filter(fd, x, "fd")
    if b is not None:
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"b must be a torch.Tensor or None, got {type(b).__name__}")
        if b.shape != (x.shape[1],):
            raise ValueError(f"b must be 1-d of length x.shape[1] = {x.shape[1]}, got shape {tuple(b.shape)}")
        if b.dtype != x.dtype or b.device != x.device:
            raise TypeError(f"b must have x's dtype {x.dtype} and device {x.device}, got {b.dtype} on {b.device}")
    for name, v in (("up", up), ("down", down)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    geom = FirGeom.of(up, 1, padding)
    gain, slope = _finite_number(gain, "gain"), _finite_number(slope, "slope")
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    if slope < 0:
        raise ValueError(f"slope must be >= 0, got {slope}")
    if clamp is not None:
        clamp = _finite_number(clamp, "clamp")
        if clamp < 0:
            raise ValueError(f"clamp must be >= 0 (or None), got {clamp}")
    if not isinstance(flip_filter, bool):
        raise TypeError(f"flip_filter must be a bool, got {type(flip_filter).__name__}")
    mid = geom.upsampled_hw(x.shape[2:])
    mid = (mid[0] - fu_hw[0] + 1, mid[1] - fu_hw[1] + 1)
    if min(mid[0] - fd_hw[0], mid[1] - fd_hw[1]) < 0:
        raise ValueError(f"padding {list(geom.padding)} (top, bottom, left, right) leaves an upsampled, filtered "
                         f"image of {mid}, smaller than the {fd_hw} downsampling filter: the output would be empty")
    return geom.padding, gain, slope, clamp


def filtered_lrelu(x: Tensor, fu: Optional[Tensor] = None, fd: Optional[Tensor] = None, b: Optional[Tensor] = None,
                   up: int = 1, down: int = 1, padding=0, gain: float = math.sqrt(2), slope: float = 0.2,
                   clamp: Optional[float] = None, flip_filter: bool = False) -> Tensor:
    """StyleGAN3's filtered leaky ReLU of x [N, C, H, W].

    Adds the bias b [C], upsamples by ``up`` (zero insertion, ``padding`` as upfirdn2d's:
    an int, [x, y] or [x0, x1, y0, y1]; negative crops) with the filter fu (gain up**2),
    applies ``clamp(lrelu(., slope) * gain)``, then filters with fd and keeps every ``down``-th
    pixel. fu, fd: float32 filters, 1-d (separable; the fused path), 2-d, or None (identity).
    Differentiable to any order with respect to x and b.
    """
    padding, gain, slope, clamp = _check(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
    if _backend.backend_for(x) == "eager":
        return _filtered_lrelu_ref(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
    if (fu is not None and fu.dim() == 2) or (fd is not None and fd.dim() == 2):
        return _unfused(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)
    return FILTERED_LRELU(x, b, _taps1d(fu, flip_filter, up * up, x), _taps1d(fd, flip_filter, 1.0, x), up, down,
                          list(padding), gain, slope, clamp)
