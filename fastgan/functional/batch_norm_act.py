"""batch_norm_act: y = clamp(act(batch_norm(x)) * gain), fused in training mode.

Training mode (batch statistics) runs the kernels of ``fastgan.kernels.batch_norm_act``: a
statistics pass and one normalise + affine + activation pass forward, a reduction pass and
one pointwise pass backward. Evaluation mode (running statistics) is an affine map per
channel: ``F.batch_norm`` followed by the fused ``bias_act``, differentiable twice. The eager
backend is ``F.batch_norm`` + the activation reference.

Ops (``fused_op.FusedOp``):

======================  =========================================  ==========================
op                      computes                                   its backward
======================  =========================================  ==========================
batch_norm_act          (y, mean, biased var)                      batch_norm_act_backward
batch_norm_act_backward (dx, sum g, sum g * x_hat)                 none: a second order raises
======================  =========================================  ==========================
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backend as _backend
from .activations import resolve_act
from .bias_act import bias_act
from .fused_op import FusedOp, fresh_like

__all__ = ["batch_norm_act"]


def _stats_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _affine(var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float):
    """(invstd, scale, beta) of the per-channel map (x - mean) * scale + beta = (x - mean) * invstd * w + b."""
    invstd = torch.rsqrt(var + eps)
    scale = invstd * weight.to(invstd.dtype) if weight is not None else invstd
    beta = bias.to(invstd.dtype) if bias is not None else torch.zeros_like(invstd)
    return invstd, scale, beta


def _fake(x, *rest):
    """(tensor like x, two per-channel vectors in the statistics dtype): both ops' outputs."""
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,), dtype=_stats_dtype(x)), x.new_empty((c,), dtype=_stats_dtype(x))


def _forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, act: str, alpha: float,
             gain: float, clamp: Optional[float]) -> tuple[Tensor, Tensor, Tensor]:
    K = _backend.kernels()
    mean, var = K.bn_stats(x, 1)
    _, scale, beta = _affine(var, weight, bias, eps)
    y = K.bias_act_fwd(x, beta, 1, act, alpha, gain, clamp, scale=scale, center=mean)
    return fresh_like(y, x), mean, var


def _setup(ctx, inputs, output):
    x, weight, bias, eps, *act_args = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps, ctx.act_args = eps, act_args


def _backward(ctx, dy, _dmean, _dvar):
    x, weight, bias, mean, var = ctx.saved_tensors
    invstd, scale, beta = _affine(var, weight, bias, ctx.eps)
    dx, sum_g, sum_gx = BATCH_NORM_ACT_BACKWARD(dy, x, mean, invstd, scale, beta, *ctx.act_args)
    need = ctx.needs_input_grad
    dw = sum_gx.to(weight.dtype) if weight is not None and need[1] else None
    db = sum_g.to(bias.dtype) if bias is not None and need[2] else None
    return dx, dw, db, None, None, None, None, None


BATCH_NORM_ACT = FusedOp("batch_norm_act", _forward, _fake, _setup, _backward)


def _backward_forward(dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, beta: Tensor, act: str,
                      alpha: float, gain: float, clamp: Optional[float]) -> tuple[Tensor, Tensor, Tensor]:
    dx, sum_g, sum_gx = _backend.kernels().bn_act_bwd(dy, x, mean, invstd, scale, beta, 1, act, alpha, gain, clamp)
    return fresh_like(dx, x), sum_g, sum_gx


BATCH_NORM_ACT_BACKWARD = FusedOp("batch_norm_act_backward", _backward_forward, lambda dy, x, *rest: _fake(x),
                                  limit="the training-mode batch_norm_act supports gradients up to first order")


def _check(x, weight, bias, running_mean, running_var):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-d [N, C, H, W], got shape {tuple(x.shape)}")
    c = x.shape[1]
    if c == 0:
        raise ValueError(f"x must have at least one channel, got shape {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is None:
            continue
        if t.shape != (c,):
            raise ValueError(f"{name} must have shape [{c}], got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")


def batch_norm_act(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                   weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
                   momentum: float = 0.1, eps: float = 1e-5, act: str = "relu", alpha: Optional[float] = None,
                   gain: Optional[float] = None, clamp: Optional[float] = None) -> Tensor:
    """``clamp(act(F.batch_norm(x, ...)) * gain)`` with ``F.batch_norm``'s argument semantics.

    In training mode the running statistics (when given) are updated in place with
    ``momentum`` (unbiased variance, like torch). Training mode is differentiable once.
    """
    _check(x, weight, bias, running_mean, running_var)
    spec = resolve_act(act, alpha, gain, clamp)
    if training and x.numel() // x.shape[1] <= 1:
        raise ValueError(f"expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    if _backend.backend_for(x) == "eager":
        return spec.reference(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))
    if not training:
        z = F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
        return bias_act(z, None, 1, spec.act, spec.alpha if spec.act == "lrelu" else None, spec.gain, spec.clamp)
    y, mean, var = BATCH_NORM_ACT(x, weight, bias, float(eps), spec.act, spec.alpha, spec.gain, spec.clamp)
    if running_mean is not None and running_var is not None:
        m = x.numel() // x.shape[1]
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((var * (m / (m - 1))).to(running_var.dtype), alpha=momentum)
    return y
