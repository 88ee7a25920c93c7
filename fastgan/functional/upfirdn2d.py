"""upfirdn2d: upsample (zero insertion), pad or crop, FIR filter, downsample; StyleGAN's semantics.

Per channel and axis, with u the input with ``up - 1`` zeros after every pixel, padded by
(pad0, pad1) (negative crops), and t the correlation taps of the filter (``f`` flipped unless
``flip_filter``, times ``gain ** (f.ndim / 2)``; a 1-d filter acts along both axes):

    y[o] = sum_k t[k] * u[o * down + k - pad0],     out = (in * up + pad0 + pad1 - taps) // down + 1

The map is linear in x; its adjoint is the same op with up and down swapped, the taps
flipped and the padding of ``FirGeom.adjoint``. So the op's backward is the op itself, and
every order of gradient runs the same kernel:

==========  ======================================  ==========================================
op          computes                                its backward
==========  ======================================  ==========================================
upfirdn2d   y, one Triton pass with 2-d taps        upfirdn2d(dy, flipped taps, up=down,
                                                    down=up, adjoint padding)
==========  ======================================  ==========================================

A 1-d (separable) filter runs as its outer product in one pass when each output sees at most
``DIRECT_TAPS`` live taps, else as two 1-d passes (vertical, then horizontal: fewer loads
per output than the 2-d pass for StyleGAN3's long filters, one intermediate written).

Filters are constants (as in StyleGAN): a filter that requires grad is refused. The eager
backend runs ``_upfirdn2d_ref`` (zero insertion, F.pad, F.conv2d, slicing).
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backend as _backend
from ..kernels.common import is_channels_last
from ..kernels.geometry import FirGeom, fir_centering
from .activations import _finite_number
from .fused_op import FusedOp

__all__ = ["setup_filter", "upfirdn2d", "filter2d", "upsample2d", "downsample2d"]


def _correlation_taps(f: Optional[Tensor], flip_filter: bool, gain: float, dtype: torch.dtype,
                      device: torch.device) -> Tensor:
    """The taps the filter is correlated with: ``f`` flipped unless ``flip_filter`` (convolution),
    times gain ** (f.ndim / 2) (so that a 1-d filter, applied along both axes, scales by gain).
    Made on ``device`` (f is there already): no host-to-device copy."""
    if f is None:
        return torch.full((1, 1), float(gain), dtype=dtype, device=device)
    t = f.to(dtype) * (gain ** (f.dim() / 2))
    return t if flip_filter else t.flip(list(range(t.dim())))


def filter_size(f: Optional[Tensor]) -> tuple[int, int]:
    """(height, width) of a filter: 2-d [fh, fw], 1-d [n] (n x n, separable) or None (1 x 1)."""
    if f is None:
        return 1, 1
    return (f.shape[0], f.shape[1]) if f.dim() == 2 else (f.shape[0], f.shape[0])


def _upfirdn2d_ref(x: Tensor, f: Optional[Tensor], geom: FirGeom, flip_filter: bool, gain: float) -> Tensor:
    """The eager reference: zero insertion, F.pad (negative crops), depthwise F.conv2d, slicing."""
    n, c, h, w = x.shape
    (uh, uw), (dh, dw) = geom.up, geom.down
    u = x
    if uh > 1 or uw > 1:
        u = x.new_zeros(n, c, h * uh, w * uw)
        u[:, :, ::uh, ::uw] = x
    top, bottom, left, right = geom.padding
    u = F.pad(u, [left, right, top, bottom])
    taps = _correlation_taps(f, flip_filter, gain, x.dtype, x.device)
    planes = u.reshape(n * c, 1, *u.shape[2:])
    if taps.dim() == 1:
        planes = F.conv2d(F.conv2d(planes, taps.view(1, 1, -1, 1)), taps.view(1, 1, 1, -1))
    else:
        planes = F.conv2d(planes, taps[None, None])
    y = planes[:, :, ::dh, ::dw]
    return y.reshape(n, c, *y.shape[2:])


# ----------------------------------------------------------------------------- upfirdn2d

def _forward(x: Tensor, taps: Tensor, up: List[int], down: List[int], padding: List[int]) -> Tensor:
    return _backend.kernels().upfirdn2d_fwd(x, taps, FirGeom.from_op_args(up, down, padding))


def _fake(x, taps, up, down, padding):
    hw = FirGeom.from_op_args(up, down, padding).output_hw(x.shape[2:], taps.shape)
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return torch.empty((x.shape[0], x.shape[1], *hw), dtype=x.dtype, device=x.device, memory_format=fmt)


def _setup(ctx, inputs, output):
    x, taps, up, down, padding = inputs
    ctx.save_for_backward(taps)
    ctx.geom = FirGeom.from_op_args(up, down, padding)
    ctx.hw = (tuple(x.shape[2:]), tuple(output.shape[2:]))


def _backward(ctx, dy):
    (taps,) = ctx.saved_tensors
    adjoint = ctx.geom.adjoint(*ctx.hw, tuple(taps.shape))
    return UPFIRDN2D(dy, taps.flip([0, 1]), *adjoint.op_args()), None, None, None, None


UPFIRDN2D = FusedOp("upfirdn2d", _forward, _fake, _setup, _backward)

DIRECT_TAPS = 16


def _fused(x: Tensor, f: Optional[Tensor], geom: FirGeom, flip_filter: bool, gain: float) -> Tensor:
    """upfirdn2d with the fused op: taps in the compute precision, a 1-d filter in one 2-d pass
    or two 1-d passes (see the module doc)."""
    t = _correlation_taps(f, flip_filter, gain, torch.float64 if x.dtype == torch.float64 else torch.float32,
                          x.device)
    if t.dim() == 2:
        return UPFIRDN2D(x, t, *geom.op_args())
    (uh, uw), (dh, dw), (top, bottom, left, right) = geom.up, geom.down, geom.padding
    if -(-t.numel() // uh) * -(-t.numel() // uw) <= DIRECT_TAPS:
        return UPFIRDN2D(x, t[:, None] * t[None, :], *geom.op_args())
    x = UPFIRDN2D(x, t[:, None], [uh, 1], [dh, 1], [top, bottom, 0, 0])
    return UPFIRDN2D(x, t[None, :], [1, uw], [1, dw], [0, 0, left, right])


# ----------------------------------------------------------------------------- argument checks

def check_image(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-d [N, C, H, W], got shape {tuple(x.shape)}")


def check_filter(f, x: Tensor, name: str = "f") -> tuple[int, int]:
    """Validate a FIR filter for ``x``; returns its (height, width)."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None (see setup_filter), got {type(f).__name__}")
    if f.dim() not in (1, 2):
        raise ValueError(f"{name} must be 1-d [taps] (separable) or 2-d [fh, fw], got shape {tuple(f.shape)}")
    if f.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 (or float64), got dtype {f.dtype}")
    if f.numel() == 0:
        raise ValueError(f"{name} must have at least one tap, got shape {tuple(f.shape)}")
    if f.device != x.device:
        raise ValueError(f"{name} must be on x's device {x.device}, got {f.device}")
    if f.requires_grad:
        raise ValueError(f"{name} requires grad, but filters are constants here (as in StyleGAN); "
                         "pass f.detach()")
    return filter_size(f)


def check_geometry(x: Tensor, taps_hw, geom: FirGeom, name: str = "padding") -> None:
    """The padded, upsampled image must still cover the filter (else the output is empty)."""
    size = geom.upsampled_hw(x.shape[2:])
    if size[0] < taps_hw[0] or size[1] < taps_hw[1]:
        raise ValueError(f"{name} {list(geom.padding)} (top, bottom, left, right) crops the upsampled "
                         f"{tuple(x.shape[2:])} image to {size}, smaller than the {tuple(taps_hw)} filter: "
                         "the output would be empty")


def _run(x: Tensor, f: Optional[Tensor], geom: FirGeom, flip_filter: bool, gain: float) -> Tensor:
    if _backend.backend_for(x) == "eager":
        return _upfirdn2d_ref(x, f, geom, flip_filter, gain)
    return _fused(x, f, geom, flip_filter, gain)


def _prepare(x, f, up, down, padding, flip_filter, gain, centred: bool):
    """Validate; returns (geom, gain). ``centred`` adds StyleGAN's centring padding."""
    check_image(x)
    taps_hw = check_filter(f, x)
    geom = FirGeom.of(up, down, padding)
    if not isinstance(flip_filter, bool):
        raise TypeError(f"flip_filter must be a bool, got {type(flip_filter).__name__}")
    gain = _finite_number(gain, "gain")
    if centred:
        pad = []
        for a in range(2):
            extra = fir_centering(taps_hw[a], geom.up[a], geom.down[a])
            pad += [geom.pads(a)[0] + extra[0], geom.pads(a)[1] + extra[1]]
        geom = FirGeom(geom.up, geom.down, tuple(pad))
    check_geometry(x, taps_hw, geom)
    return geom, gain


# ----------------------------------------------------------------------------- public

def setup_filter(f, device=torch.device("cpu"), normalize: bool = True, flip_filter: bool = False, gain=1,
                 separable: Optional[bool] = None) -> Tensor:
    """A float32 FIR filter for :func:`upfirdn2d` from taps (a list, array or tensor).

    ``f``: 2-d [fh, fw], 1-d [taps], a scalar (impulse) or None (identity, [1]). ``normalize``
    divides by the sum (unit DC gain); ``flip_filter`` flips it; ``gain`` scales the 2-d
    response (a 1-d filter by sqrt(gain)). ``separable`` (default: 1-d with at least 8 taps)
    keeps a 1-d filter 1-d; otherwise it becomes its outer product with itself.
    """
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f.dim() == 0:
        f = f.reshape(1)
    if f.dim() not in (1, 2) or f.numel() == 0:
        raise ValueError(f"f must be 1-d or 2-d with at least one tap, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.dim() == 1 and f.numel() >= 8
    if f.dim() == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.dim() != 1:
        raise ValueError("separable=True needs a 1-d filter")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.dim())))
    return (f * (gain ** (f.dim() / 2))).to(device)


def upfirdn2d(x: Tensor, f: Optional[Tensor], up=1, down=1, padding=0, flip_filter: bool = False,
              gain=1) -> Tensor:
    """Upsample by zero insertion, pad (negative: crop), FIR-filter and downsample x [N, C, H, W].

    Args:
        x: float16/bfloat16/float32/float64, NCHW or channels_last (kept), any strides.
        f: float32 filter, 2-d [fh, fw], 1-d [taps] (separable: applied along both axes) or
           None (identity); a constant (no gradient).
        up, down: int or [x, y] factors >= 1.
        padding: int, [x, y] or [x_before, x_after, y_before, y_after], on the upsampled image.
        flip_filter: False = convolution, True = correlation.
        gain: overall scale.

    Differentiable to any order with respect to x (each gradient is again an upfirdn2d).
    """
    geom, gain = _prepare(x, f, up, down, padding, flip_filter, gain, centred=False)
    return _run(x, f, geom, flip_filter, gain)


def filter2d(x: Tensor, f: Optional[Tensor], padding=0, flip_filter: bool = False, gain=1) -> Tensor:
    """Filter x with f, padded so that the output has x's size (``padding`` is added on top)."""
    geom, gain = _prepare(x, f, 1, 1, padding, flip_filter, gain, centred=True)
    return _run(x, f, geom, flip_filter, gain)


def upsample2d(x: Tensor, f: Optional[Tensor], up=2, padding=0, flip_filter: bool = False, gain=1) -> Tensor:
    """Upsample x by ``up`` with filter f (output ``up`` times x's size plus ``padding``); the
    filter gain is multiplied by up_x * up_y so that a normalized filter keeps the DC level."""
    geom, gain = _prepare(x, f, up, 1, padding, flip_filter, gain, centred=True)
    return _run(x, f, geom, flip_filter, gain * geom.up[0] * geom.up[1])


def downsample2d(x: Tensor, f: Optional[Tensor], down=2, padding=0, flip_filter: bool = False, gain=1) -> Tensor:
    """Filter x with f and keep every ``down``-th pixel (output x's size / down, plus ``padding``)."""
    geom, gain = _prepare(x, f, 1, down, padding, flip_filter, gain, centred=True)
    return _run(x, f, geom, flip_filter, gain)
