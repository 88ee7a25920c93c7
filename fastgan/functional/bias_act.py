"""bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), fused, differentiable twice.

Ops (``fused_op.FusedOp``; z = x + b broadcast along ``dim``, m = [|act(z) * gain| <= clamp]):

==============  ==============================================  ===============================
op              computes                                        its backward
==============  ==============================================  ===============================
bias_act        y                                               bias_act_grad
bias_act_grad   dx = dy * gain * act'(z) * m,  db = sum dx      bias_act_grad (w.r.t. dy) and
                                                                bias_act_grad2 (w.r.t. x, b)
bias_act_grad2  g * dy * gain * act''(z) * m,  and its sum      none: a third order raises
==============  ==============================================  ===============================

This is StyleGAN2-ADA's structure: the gradient of the gradient is itself a fused kernel,
which is what an R1 or WGAN-GP penalty differentiates. The eager backend runs
``_bias_act_ref`` (plain torch, any order).
"""
from typing import Optional

import torch
from torch import Tensor

from .. import backend as _backend
from .activations import ActSpec, resolve_act
from .fused_op import FusedOp, fresh_like

__all__ = ["bias_act", "bias_shape"]


def bias_shape(x: Tensor, dim: int) -> list:
    """The shape that broadcasts a per-channel vector along ``dim`` of ``x``."""
    return [-1 if d == dim else 1 for d in range(x.dim())]


def _bias_act_ref(x: Tensor, b: Optional[Tensor], dim: int, spec: ActSpec) -> Tensor:
    """The eager reference: separate add, activation, gain and clamp (plain torch ops)."""
    z = x if b is None else x + b.reshape(bias_shape(x, dim))
    return spec.reference(z)


# ----------------------------------------------------------------------------- bias_act

def _forward(x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float, gain: float,
             clamp: Optional[float]) -> Tensor:
    return fresh_like(_backend.kernels().bias_act_fwd(x, b, dim, act, alpha, gain, clamp), x)


def _setup(ctx, inputs, output):
    x, b, *args = inputs
    ctx.save_for_backward(x, b)
    ctx.args = args


def _backward(ctx, dy):
    x, b = ctx.saved_tensors
    need_db = b is not None and ctx.needs_input_grad[1]
    dx, db = BIAS_ACT_GRAD(dy, x, b, *ctx.args, need_db)
    return dx, (db if need_db else None), None, None, None, None, None


BIAS_ACT = FusedOp("bias_act", _forward, lambda x, *rest: torch.empty_like(x), _setup, _backward)


# ----------------------------------------------------------------------------- bias_act_grad

def _grad_fake(dy, x, b, dim, act, alpha, gain, clamp, need_db):
    return torch.empty_like(x), x.new_empty((x.shape[dim],) if need_db else (0,))


def _grad_forward(dy: Tensor, x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float, gain: float,
                  clamp: Optional[float], need_db: bool) -> tuple[Tensor, Tensor]:
    dx, db = _backend.kernels().bias_act_bwd(dy, x, b, dim, act, alpha, gain, clamp, order=1, need_db=need_db)
    return fresh_like(dx, x, dy), (db if need_db else x.new_empty((0,)))


def _grad_setup(ctx, inputs, output):
    dy, x, b, *args, need_db = inputs
    ctx.save_for_backward(dy, x, b)
    ctx.args, ctx.need_db = args, need_db
    ctx.set_materialize_grads(False)


def _grad_backward(ctx, d_dx, d_db):
    dy, x, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp = ctx.args
    g = d_dx
    if d_db is not None and ctx.need_db:  # db = sum(dx): its gradient reaches every element of dx
        g_db = d_db.reshape(bias_shape(x, dim)).to(x.dtype)
        g = g_db.expand_as(x) if g is None else g + g_db
    d_dy = d_x = d_b = None
    if g is not None:
        if ctx.needs_input_grad[0]:
            d_dy = BIAS_ACT_GRAD(g, x, b, *ctx.args, False)[0]
        if ActSpec(act, alpha, gain, clamp).has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            need_db = b is not None and ctx.needs_input_grad[2]
            d_x, d_b = BIAS_ACT_GRAD2(g, dy, x, b, *ctx.args, need_db)
            d_x = d_x if ctx.needs_input_grad[1] else None
            d_b = d_b if need_db else None
        elif b is not None and ctx.needs_input_grad[2] and (act != "linear" or clamp is not None):
            # act'' = 0 but act' depends on x + b (relu, lrelu, a clamp): b's gradient is zero,
            # not None, as torch's (an optimizer step on this gradient alone, e.g. a lazy R1 step,
            # still moves b by its Adam moments); a linear act' does not depend on b: None
            d_b = torch.zeros_like(b)
    return d_dy, d_x, d_b, None, None, None, None, None, None


BIAS_ACT_GRAD = FusedOp("bias_act_grad", _grad_forward, _grad_fake, _grad_setup, _grad_backward)


# ----------------------------------------------------------------------------- bias_act_grad2

def _grad2_forward(g: Tensor, dy: Tensor, x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float,
                   gain: float, clamp: Optional[float], need_db: bool) -> tuple[Tensor, Tensor]:
    out, db = _backend.kernels().bias_act_bwd(g, x, b, dim, act, alpha, gain, clamp, order=2, dy=dy,
                                              need_db=need_db)
    return fresh_like(out, x, g, dy), (db if need_db else x.new_empty((0,)))


BIAS_ACT_GRAD2 = FusedOp("bias_act_grad2", _grad2_forward, lambda g, dy, *rest: _grad_fake(dy, *rest),
                         limit="bias_act supports gradients up to second order")


# ----------------------------------------------------------------------------- public

def _check_inputs(x, b, dim):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be an int in [{-x.dim()}, {x.dim() - 1}] for x of shape "
                         f"{tuple(x.shape)}, got {dim!r}")
    dim %= x.dim()
    if b is not None:
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"b must be a torch.Tensor or None, got {type(b).__name__}")
        if b.dim() != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"b must be 1-d of length x.shape[{dim}] = {x.shape[dim]}, "
                             f"got shape {tuple(b.shape)}")
        if b.dtype != x.dtype:
            raise TypeError(f"b must have x's dtype {x.dtype}, got {b.dtype}")
        if b.device != x.device:
            raise ValueError(f"b must be on x's device {x.device}, got {b.device}")
    return dim


def bias_act(x: Tensor, b: Optional[Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None) -> Tensor:
    """Fused ``clamp(act(x + b) * gain, -clamp, clamp)`` with StyleGAN2-ADA semantics.

    Args:
        x: floating-point tensor (float16, bfloat16, float32, float64), any layout.
        b: bias of shape ``[x.shape[dim]]`` and x's dtype, or None.
        dim: the channel dim the bias is added along.
        act: linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus or swish.
        alpha: the lrelu negative slope (default 0.2); only valid for lrelu.
        gain: output scale (default sqrt(2) for relu, lrelu and swish, else 1).
        clamp: clamp the output to [-clamp, clamp] (None: no clamp); gradient is zero where clamped.

    Differentiable twice (first and second order) with respect to x and b. Half precision
    inputs are computed in float32 and stored back in their dtype.
    """
    dim = _check_inputs(x, b, dim)
    spec = resolve_act(act, alpha, gain, clamp)
    if _backend.backend_for(x) == "eager":
        return _bias_act_ref(x, b, dim, spec)
    return BIAS_ACT(x, b, dim, spec.act, spec.alpha, spec.gain, spec.clamp)
