"""batch_norm_act, instance_norm_act: y = clamp(act(norm(x)) * gain), fused when the batch's
(instances') own statistics normalise.

Training mode (batch statistics) runs the kernels of ``fastgan.kernels.batch_norm_act``, three
launches each way: a statistics pass, a per-channel merge, one normalise + affine + activation
pass forward (two when x comes from ``conv2d_act(..., bn_partials=True)``, whose epilogue
computed the statistics pass's partials); a reduction pass, a per-channel sum, one pointwise
pass backward. The merge also updates the running statistics and ``num_batches_tracked`` in
place (the op mutates them; with ``momentum=None``, torch's cumulative average, the counter's
``add_(1)`` is one more launch). Evaluation mode (running statistics) is an affine map per
channel: ``F.batch_norm`` followed by the fused ``bias_act``. The eager backend is
``F.batch_norm`` + the activation reference. Both modes are differentiable twice, so a
gradient penalty (R1, WGAN-GP) through a batch-normalised critic is exact.

Ops (``fused_op.FusedOp``):

=======================  ==========================================  ==================================
op                       computes                                    its backward
=======================  ==========================================  ==================================
batch_norm_stats         stats [4, C]: mean, var, scale, unbiased    none: it runs on detached inputs;
                         var; updates the running statistics and     batch_norm_act's backward
                         counter in place                            differentiates the statistics
batch_norm_finalize      the same from a conv epilogue's partials    none (as batch_norm_stats)
batch_norm_act           y from x and x's own stats                  batch_norm_act_backward
batch_norm_act_backward  (dx, dw, db): the fused first-order kernels  the second derivative of the
                                                                     reference (F.batch_norm + act,
                                                                     batch statistics recomputed from
                                                                     x), by autograd; a third order
                                                                     raises
=======================  ==========================================  ==================================

The second order runs plain torch ops (a penalty through batch norm is rare; the first order,
on every training step, is the fused kernels).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backend as _backend
from .activations import ActSpec, resolve_act
from .bias_act import bias_act
from .conv import tagged_bn_partials
from .fused_op import FusedOp, fresh_like

__all__ = ["batch_norm_act", "instance_norm_act"]


def _stats_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _stats_fake(x, *rest):
    return x.new_empty((4, x.shape[1]), dtype=_stats_dtype(x))


def _stats_forward(x: Tensor, weight: Optional[Tensor], running_mean: Optional[Tensor],
                   running_var: Optional[Tensor], num_batches_tracked: Optional[Tensor], momentum: Optional[float],
                   eps: float) -> Tensor:
    """stats [4, C]: the batch mean, biased var, scale w / sqrt(var + eps) and unbiased var of each
    channel (``kernels.batch_norm_act.STATS_ROWS``); the running statistics and counter, when
    given, are updated in place as ``kernels.batch_norm_act.bn_stats`` says."""
    return _backend.kernels().bn_stats(x, 1, weight, eps, running_mean, running_var, num_batches_tracked, momentum)


_STATS_LIMIT = "called on detached inputs: batch_norm_act's backward differentiates the statistics"
BATCH_NORM_STATS = FusedOp("batch_norm_stats", _stats_forward, _stats_fake, limit=_STATS_LIMIT,
                           mutates_args=("running_mean", "running_var", "num_batches_tracked"))


def _finalize_forward(count: Tensor, mean: Tensor, m2: Tensor, weight: Optional[Tensor],
                      running_mean: Optional[Tensor], running_var: Optional[Tensor],
                      num_batches_tracked: Optional[Tensor], momentum: Optional[float], eps: float) -> Tensor:
    """``batch_norm_stats`` from the per-tile partials (count, mean, M2 [T, C]) that a convolution's
    epilogue computed for its output (``conv2d_act(..., bn_partials=True)``): one launch."""
    return _backend.kernels().bn_finalize((count, mean, m2), weight, eps, running_mean, running_var,
                                          num_batches_tracked, momentum)


BATCH_NORM_FINALIZE = FusedOp("batch_norm_finalize", _finalize_forward,
                              lambda count, *rest: count.new_empty((4, count.shape[1])), limit=_STATS_LIMIT,
                              mutates_args=("running_mean", "running_var", "num_batches_tracked"))


def _fake(x, *rest):
    return torch.empty_like(x)


def _forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], stats: Tensor, eps: float, act: str,
             alpha: float, gain: float, clamp: Optional[float]) -> Tensor:
    """y = clamp(act((x - mean) * scale + b) * gain), given x's own ``BATCH_NORM_STATS`` (its
    backward differentiates through them: the statistics must be x's and weight's)."""
    y = _backend.kernels().bias_act_fwd(x, bias, 1, act, alpha, gain, clamp, scale=stats[2], center=stats[0])
    return fresh_like(y, x)


def _setup(ctx, inputs, output):
    x, weight, bias, stats, eps, *act_args = inputs
    ctx.save_for_backward(x, weight, bias, stats)
    ctx.eps, ctx.act_args = eps, act_args


def _backward(ctx, dy):
    x, weight, bias, stats = ctx.saved_tensors
    dx, dw, db = BATCH_NORM_ACT_BACKWARD(dy, x, weight, bias, stats, ctx.eps, *ctx.act_args)
    need = ctx.needs_input_grad
    return dx, (dw if weight is not None and need[1] else None), (db if bias is not None and need[2] else None), \
        *([None] * 6)


BATCH_NORM_ACT = FusedOp("batch_norm_act", _forward, _fake, _setup, _backward)


def _backward_fake(dy, x, weight, bias, *rest):
    def grad_of(p):
        return torch.empty_like(p) if p is not None else x.new_empty((0,))
    return torch.empty_like(x), grad_of(weight), grad_of(bias)


def _backward_forward(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], stats: Tensor,
                      eps: float, act: str, alpha: float, gain: float,
                      clamp: Optional[float]) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db) of the training-mode batch norm + activation for dy (dw/db empty without a
    weight/bias), given the forward's statistics."""
    dx, sum_g, sum_gx = _backend.kernels().bn_act_bwd(dy, x, stats, bias, eps, 1, act, alpha, gain, clamp)
    dw = sum_gx.to(weight.dtype) if weight is not None else x.new_empty((0,))
    db = sum_g.to(bias.dtype) if bias is not None else x.new_empty((0,))
    return fresh_like(dx, x), dw, db


def _backward_setup(ctx, inputs, output):
    dy, x, weight, bias, stats, eps, *act_args = inputs
    ctx.save_for_backward(dy, x, weight, bias)
    ctx.eps, ctx.spec = eps, ActSpec(*act_args)
    ctx.set_materialize_grads(False)


def _backward_backward(ctx, g_dx, g_dw, g_db):
    """The second derivative: autograd of the reference's first derivative, w.r.t. dy, x, w, b."""
    if torch.is_grad_enabled():  # create_graph: a third order was requested
        raise RuntimeError("fastgan::batch_norm_act_backward: the training-mode batch_norm_act supports gradients "
                           "up to second order; a higher-order gradient was requested")
    dy, x, weight, bias = ctx.saved_tensors
    acc = _stats_dtype(x)
    with torch.enable_grad():
        leaves = [t.detach().to(acc).requires_grad_() if t is not None else None for t in (dy, x, weight, bias)]
        y = ctx.spec.reference(F.batch_norm(leaves[1], None, None, leaves[2], leaves[3], True, 0.0, ctx.eps))
        wrt = [t for t in leaves[1:] if t is not None]
        first = torch.autograd.grad(y, wrt, leaves[0], create_graph=True)
        grads_in = [g for g, p in zip((g_dx, g_dw, g_db), (x, weight, bias)) if p is not None]
        pairs = [(f, g.to(acc)) for f, g in zip(first, grads_in) if g is not None]
        inputs = [t for t in leaves if t is not None]
        second = torch.autograd.grad([f for f, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True) \
            if pairs else [None] * len(inputs)
    it = iter(second)
    out = [next(it) if t is not None else None for t in leaves]
    out = [o.to(t.dtype) if o is not None else None for o, t in zip(out, (dy, x, weight, bias))]
    return (*out, None, None, None, None, None, None)


BATCH_NORM_ACT_BACKWARD = FusedOp("batch_norm_act_backward", _backward_forward, _backward_fake, _backward_setup,
                                  _backward_backward)


def _batch_stats(x, weight, running_mean, running_var, counter, momentum, eps) -> Tensor:
    """x's batch statistics (never differentiated themselves): ``BATCH_NORM_FINALIZE`` of the
    partials a convolution's epilogue attached to x, else ``BATCH_NORM_STATS`` of x."""
    w = weight.detach() if weight is not None else None
    momentum = None if momentum is None else float(momentum)
    partials = tagged_bn_partials(x)
    if partials is not None and partials[0].shape[1] == x.shape[1]:
        return BATCH_NORM_FINALIZE(*partials, w, running_mean, running_var, counter, momentum, float(eps))
    return BATCH_NORM_STATS(x.detach(), w, running_mean, running_var, counter, momentum, float(eps))


def _update_running(running_mean: Tensor, running_var: Tensor, mean: Tensor, unbiased_var: Tensor,
                    momentum: float) -> None:
    """running <- (1 - momentum) * running + momentum * batch value, both buffers in one launch
    when their dtype is the statistics' (the usual float32 buffers)."""
    with torch.no_grad():
        torch._foreach_lerp_([running_mean, running_var],
                             [mean.to(running_mean.dtype), unbiased_var.to(running_var.dtype)], momentum)


def _check(x, weight, bias, running_mean, running_var):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2:
        raise ValueError(f"x must be [N, C, ...] (at least 2-d), got shape {tuple(x.shape)}")
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
                   momentum: Optional[float] = 0.1, eps: float = 1e-5, act: str = "relu", alpha: Optional[float] = None,
                   gain: Optional[float] = None, clamp: Optional[float] = None, *,
                   num_batches_tracked: Optional[Tensor] = None) -> Tensor:
    """``clamp(act(F.batch_norm(x, ...)) * gain)`` with ``F.batch_norm``'s argument semantics.

    In training mode the running statistics (when given) are updated in place with
    ``momentum`` (unbiased variance, like torch), and ``num_batches_tracked`` (when given)
    counts the batch, as ``nn.BatchNorm2d`` does; ``momentum=None`` is the cumulative average
    1 / num_batches_tracked (then the counter is required). Differentiable twice in both modes.
    """
    _check(x, weight, bias, running_mean, running_var)
    spec = resolve_act(act, alpha, gain, clamp)
    if training and x.numel() // x.shape[1] <= 1:
        raise ValueError(f"expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    running = training and running_mean is not None and running_var is not None
    counter = num_batches_tracked if running else None
    if running and momentum is None and counter is None:
        raise ValueError("momentum=None (the cumulative average) needs num_batches_tracked")
    if _backend.backend_for(x) == "eager" or not training:
        if counter is not None:
            counter.add_(1)
        if momentum is None:
            momentum = 1.0 / float(counter) if running else 0.0
        z = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
        if _backend.backend_for(x) == "eager":
            return spec.reference(z)
        return bias_act(z, None, 1, spec.act, spec.alpha if spec.act == "lrelu" else None, spec.gain, spec.clamp)
    if running and momentum is None:  # the kernels read the counter, so it counts this batch first
        counter.add_(1)
    stats = _batch_stats(x, weight, running_mean if running else None, running_var if running else None, counter,
                         momentum, eps)
    return BATCH_NORM_ACT(x, weight, bias, stats, float(eps), spec.act, spec.alpha, spec.gain, spec.clamp)


def instance_norm_act(x: Tensor, running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None,
                      weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, use_input_stats: bool = True,
                      momentum: float = 0.1, eps: float = 1e-5, act: str = "relu", alpha: Optional[float] = None,
                      gain: Optional[float] = None, clamp: Optional[float] = None) -> Tensor:
    """``clamp(act(F.instance_norm(x, ...)) * gain)`` with ``F.instance_norm``'s semantics.

    With the instances' own statistics, x [N, C, ...] is the batch norm of its view [1, N * C, ...]
    (one "channel" per instance and channel), so it runs the fused ``batch_norm_act`` op, twice
    differentiable; running statistics (when given) become the batch means of the instance
    statistics, as torch's. With running statistics it is an affine map: ``F.instance_norm``,
    then the fused ``bias_act``.
    """
    _check(x, None, None, None, None)
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and (t.shape != (c,) or t.device != x.device):
            raise ValueError(f"{name} must have shape [{c}] on x's device {x.device}, got {tuple(t.shape)} on "
                             f"{t.device}")
    spec = resolve_act(act, alpha, gain, clamp)
    if x.numel() // (x.shape[0] * c) <= 1 and use_input_stats:
        raise ValueError(f"expected more than 1 spatial element when training, got input of shape {tuple(x.shape)}")
    if _backend.backend_for(x) == "eager":
        return spec.reference(F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum,
                                              eps))
    if not use_input_stats:
        z = F.instance_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
        return bias_act(z, None, 1, spec.act, spec.alpha if spec.act == "lrelu" else None, spec.gain, spec.clamp)
    n = x.shape[0]
    view = x.reshape(1, n * c, -1)
    repeated = [t.repeat(n) if t is not None else None for t in (weight, bias)]
    partials = tagged_bn_partials(x, instance=True)
    if partials is not None and partials[0].shape[1] == n * c:  # computed by the conv that made x
        stats = BATCH_NORM_FINALIZE(*partials, repeated[0].detach() if repeated[0] is not None else None, None, None,
                                    None, 0.0, float(eps))
    else:
        stats = _batch_stats(view, repeated[0], None, None, None, 0.0, eps)
    y = BATCH_NORM_ACT(view, *repeated, stats, float(eps), spec.act, spec.alpha, spec.gain, spec.clamp)
    if running_mean is not None and running_var is not None:
        _update_running(running_mean, running_var, stats[0].view(n, c).mean(0), stats[3].view(n, c).mean(0), momentum)
    return y.view(x.shape)
