"""batch_norm_act: y = clamp(act(batch_norm(x)) * gain), fused in training mode.

Training mode (batch statistics) runs the fused kernels of ``fastgan.kernels.batch_norm_act``:
a statistics pass and one normalise + affine + activation pass forward, a reduction pass and
one pointwise pass backward (first order; a second-order gradient through a training-mode
batch norm raises, which GAN generators never need). Evaluation mode (running statistics) is
an affine map per channel: ``F.batch_norm`` followed by the fused ``bias_act``, differentiable
twice. The eager backend is ``F.batch_norm`` + the activation reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import backend as _backend
from .activations import ActSpec, resolve_act
from .bias_act import bias_act

__all__ = ["batch_norm_act"]


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, spec: ActSpec):
        K = _backend.kernels()
        mean, var = K.bn_stats(x, 1)
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight.to(invstd.dtype) if weight is not None else invstd
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias.to(shift.dtype)
        y = K.bias_act_fwd(x, shift, 1, spec.act, spec.alpha, spec.gain, spec.clamp, scale=scale)
        ctx.save_for_backward(x, mean, invstd, scale, shift)
        ctx.spec, ctx.has_weight, ctx.has_bias = spec, weight is not None, bias is not None
        ctx.param_dtype = weight.dtype if weight is not None else None
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar):
        x, mean, invstd, scale, shift = ctx.saved_tensors
        spec = ctx.spec
        dx, sum_g, sum_gx = _backend.kernels().bn_act_bwd(dy, x, mean, invstd, scale, shift, 1, spec.act,
                                                         spec.alpha, spec.gain, spec.clamp)
        dw = sum_gx.to(ctx.param_dtype) if ctx.has_weight and ctx.needs_input_grad[1] else None
        db = sum_g.to(ctx.param_dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None


def _check(x, weight, bias, running_mean, running_var):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-d [N, C, H, W], got shape {tuple(x.shape)}")
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is None:
            continue
        if t.shape != (c,):
            raise ValueError(f"{name} must have shape [{c}], got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")


def batch_norm_act(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                   weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                   momentum: float = 0.1, eps: float = 1e-5, act: str = "relu", alpha: float | None = None,
                   gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """``clamp(act(F.batch_norm(x, ...)) * gain)`` with ``F.batch_norm``'s argument semantics.

    In training mode the running statistics (when given) are updated in place with
    ``momentum`` (unbiased variance, like torch).
    """
    _check(x, weight, bias, running_mean, running_var)
    spec = resolve_act(act, alpha, gain, clamp)
    if training and x.numel() // x.shape[1] <= 1:
        raise ValueError(f"expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    compiling = torch.compiler.is_compiling()  # torch.compile: fastgan.library's opaque ops
    if not training or (not compiling and _backend.backend_for(x) == "eager"):
        z = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
        if not compiling and _backend.backend_for(x) == "eager":
            return spec.reference(z)
        return bias_act(z, None, 1, spec.act, spec.alpha if spec.act == "lrelu" else None, spec.gain, spec.clamp)
    if compiling:
        from .. import library
        y, mean, var = library.batch_norm_act(x, weight, bias, eps, spec)
    else:
        y, mean, var = _BatchNormAct.apply(x, weight, bias, eps, spec)
    if running_mean is not None and running_var is not None:
        m = x.numel() // x.shape[1]
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((var * (m / (m - 1))).to(running_var.dtype), alpha=momentum)
    return y
