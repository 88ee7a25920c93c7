"""fma: y = a * b + c with broadcasting, one pass; differentiable to any order.

==========  ==========================  ==================================================
op          computes                    its backward
==========  ==========================  ==================================================
fma         a * b (+ c, when given)     da = fma(g, b) summed to a's shape, db = fma(g, a)
                                        summed to b's shape, dc = g summed to c's shape
==========  ==========================  ==================================================

The backward is built from fma itself (and torch's sum_to_size), so every order of gradient
exists. The eager backend runs ``torch.addcmul(c, a, b)``. More than 4 broadcast dims run
the eager reference.
"""
from typing import Optional

import torch
from torch import Tensor

from .. import backend as _backend
from ..kernels.common import is_channels_last
from .fused_op import FusedOp

__all__ = ["fma"]


def _out_format(a: Tensor, shape) -> torch.memory_format:
    """channels_last when a has the full output shape and is channels_last, else NCHW."""
    return torch.channels_last if tuple(a.shape) == tuple(shape) and is_channels_last(a) else torch.contiguous_format


def _shape(a, b, c):
    return torch.broadcast_shapes(a.shape, b.shape, *(() if c is None else (c.shape,)))


def _forward(a: Tensor, b: Tensor, c: Optional[Tensor]) -> Tensor:
    return _backend.kernels().fma_fwd(a, b, c, _out_format(a, _shape(a, b, c)))


def _fake(a, b, c):
    shape = _shape(a, b, c)
    return torch.empty(shape, dtype=a.dtype, device=a.device, memory_format=_out_format(a, shape))


def _setup(ctx, inputs, output):
    a, b, c = inputs
    ctx.save_for_backward(a, b)
    ctx.c_shape = None if c is None else c.shape


def _backward(ctx, g):
    a, b = ctx.saved_tensors
    need = ctx.needs_input_grad
    da = FMA(g, b, None).sum_to_size(a.shape) if need[0] else None
    db = FMA(g, a, None).sum_to_size(b.shape) if need[1] else None
    dc = g.sum_to_size(ctx.c_shape) if ctx.c_shape is not None and need[2] else None
    return da, db, dc


FMA = FusedOp("fma", _forward, _fake, _setup, _backward)


def fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a * b + c`` (torch.addcmul(c, a, b)) in one pass: tensors of one floating dtype and
    device, broadcast together; the output is channels_last when ``a`` is (and has the output's
    shape). Differentiable to any order in a, b and c."""
    for name, t in (("a", a), ("b", b), ("c", c)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dtype != a.dtype:
            raise TypeError(f"{name} must have a's dtype {a.dtype}, got {t.dtype}")
        if t.device != a.device:
            raise ValueError(f"{name} must be on a's device {a.device}, got {t.device}")
    try:
        shape = _shape(a, b, c)
    except RuntimeError as exc:
        raise ValueError(f"a {tuple(a.shape)}, b {tuple(b.shape)} and c {tuple(c.shape)} do not broadcast "
                         "together") from exc
    if _backend.backend_for(a) == "eager" or len(shape) > 4:
        return torch.addcmul(c, a, b)
    return FMA(a, b, c)
