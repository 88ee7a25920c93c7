"""bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), fused, differentiable twice.

Autograd structure (the StyleGAN2-ADA pattern): the backward of ``_BiasAct`` is itself an
autograd Function, ``_BiasActGrad`` (dx = dy * gain * act'(x + b) * m, with db reduced in
the same kernel pass), whose backward is again made of fused kernels. That is what the
R1 / WGAN-GP penalty needs: it differentiates dx with respect to the parameters.
"""
from __future__ import annotations

import torch

from .. import backend as _backend
from .activations import ActSpec, resolve_act

__all__ = ["bias_act"]


def _bias_shape(x: torch.Tensor, dim: int) -> list[int]:
    return [-1 if d == dim else 1 for d in range(x.dim())]


def _bias_act_ref(x: torch.Tensor, b: torch.Tensor | None, dim: int, spec: ActSpec) -> torch.Tensor:
    """The eager reference: separate add, activation, gain and clamp (plain torch ops)."""
    z = x if b is None else x + b.reshape(_bias_shape(x, dim))
    return spec.reference(z)


def _reduce_to_bias(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.sum(dim=[d for d in range(t.dim()) if d != dim])


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, spec):
        kernels = _backend.kernels()
        y = kernels.bias_act_fwd(x, b, dim, spec.act, spec.alpha, spec.gain, spec.clamp)
        ctx.save_for_backward(x, b)
        ctx.dim, ctx.spec = dim, spec
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        need_db = b is not None and ctx.needs_input_grad[1]
        dx, db = _BiasActGrad.apply(dy, x, b, ctx.dim, ctx.spec, need_db)
        return dx, db, None, None


class _BiasActGrad(torch.autograd.Function):
    """(dy, x, b) -> (dx, db): dx = dy * gain * act'(x + b) * m, db = sum(dx) per channel."""

    @staticmethod
    def forward(ctx, dy, x, b, dim, spec, need_db):
        kernels = _backend.kernels()
        dx, db = kernels.bias_act_bwd(dy, x, b, dim, spec.act, spec.alpha, spec.gain, spec.clamp,
                                      order=1, need_db=need_db)
        ctx.save_for_backward(dy, x, b)
        ctx.dim, ctx.spec, ctx.need_db = dim, spec, need_db
        return dx, db

    @staticmethod
    def backward(ctx, d_dx, d_db):
        dy, x, b = ctx.saved_tensors
        dim, spec = ctx.dim, ctx.spec
        # db = sum(dx), so an upstream gradient on db reaches every element of dx.
        g = d_dx if d_dx is not None else torch.zeros_like(x)
        if d_db is not None:
            g = g + d_db.reshape(_bias_shape(x, dim)).to(g.dtype)
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy, _ = _BiasActGrad.apply(g, x, b, dim, spec, False)
        if spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            need_db = b is not None and ctx.needs_input_grad[2]
            d_x, d_b = _BiasActGrad2.apply(g, dy, x, b, dim, spec, need_db)
        return d_dy, d_x, d_b, None, None, None


class _BiasActGrad2(torch.autograd.Function):
    """The second-order term g * dy * gain * act''(x + b) * m (and its bias reduction)."""

    @staticmethod
    def forward(ctx, g, dy, x, b, dim, spec, need_db):
        kernels = _backend.kernels()
        return kernels.bias_act_bwd(g, x, b, dim, spec.act, spec.alpha, spec.gain, spec.clamp,
                                    order=2, dy=dy, need_db=need_db)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("fastgan.functional.bias_act supports gradients up to second order; "
                           "a third-order gradient was requested")


def _check_inputs(x, b, dim):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
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


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
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
    if torch.compiler.is_compiling():  # one opaque node for torch.compile (fastgan.library)
        from .. import library
        return library.bias_act(x, b, dim, spec)
    if _backend.backend_for(x) == "eager":
        return _bias_act_ref(x, b, dim, spec)
    return _BiasAct.apply(x, b, dim, spec)
