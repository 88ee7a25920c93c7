"""conv2d_resample: a convolution with FIR up/downsampling around it (StyleGAN's conv layers).

Definition (padding applied once, before the convolution, on the upsampled image; the
centring padding of ``kernels.geometry.fir_centering`` is added for ``up > 1`` and ``down > 1``):

    u = upfirdn2d(x, f if up > 1 else None, up=up, padding, gain=up**2)
    y = conv2d(u, w, groups)                    (w flipped when flip_weight=False: convolution)
    y = upfirdn2d(y, f, down=down)              (when down > 1)

The convolution commutes with the per-channel FIR, so the fused path reorders the chain on
fastgan's convolution ops (``conv2d_act`` / ``conv_transpose2d_act``, differentiable twice,
``no_weight_gradients`` respected) and fused upfirdn2d:

- up > 1: zero insertion + padding + conv is one transposed convolution (stride up, the
  weight flipped and transposed per group); its output is padded/cropped and filtered by one
  upfirdn2d (then the downsampling one, if any). No zero-inserted image is built.
- down > 1 only: filter first (upfirdn2d with the padding), then a strided convolution
  (1x1 kernels: filter and decimate first, then the 1x1 convolution on the small image).
- neither: one convolution (asymmetric or negative padding: F.pad first).

The filter is not folded into the convolution weight: that would multiply the convolution's
FLOPs by ((k + taps - 1) / k)^2 (4x for StyleGAN2's 3x3 conv and 4-tap filter) to save one
memory-bound FIR pass. The eager backend runs ``_conv2d_resample_ref``.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backend as _backend
from ..kernels.geometry import FirGeom, fir_centering
from .conv import conv2d_act, conv_transpose2d_act
from .upfirdn2d import _upfirdn2d_ref, check_filter, check_image, upfirdn2d

__all__ = ["conv2d_resample"]


def _padding(padding, f_hw, up: int, down: int) -> list:
    """(top, bottom, left, right): the user's padding plus the centring of the up and down filters."""
    pad = list(FirGeom.of(1, 1, padding).padding)
    for a in range(2):
        for factor, kind in ((up, "up"), (down, "down")):
            if factor > 1:
                extra = fir_centering(f_hw[a], **{kind: factor})
                pad[2 * a] += extra[0]
                pad[2 * a + 1] += extra[1]
    return pad


def _nvlabs_pad(pad) -> list:
    """(top, bottom, left, right) as upfirdn2d's [x0, x1, y0, y1]."""
    top, bottom, left, right = pad
    return [left, right, top, bottom]


def _conv2d_resample_ref(x, w, f, up, down, pad, groups, flip_weight, flip_filter) -> Tensor:
    """The eager reference: the definition's three steps with the reference upfirdn2d and F.conv2d."""
    if not flip_weight:
        w = w.flip([2, 3])
    u = _upfirdn2d_ref(x, f if up > 1 else None, FirGeom((up, up), (1, 1), tuple(pad)), flip_filter, up * up)
    y = F.conv2d(u, w, groups=groups)
    if down > 1:
        y = _upfirdn2d_ref(y, f, FirGeom((1, 1), (down, down)), flip_filter, 1)
    return y


def _transposed_weight(w: Tensor, groups: int) -> Tensor:
    """[O, I/g, kh, kw] correlation weight -> the conv_transpose2d weight [I, O/g, kh, kw] that
    computes the same correlation on the zero-inserted image (spatially flipped)."""
    o, ig, kh, kw = w.shape
    w = w.flip([2, 3]).reshape(groups, o // groups, ig, kh, kw).transpose(1, 2)
    return w.reshape(groups * ig, o // groups, kh, kw)


def _fused(x, w, f, up, down, pad, groups, flip_weight, flip_filter) -> Tensor:
    if not flip_weight:
        w = w.flip([2, 3])
    kh, kw = w.shape[2:]
    top, bottom, left, right = pad
    if up > 1:
        # zero insertion, padding (p0, p1) and the correlation = the transposed convolution's full
        # output t, shifted: u[o] = t[o + k - 1 - p0] over in * up + p0 + p1 - k + 1 samples
        t = conv_transpose2d_act(x, _transposed_weight(w, groups), None, stride=up, groups=groups)
        crop = [top - kh + 1, bottom + up - kh, left - kw + 1, right + up - kw]
        y = upfirdn2d(t, f, padding=_nvlabs_pad(crop), flip_filter=flip_filter, gain=up * up)
        return upfirdn2d(y, f, down=down, flip_filter=flip_filter) if down > 1 else y
    if down > 1:
        if kh == 1 and kw == 1:
            x = upfirdn2d(x, f, down=down, padding=_nvlabs_pad(pad), flip_filter=flip_filter)
            return conv2d_act(x, w, None, groups=groups)
        x = upfirdn2d(x, f, padding=_nvlabs_pad(pad), flip_filter=flip_filter)
        return conv2d_act(x, w, None, stride=down, groups=groups)
    if top == bottom and left == right and top >= 0 and left >= 0:
        return conv2d_act(x, w, None, padding=(top, left), groups=groups)
    return conv2d_act(F.pad(x, [left, right, top, bottom]), w, None, groups=groups)


def _check(x, w, f, up, down, padding, groups, flip_weight, flip_filter) -> list:
    check_image(x)
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        raise ValueError(f"w must be a 4-d tensor [out_channels, in_channels / groups, kh, kw], got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.dtype != x.dtype or w.device != x.device:
        raise TypeError(f"w must have x's dtype {x.dtype} and device {x.device}, got {w.dtype} on {w.device}")
    f_hw = check_filter(f, x)
    for name, v in (("up", up), ("down", down), ("groups", groups)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    for name, v in (("flip_weight", flip_weight), ("flip_filter", flip_filter)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    if w.shape[0] % groups or w.shape[1] * groups != x.shape[1]:
        raise ValueError(f"w of shape {tuple(w.shape)} does not fit x with {x.shape[1]} channels and "
                         f"groups={groups} (w.shape[1] * groups must be the input channels and groups must "
                         "divide w.shape[0])")
    pad = _padding(padding, f_hw, up, down)
    for a in range(2):
        size = x.shape[2 + a] * up + pad[2 * a] + pad[2 * a + 1] - (f_hw[a] - 1 if up > 1 else 0)
        size -= w.shape[2 + a] - 1
        if size < 1 or (down > 1 and size < f_hw[a]):
            raise ValueError(f"padding {padding!r} leaves no output for a {tuple(x.shape[2:])} input, "
                             f"{tuple(w.shape[2:])} kernel, {f_hw} filter, up={up}, down={down}")
    return pad


def conv2d_resample(x: Tensor, w: Tensor, f: Optional[Tensor] = None, up: int = 1, down: int = 1, padding=0,
                    groups: int = 1, flip_weight: bool = True, flip_filter: bool = False) -> Tensor:
    """StyleGAN's conv2d_resample: conv2d of x [N, I, H, W] with w [O, I / groups, kh, kw], with
    FIR upsampling by ``up`` before and downsampling by ``down`` after (filter f from
    :func:`setup_filter`, None: identity); ``padding`` (an int, [x, y] or [x0, x1, y0, y1]) is
    applied once, on the upsampled image. flip_weight: True = correlation (as F.conv2d).
    Differentiable twice with respect to x and w; ``no_weight_gradients()`` skips dw."""
    pad = _check(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
    if _backend.backend_for(x) == "eager":
        return _conv2d_resample_ref(x, w, f, up, down, pad, groups, flip_weight, flip_filter)
    return _fused(x, w, f, up, down, pad, groups, flip_weight, flip_filter)
