"""modulated_conv2d: StyleGAN2's style-modulated convolution with demodulation, noise and a bias +
activation epilogue.

For styles s [N, I] and weight w [O, I, kh, kw], sample n convolves with the weight
W_n[o, i] = w[o, i] * s[n, i] * d[n, o], where (with ``demodulate``)

    d[n, o] = 1 / sqrt(sum_{i, k} (w[o, i, k] s[n, i])^2 + 1e-8)

then y = bias_act(conv2d_resample(x, W_n) + noise, bias, act, ...). Two equal ways to run it:

- "scaled": y = conv2d_resample(x * s, w) * d + noise (fma), one convolution for the batch;
- "grouped": one grouped convolution with the per-sample weights W_n (StyleGAN's fused_modconv).

While autograd records, "scaled" runs: its gradients with respect to the styles flow through
the input of the convolution and through d, so ``no_weight_gradients()`` (which skips the
convolution's weight gradient) stays exact for path-length penalties. Without autograd (or
with ``fused_modconv`` forced) the faster of the two is used, as timed once per shape on CUDA
by the conv dispatcher.

==============  ==========================================  =======================================
op              computes                                    its backward
==============  ==========================================  =======================================
modconv_coeffs  d (one Triton pass: d = (s^2 q^T + eps)^-1/2,  ds = 2 s (g')q, dw = 2 w (g'^T s^2),
                q[o, i] = sum_k w[o, i, k]^2)               g' = -g d^3 / 2 (torch ops, any order;
                                                            dw skipped in no_weight_gradients)
==============  ==========================================  =======================================
"""
from typing import Optional

import torch
from torch import Tensor

from .. import backend as _backend
from ..backend import conv_dispatch
from .activations import resolve_act
from .bias_act import bias_act
from .conv2d_resample import _check as _check_resample
from .conv2d_resample import _conv2d_resample_ref, conv2d_resample
from .fma import FMA
from .fused_op import FusedOp
from .gradfix import weight_gradient_wanted

__all__ = ["modulated_conv2d", "modconv_coeffs"]

DEMOD_EPS = 1e-8
MODES = ("scaled", "grouped")


def _modconv_coeffs_ref(styles: Tensor, weight: Tensor, eps: float) -> Tensor:
    w = weight[None] * styles[:, None, :, None, None]
    return (w.square().sum(dim=(2, 3, 4)) + eps).rsqrt()


def _forward(styles: Tensor, weight: Tensor, eps: float) -> Tensor:
    return _backend.kernels().modconv_coeffs(styles, weight, eps)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], output)


def _backward(ctx, g):
    s, w, d = ctx.saved_tensors
    de = g * d.pow(3) * -0.5  # dL/d(sum of squares)
    q = w.square().sum(dim=(2, 3))
    ds = 2 * s * (de @ q) if ctx.needs_input_grad[0] else None
    dw = None
    if ctx.needs_input_grad[1] and weight_gradient_wanted(w):
        dw = 2 * w * (de.t() @ s.square())[:, :, None, None]
    return ds, dw, None


MODCONV_COEFFS = FusedOp("modconv_coeffs", _forward, lambda s, w, eps: s.new_empty((s.shape[0], w.shape[0])),
                         _setup, _backward)


def modconv_coeffs(styles: Tensor, weight: Tensor, eps: float = DEMOD_EPS) -> Tensor:
    """The demodulation coefficients d [N, O] of styles [N, I] and weight [O, I, kh, kw]."""
    if _backend.backend_for(styles) == "eager":
        return _modconv_coeffs_ref(styles, weight, eps)
    return MODCONV_COEFFS(styles, weight, eps)


# ----------------------------------------------------------------------------- the two forms

def _scaled(x, weight, styles, d, noise, resample):
    x = FMA(x, styles.to(x.dtype)[:, :, None, None], None)
    y = conv2d_resample(x, weight.to(x.dtype), *resample)
    if d is not None:
        return FMA(y, d.to(y.dtype)[:, :, None, None], None if noise is None else noise.to(y.dtype))
    return y if noise is None else y + noise.to(y.dtype)


def _grouped(x, weight, styles, d, noise, resample):
    n, i, h, w_ = x.shape
    o = weight.shape[0]
    wn = weight[None] * styles[:, None, :, None, None]
    if d is not None:
        wn = wn * d[:, :, None, None, None]
    f, up, down, padding, _, flip_weight, flip_filter = resample
    y = conv2d_resample(x.reshape(1, n * i, h, w_), wn.reshape(n * o, i, *weight.shape[2:]).to(x.dtype), f, up,
                        down, padding, n, flip_weight, flip_filter)
    y = y.reshape(n, o, *y.shape[2:])
    return y if noise is None else y + noise.to(y.dtype)


def _modulated_conv2d_ref(x, weight, styles, noise, resample, demodulate):
    """The eager reference: the scaled form in plain torch."""
    f, up, down, padding, _, flip_weight, flip_filter = resample
    pad = _check_resample(x, weight.to(x.dtype), f, up, down, padding, 1, flip_weight, flip_filter)
    y = _conv2d_resample_ref(x * styles.to(x.dtype)[:, :, None, None], weight.to(x.dtype), f, up, down, pad, 1,
                             flip_weight, flip_filter)
    if demodulate:
        y = y * _modconv_coeffs_ref(styles, weight, DEMOD_EPS).to(y.dtype)[:, :, None, None]
    return y if noise is None else y + noise.to(y.dtype)


# ----------------------------------------------------------------------------- public

def _check(x, weight, styles):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("x must be a 4-d tensor [N, I, H, W]")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be [O, I, kh, kw] with I = x.shape[1] = {x.shape[1]}, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if not isinstance(styles, torch.Tensor) or tuple(styles.shape) != (x.shape[0], x.shape[1]):
        raise ValueError(f"styles must be [N, I] = {[x.shape[0], x.shape[1]]}, got "
                         f"{tuple(styles.shape) if isinstance(styles, torch.Tensor) else type(styles).__name__}")
    if styles.dtype != weight.dtype or not styles.is_floating_point():
        raise TypeError(f"styles must have weight's floating dtype {weight.dtype}, got {styles.dtype}")
    if styles.device != x.device or weight.device != x.device:
        raise ValueError(f"weight and styles must be on x's device {x.device}")


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, noise: Optional[Tensor] = None, up: int = 1,
                     down: int = 1, padding=0, resample_filter: Optional[Tensor] = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: Optional[bool] = None, bias: Optional[Tensor] = None,
                     act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
                     clamp: Optional[float] = None) -> Tensor:
    """StyleGAN2's modulated convolution of x [N, I, H, W] (see the module doc).

    weight [O, I, kh, kw] and styles [N, I] share a dtype (float32 parameters with half x are
    fine: the coefficients are computed in float32, the convolution in x's dtype); noise
    broadcasts to the output ([N, 1, H', W'] in StyleGAN). up, down, padding, resample_filter,
    flip_weight: as :func:`conv2d_resample`. bias, act, alpha, gain, clamp: the epilogue of
    :func:`bias_act` (channel dim 1). fused_modconv: force "grouped" (True) or "scaled" (False)
    where no gradient is recorded; None: the dispatcher's choice. Differentiable twice.
    """
    _check(x, weight, styles)
    spec = resolve_act(act, alpha, gain, clamp)
    resample = (resample_filter, up, down, padding, 1, flip_weight, False)
    if _backend.backend_for(x) == "eager":
        y = _modulated_conv2d_ref(x, weight, styles, noise, resample, demodulate)
    else:
        _check_resample(x, weight.to(x.dtype), *resample)
        d = MODCONV_COEFFS(styles, weight, DEMOD_EPS) if demodulate else None
        recording = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, styles, noise, bias))
        if recording:
            mode = "scaled"
        elif fused_modconv is not None:
            mode = MODES[bool(fused_modconv)]
        else:
            args = (up, down, str(padding), demodulate, noise is not None)
            mode = conv_dispatch.choose("modconv", x, weight, args, lambda m: _run(m, x, weight, styles, d, noise,
                                                                                 resample), impls=MODES)
        y = _run(mode, x, weight, styles, d, noise, resample)
    if bias is None and spec.act == "linear" and spec.gain == 1 and spec.clamp is None:
        return y
    return bias_act(y, None if bias is None else bias.to(y.dtype), 1, act, alpha, gain, clamp)


def _run(mode, x, weight, styles, d, noise, resample):
    return (_grouped if mode == "grouped" else _scaled)(x, weight, styles, d, noise, resample)
