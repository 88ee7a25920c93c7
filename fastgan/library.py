"""fastgan's fused ops registered with ``torch.library``: one opaque op per fused kernel.

Why: ``torch.compile`` cannot trace into fastgan's ``torch.autograd.Function`` classes (their
forward launches Triton kernels from Python). Registered as custom ops with fake (meta)
implementations and registered autograd, each fused op is a single node in a compiled graph,
with no graph break, and ``torch.library.opcheck`` validates the registrations.

How the public API uses them: ``fastgan.functional.bias_act``, ``conv2d_act``,
``conv_transpose2d_act``, ``batch_norm_act`` (training mode; eval mode is ``F.batch_norm`` +
``bias_act``), ``d_loss``, ``g_loss`` and the penalty term of ``gradient_penalty`` route through
these ops **only while ``torch.compiler.is_compiling()``**, whatever the backend: each op
chooses the backend when it runs (``fastgan.backend``), so ``use_backend`` keeps working inside
compiled code. Eager execution keeps the autograd.Function path: no dispatcher overhead, and
``gradfix.no_weight_gradients()`` keeps working (the compiled path always computes weight
gradients: a compiled backward is traced once, so a runtime flag cannot be honoured there).
Nothing imports this module until it is needed (the first compiled call imports it);
``import fastgan.library`` registers the ops for direct use as ``torch.ops.fastgan.<op>``.

Ops (namespace ``fastgan``), their autograd and its order:

=============================  ==========================================  ==================
op                             returns                                     differentiable
=============================  ==========================================  ==================
bias_act                       y                                           twice
bias_act_grad                  (dx, db)      (the backward of bias_act)    once (-> bias_act_grad2)
bias_act_grad2                 (d_x, d_b)    (act'' term)                  no (third order raises)
conv2d_act                     (y, z)        z = conv(x, w) pre-bias       twice
conv_transpose2d_act           (y, z)                                      twice
batch_norm_act                 (y, mean, var)  training-mode statistics    once
batch_norm_act_backward        (dx, sum_g, sum_gx)                         no
gan_loss                       (loss, d_real, d_fake)                      once
gan_loss_backward              (g_real, g_fake)                            no
grad_penalty                   (penalty, coef)                             once
grad_penalty_backward          dgrad                                       no
=============================  ==========================================  ==================

The conv ops return ``z`` (``store_z=True``) so that their backward applies the fused
``bias_act_grad`` to the saved pre-activation, which is saved *as an output*: in a
``create_graph`` pass it stays connected through the op itself, so second-order gradients
keep the act''(z) terms. Their backward computes dx and dw with
``aten.convolution_backward`` (the vendor kernels; differentiable twice by torch's own
formula) instead of the eager path's fastgan adjoint convolution, so that compiled graphs
get the compiler's native convolution backward. With ``store_z=False`` z is an empty tensor;
that is only valid when no gradient is needed or the epilogue is linear without clamp.

Ops whose backward "raises" are first- (or second-) order by design, as their eager
autograd.Function counterparts; ``opcheck`` runs them with inputs that do not require grad.

Every op also runs with the "eager" backend (plain torch, used when no Triton path
exists): forward ops evaluate the reference, gradient ops differentiate the reference with
``torch.func.vjp`` (the reference is the definition of each op).

``triton_op`` is not used: the launchers in ``fastgan.kernels`` pick block sizes and the
conv implementation per call (``conv_dispatch``); ``custom_op`` keeps them opaque, which is
what a fused kernel should be to the compiler.

This module has no ``from __future__ import annotations``: ``custom_op`` infers the schema
from the annotations.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backend as _backend
from .functional import conv as _conv
from .functional.activations import ActSpec
from .functional.bias_act import _bias_act_ref, _bias_shape

__all__ = ["OPS", "bias_act", "conv_act", "batch_norm_act", "gan_loss", "grad_penalty"]

OPS = ("bias_act", "bias_act_grad", "bias_act_grad2", "conv2d_act", "conv_transpose2d_act",
       "batch_norm_act", "batch_norm_act_backward", "gan_loss", "gan_loss_backward",
       "grad_penalty", "grad_penalty_backward")


def _eager(*tensors) -> bool:
    return _backend.backend_for(*[t for t in tensors if t is not None]) == "eager"


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _like(out: Tensor, x: Tensor, *inputs: Optional[Tensor]) -> Tensor:
    """``out`` with the strides of ``torch.empty_like(x)`` (what the fake implementations
    promise) and sharing memory with none of ``x, *inputs`` (custom ops must not return aliases:
    the eager references can return an input, e.g. for a linear epilogue). The kernels keep a
    dense input's layout; only a non-dense input can differ."""
    aliased = any(t is not None and t.numel() and out.numel() and
                  out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in (x, *inputs))
    if out.stride() == x.stride() and not aliased:
        return out
    ref = torch.empty_like(x, dtype=out.dtype)
    if ref.stride() == out.stride() and not aliased:
        return out
    return ref.copy_(out)


def _spec(act, alpha, gain, clamp) -> ActSpec:
    return ActSpec(act, float(alpha), float(gain), None if clamp is None else float(clamp))


def _reduce(t: Tensor, dim: int) -> Tensor:
    return t.sum(dim=[d for d in range(t.dim()) if d != dim])


def _raise_order(name: str, order: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"fastgan::{name} supports gradients up to {order} order; a higher-order "
                           "gradient was requested")
    return backward


# ============================================================================= bias_act

@torch.library.custom_op("fastgan::bias_act", mutates_args=())
def _bias_act_op(x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float, gain: float,
                 clamp: Optional[float]) -> Tensor:
    spec, dim = _spec(act, alpha, gain, clamp), dim % x.dim()
    if _eager(x, b):
        with torch.no_grad():
            return _like(_bias_act_ref(x, b, dim, spec), x, b)
    y = _backend.kernels().bias_act_fwd(x, b, dim, act, spec.alpha, spec.gain, spec.clamp)
    return _like(y, x)


@_bias_act_op.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


def _bias_act_setup(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.args = (dim, act, alpha, gain, clamp)


def _bias_act_backward(ctx, dy):
    x, b = ctx.saved_tensors
    need_db = b is not None and ctx.needs_input_grad[1]
    dx, db = torch.ops.fastgan.bias_act_grad(dy, x, b, *ctx.args, need_db)
    return (dx if ctx.needs_input_grad[0] else None), (db if need_db else None), None, None, None, None, None


_bias_act_op.register_autograd(_bias_act_backward, setup_context=_bias_act_setup)


def _ref_dx(dy, x, b, dim, spec):
    """dy * gain * act'(x + b) * m by differentiating the reference."""
    _, vjp = torch.func.vjp(lambda t: _bias_act_ref(t, b, dim, spec), x)
    return vjp(dy)[0]


def _db(out: Tensor, x: Tensor, dim: int, need_db: bool) -> Tensor:
    if not need_db:
        return x.new_empty((0,))
    return _reduce(out.to(_acc(x)), dim).to(x.dtype)


@torch.library.custom_op("fastgan::bias_act_grad", mutates_args=())
def _bias_act_grad_op(dy: Tensor, x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float,
                      gain: float, clamp: Optional[float], need_db: bool) -> Tuple[Tensor, Tensor]:
    spec, dim = _spec(act, alpha, gain, clamp), dim % x.dim()
    if _eager(dy, x, b):
        dx = _ref_dx(dy, x, b, dim, spec)
        return _like(dx, x, dy, b), _db(dx, x, dim, need_db)
    dx, db = _backend.kernels().bias_act_bwd(dy, x, b, dim, act, spec.alpha, spec.gain, spec.clamp,
                                             order=1, need_db=need_db)
    return _like(dx, x), (db if need_db else x.new_empty((0,)))


@_bias_act_grad_op.register_fake
def _(dy, x, b, dim, act, alpha, gain, clamp, need_db):
    return torch.empty_like(x), x.new_empty((x.shape[dim],) if need_db else (0,))


def _bias_act_grad_setup(ctx, inputs, output):
    dy, x, b, dim, act, alpha, gain, clamp, need_db = inputs
    ctx.save_for_backward(dy, x, b)
    ctx.args = (dim, act, alpha, gain, clamp)
    ctx.need_db = need_db
    ctx.set_materialize_grads(False)


def _bias_act_grad_backward(ctx, d_dx, d_db):
    dy, x, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp = ctx.args
    g = d_dx
    if d_db is not None and ctx.need_db:  # db = sum(dx): its gradient reaches every element of dx
        g_db = d_db.reshape(_bias_shape(x, dim)).to(x.dtype)
        g = g_db.expand_as(x) if g is None else g + g_db
    d_dy = d_x = d_b = None
    if g is not None:
        if ctx.needs_input_grad[0]:
            d_dy = torch.ops.fastgan.bias_act_grad(g, x, b, dim, act, alpha, gain, clamp, False)[0]
        if _spec(act, alpha, gain, clamp).has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            need_db = b is not None and ctx.needs_input_grad[2]
            d_x, d_b = torch.ops.fastgan.bias_act_grad2(g, dy, x, b, dim, act, alpha, gain, clamp, need_db)
            d_x = d_x if ctx.needs_input_grad[1] else None
            d_b = d_b if need_db else None
    return d_dy, d_x, d_b, None, None, None, None, None, None


_bias_act_grad_op.register_autograd(_bias_act_grad_backward, setup_context=_bias_act_grad_setup)


@torch.library.custom_op("fastgan::bias_act_grad2", mutates_args=())
def _bias_act_grad2_op(g: Tensor, dy: Tensor, x: Tensor, b: Optional[Tensor], dim: int, act: str,
                       alpha: float, gain: float, clamp: Optional[float], need_db: bool) -> Tuple[Tensor, Tensor]:
    spec, dim = _spec(act, alpha, gain, clamp), dim % x.dim()
    if _eager(g, dy, x, b):
        _, vjp = torch.func.vjp(lambda t: _ref_dx(dy, t, b, dim, spec), x)
        out = vjp(g)[0]
        return _like(out, x, g, dy, b), _db(out, x, dim, need_db)
    out, db = _backend.kernels().bias_act_bwd(g, x, b, dim, act, spec.alpha, spec.gain, spec.clamp,
                                              order=2, dy=dy, need_db=need_db)
    return _like(out, x), (db if need_db else x.new_empty((0,)))


@_bias_act_grad2_op.register_fake
def _(g, dy, x, b, dim, act, alpha, gain, clamp, need_db):
    return torch.empty_like(x), x.new_empty((x.shape[dim],) if need_db else (0,))


_bias_act_grad2_op.register_autograd(_raise_order("bias_act_grad2", "second"))


def bias_act(x: Tensor, b: Optional[Tensor], dim: int, spec: ActSpec) -> Tensor:
    """``torch.ops.fastgan.bias_act`` with a resolved :class:`ActSpec` (arguments checked by the caller)."""
    return torch.ops.fastgan.bias_act(x, b, dim, spec.act, spec.alpha, spec.gain, spec.clamp)


# ============================================================================= conv2d_act / conv_transpose2d_act

def _out_format(x: Tensor, w: Tensor) -> torch.memory_format:
    """channels_last when x or w is (as the kernels and F.conv2d decide), else NCHW."""
    def cl(t):
        return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if cl(x) or cl(w) else torch.contiguous_format


def _conv_out_shape(x: Tensor, w: Tensor, geom) -> tuple:
    n, _, h, wd = x.shape
    kh, kw = w.shape[2], w.shape[3]
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    if geom.transposed:
        oph, opw = geom.output_padding
        return (n, w.shape[1] * geom.groups, (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1,
                (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1)
    return (n, w.shape[0], (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


def _conv_impl(x, w, b, geom, spec: ActSpec, store_z: bool):
    if _eager(x, w, b):
        with torch.no_grad():
            z = _conv._vendor_conv(x, w, geom)
            y = _bias_act_ref(z, b, 1, spec)
            if y is z:
                y = z.clone()
    else:
        y, z = _conv._forward(x, w, b, geom, spec, store_z=store_z)
    fmt = _out_format(x, w)
    y = y if y.is_contiguous(memory_format=fmt) else y.contiguous(memory_format=fmt)
    if not store_z:
        return y, x.new_empty((0,))
    if z is y:  # identity epilogue: outputs must not alias
        z = y.clone(memory_format=fmt)
    z = z if z.is_contiguous(memory_format=fmt) else z.contiguous(memory_format=fmt)
    return y, z


def _conv_fake(x, w, geom, store_z):
    fmt = _out_format(x, w)
    shape = _conv_out_shape(x, w, geom)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    z = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt) if store_z else x.new_empty((0,))
    return y, z


def _pair(v) -> tuple:
    return (int(v[0]), int(v[1]))


def _geom2d(stride, padding, dilation, groups) -> "_conv.ConvGeom":
    return _conv.ConvGeom(False, _pair(stride), _pair(padding), _pair(dilation), int(groups))


def _geom_t(stride, padding, output_padding, groups, dilation) -> "_conv.ConvGeom":
    return _conv.ConvGeom(True, _pair(stride), _pair(padding), _pair(dilation), int(groups), _pair(output_padding))


@torch.library.custom_op("fastgan::conv2d_act", mutates_args=())
def _conv2d_act_op(x: Tensor, w: Tensor, b: Optional[Tensor], stride: List[int], padding: List[int],
                   dilation: List[int], groups: int, act: str, alpha: float, gain: float, clamp: Optional[float],
                   store_z: bool) -> Tuple[Tensor, Tensor]:
    return _conv_impl(x, w, b, _geom2d(stride, padding, dilation, groups), _spec(act, alpha, gain, clamp), store_z)


@_conv2d_act_op.register_fake
def _(x, w, b, stride, padding, dilation, groups, act, alpha, gain, clamp, store_z):
    return _conv_fake(x, w, _geom2d(stride, padding, dilation, groups), store_z)


@torch.library.custom_op("fastgan::conv_transpose2d_act", mutates_args=())
def _conv_transpose2d_act_op(x: Tensor, w: Tensor, b: Optional[Tensor], stride: List[int], padding: List[int],
                             output_padding: List[int], groups: int, dilation: List[int], act: str, alpha: float,
                             gain: float, clamp: Optional[float], store_z: bool) -> Tuple[Tensor, Tensor]:
    return _conv_impl(x, w, b, _geom_t(stride, padding, output_padding, groups, dilation),
                      _spec(act, alpha, gain, clamp), store_z)


@_conv_transpose2d_act_op.register_fake
def _(x, w, b, stride, padding, output_padding, groups, dilation, act, alpha, gain, clamp, store_z):
    return _conv_fake(x, w, _geom_t(stride, padding, output_padding, groups, dilation), store_z)


def _conv_setup(ctx, geom, spec, x, w, b, store_z, output):
    ctx.geom, ctx.spec, ctx.store_z = geom, spec, store_z
    ctx.set_materialize_grads(False)
    if store_z:
        ctx.save_for_backward(x, w, b, output[1])  # z saved as an output (second order, see the docstring)
    else:
        ctx.save_for_backward(x, w, b)


def _conv2d_setup(ctx, inputs, output):
    x, w, b, stride, padding, dilation, groups, act, alpha, gain, clamp, store_z = inputs
    _conv_setup(ctx, _geom2d(stride, padding, dilation, groups), _spec(act, alpha, gain, clamp), x, w, b,
                store_z, output)


def _conv_transpose2d_setup(ctx, inputs, output):
    x, w, b, stride, padding, output_padding, groups, dilation, act, alpha, gain, clamp, store_z = inputs
    _conv_setup(ctx, _geom_t(stride, padding, output_padding, groups, dilation), _spec(act, alpha, gain, clamp),
                x, w, b, store_z, output)


def _conv_backward(ctx, dy, dz_extra):
    if ctx.store_z:
        x, w, b, z = ctx.saved_tensors
    else:
        (x, w, b), z = ctx.saved_tensors, None
    geom, spec = ctx.geom, ctx.spec
    need = ctx.needs_input_grad
    want_b = b is not None and need[2]
    dz = db = None
    if dy is not None:
        if z is not None:
            dz, db = torch.ops.fastgan.bias_act_grad(dy, z, b, 1, spec.act, spec.alpha, spec.gain, spec.clamp,
                                                     want_b)
        elif not _conv._needs_z(spec):  # linear, no clamp: act' == 1
            dz = dy * spec.gain if spec.gain != 1 else dy
            if want_b:
                db = dz.sum(dim=(0, 2, 3))
        else:
            raise RuntimeError(f"fastgan::{geom.op}_act was called with store_z=False and act={spec.act!r}; "
                               "its backward needs the pre-activation (call it with store_z=True)")
    if dz_extra is not None and ctx.store_z:
        dz = dz_extra if dz is None else dz + dz_extra
    dx = dw = None
    if dz is not None and (need[0] or need[1]):
        dx, dw, _ = torch.ops.aten.convolution_backward(
            dz, x, w, None, list(geom.stride), list(geom.padding), list(geom.dilation), geom.transposed,
            list(geom.output_padding), geom.groups, [bool(need[0]), bool(need[1]), False])
    rest = (None,) * (10 if geom.transposed else 9)
    return (dx if need[0] else None), (dw if need[1] else None), (db if want_b else None), *rest


_conv2d_act_op.register_autograd(_conv_backward, setup_context=_conv2d_setup)
_conv_transpose2d_act_op.register_autograd(_conv_backward, setup_context=_conv_transpose2d_setup)


def conv_act(x: Tensor, w: Tensor, b: Optional[Tensor], geom, spec: ActSpec) -> Tensor:
    """y of ``torch.ops.fastgan.conv2d_act`` / ``conv_transpose2d_act`` for a 4-d x (checked by the
    caller); z is requested only when a backward will need it."""
    store_z = (torch.is_grad_enabled() and _conv._needs_z(spec)
               and any(t is not None and t.requires_grad for t in (x, w, b)))
    if geom.transposed:
        y, _ = torch.ops.fastgan.conv_transpose2d_act(
            x, w, b, list(geom.stride), list(geom.padding), list(geom.output_padding), geom.groups,
            list(geom.dilation), spec.act, spec.alpha, spec.gain, spec.clamp, store_z)
    else:
        y, _ = torch.ops.fastgan.conv2d_act(x, w, b, list(geom.stride), list(geom.padding), list(geom.dilation),
                                            geom.groups, spec.act, spec.alpha, spec.gain, spec.clamp, store_z)
    return y


# ============================================================================= batch_norm_act (training mode)

def _bn_ref_stats(x: Tensor):
    var, mean = torch.var_mean(x.to(_acc(x)), dim=[d for d in range(x.dim()) if d != 1], correction=0)
    return mean, var


@torch.library.custom_op("fastgan::batch_norm_act", mutates_args=())
def _batch_norm_act_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, act: str,
                       alpha: float, gain: float, clamp: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
    spec = _spec(act, alpha, gain, clamp)
    if _eager(x, weight, bias):
        with torch.no_grad():
            mean, var = _bn_ref_stats(x)
            z = F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
            return _like(spec.reference(z), x), mean, var
    K = _backend.kernels()
    mean, var = K.bn_stats(x, 1)
    scale, shift = _bn_affine(mean, var, weight, bias, eps)
    y = K.bias_act_fwd(x, shift, 1, spec.act, spec.alpha, spec.gain, spec.clamp, scale=scale)
    return _like(y, x), mean, var


def _bn_affine(mean, var, weight, bias, eps):
    invstd = torch.rsqrt(var + eps)
    scale = invstd * weight.to(invstd.dtype) if weight is not None else invstd
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(shift.dtype)
    return scale, shift


@_batch_norm_act_op.register_fake
def _(x, weight, bias, eps, act, alpha, gain, clamp):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,), dtype=_acc(x)), x.new_empty((c,), dtype=_acc(x))


def _batch_norm_act_setup(ctx, inputs, output):
    x, weight, bias, eps, act, alpha, gain, clamp = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps, ctx.act_args = eps, (act, alpha, gain, clamp)


def _batch_norm_act_backward(ctx, dy, _dmean, _dvar):
    x, weight, bias, mean, var = ctx.saved_tensors
    scale, shift = _bn_affine(mean, var, weight, bias, ctx.eps)
    invstd = torch.rsqrt(var + ctx.eps)
    dx, sum_g, sum_gx = torch.ops.fastgan.batch_norm_act_backward(dy, x, mean, invstd, scale, shift, *ctx.act_args)
    need = ctx.needs_input_grad
    dw = sum_gx.to(weight.dtype) if weight is not None and need[1] else None
    db = sum_g.to(bias.dtype) if bias is not None and need[2] else None
    return (dx if need[0] else None), dw, db, None, None, None, None, None


_batch_norm_act_op.register_autograd(_batch_norm_act_backward, setup_context=_batch_norm_act_setup)


@torch.library.custom_op("fastgan::batch_norm_act_backward", mutates_args=())
def _batch_norm_act_backward_op(dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, shift: Tensor,
                                act: str, alpha: float, gain: float,
                                clamp: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
    spec = _spec(act, alpha, gain, clamp)
    if _eager(dy, x):
        acc = _acc(x)
        shape = _bias_shape(x, 1)
        dims = [d for d in range(x.dim()) if d != 1]
        xa = x.to(acc)
        xhat = (xa - mean.reshape(shape)) * invstd.reshape(shape)
        a = xa * scale.reshape(shape) + shift.reshape(shape)
        _, vjp = torch.func.vjp(spec.reference, a)
        g = vjp(dy.to(acc))[0]
        m = x.numel() // x.shape[1]
        sum_g, sum_gx = g.sum(dims), (g * xhat).sum(dims)
        dx = scale.reshape(shape) * (g - (sum_g / m).reshape(shape) - xhat * (sum_gx / m).reshape(shape))
        return _like(dx.to(x.dtype), x, dy), sum_g, sum_gx
    dx, sum_g, sum_gx = _backend.kernels().bn_act_bwd(dy, x, mean, invstd, scale, shift, 1, act, spec.alpha,
                                                      spec.gain, spec.clamp)
    return _like(dx, x), sum_g, sum_gx


@_batch_norm_act_backward_op.register_fake
def _(dy, x, mean, invstd, scale, shift, act, alpha, gain, clamp):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,), dtype=_acc(x)), x.new_empty((c,), dtype=_acc(x))


_batch_norm_act_backward_op.register_autograd(_raise_order("batch_norm_act_backward", "first"))


def batch_norm_act(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, spec: ActSpec):
    """(y, mean, biased var) of a training-mode batch norm + activation (statistics not differentiable)."""
    return torch.ops.fastgan.batch_norm_act(x, weight, bias, float(eps), spec.act, spec.alpha, spec.gain, spec.clamp)


# ============================================================================= GAN losses

def _loss_ref(real, fake, real_term, fake_term):
    from .functional.losses import _ref_term

    def f(r, fk):
        loss = _ref_term(fk, fake_term).mean()
        return loss if r is None else _ref_term(r, real_term).mean() + loss

    fake_acc = fake.reshape(-1).to(_acc(fake))
    if real is None:
        loss, vjp = torch.func.vjp(lambda fk: f(None, fk), fake_acc)
        (d_fake,) = vjp(torch.ones_like(loss))
        return loss, fake.new_empty((0,)), d_fake.to(fake.dtype)
    real_acc = real.reshape(-1).to(_acc(real))
    loss, vjp = torch.func.vjp(f, real_acc, fake_acc)
    d_real, d_fake = vjp(torch.ones_like(loss))
    return loss, d_real.to(real.dtype), d_fake.to(fake.dtype)


@torch.library.custom_op("fastgan::gan_loss", mutates_args=())
def _gan_loss_op(real: Optional[Tensor], fake: Tensor, real_term: Optional[str],
                 fake_term: str) -> Tuple[Tensor, Tensor, Tensor]:
    if _eager(real, fake):
        with torch.no_grad():
            return _loss_ref(real, fake, real_term, fake_term)
    loss, d_real, d_fake = _backend.kernels().gan_loss(real, fake, real_term, fake_term)
    if d_real is None:
        d_real = fake.new_empty((0,))
    return loss, d_real, d_fake


@_gan_loss_op.register_fake
def _(real, fake, real_term, fake_term):
    d_real = fake.new_empty((0,)) if real is None else real.new_empty((real.numel(),))
    return fake.new_empty((), dtype=_acc(fake)), d_real, fake.new_empty((fake.numel(),))


def _gan_loss_setup(ctx, inputs, output):
    real, fake, _, _ = inputs
    _, d_real, d_fake = output
    # saved as (differentiable) outputs: a second derivative then reaches gan_loss_backward,
    # whose autograd raises a clear "first order" error instead of returning zeros
    ctx.save_for_backward(d_real, d_fake)
    ctx.real_shape = real.shape if real is not None else None
    ctx.fake_shape = fake.shape


def _gan_loss_backward(ctx, d_loss, _d_real, _d_fake):
    d_real, d_fake = ctx.saved_tensors
    g_real, g_fake = torch.ops.fastgan.gan_loss_backward(d_loss, d_real, d_fake)
    g_real = g_real.reshape(ctx.real_shape) if ctx.real_shape is not None and ctx.needs_input_grad[0] else None
    g_fake = g_fake.reshape(ctx.fake_shape) if ctx.needs_input_grad[1] else None
    return g_real, g_fake, None, None


_gan_loss_op.register_autograd(_gan_loss_backward, setup_context=_gan_loss_setup)


@torch.library.custom_op("fastgan::gan_loss_backward", mutates_args=())
def _gan_loss_backward_op(d_loss: Tensor, d_real: Tensor, d_fake: Tensor) -> Tuple[Tensor, Tensor]:
    return d_real * d_loss, d_fake * d_loss


@_gan_loss_backward_op.register_fake
def _(d_loss, d_real, d_fake):
    return torch.empty_like(d_real), torch.empty_like(d_fake)


_gan_loss_backward_op.register_autograd(_raise_order("gan_loss_backward", "first"))


def gan_loss(real: Optional[Tensor], fake: Tensor, real_term: Optional[str], fake_term: str) -> Tensor:
    """The 0-d loss of ``torch.ops.fastgan.gan_loss`` (terms as in ``fastgan.kernels.LOSS_TERMS``)."""
    return torch.ops.fastgan.gan_loss(real, fake, real_term, fake_term)[0]


# ============================================================================= gradient penalty term

@torch.library.custom_op("fastgan::grad_penalty", mutates_args=())
def _grad_penalty_op(grad: Tensor, kind: str, weight: float, center: float) -> Tuple[Tensor, Tensor]:
    if _eager(grad):
        g = grad.reshape(grad.shape[0], -1).to(_acc(grad))
        if kind == "wgan-gp":
            norm = torch.linalg.vector_norm(g, dim=1)
            penalty = weight * ((norm - center) ** 2).sum()
            coef = torch.where(norm > 0, 2 * weight * (norm - center) / norm.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
            coef = coef.to(g.dtype)
        else:
            penalty = weight * g.square().sum()
            coef = torch.full((grad.shape[0],), 2 * weight, dtype=g.dtype, device=g.device)
        return penalty, coef
    return _backend.kernels().grad_penalty_fwd(grad, kind, weight, center)


@_grad_penalty_op.register_fake
def _(grad, kind, weight, center):
    return grad.new_empty((), dtype=_acc(grad)), grad.new_empty((grad.shape[0],), dtype=_acc(grad))


def _grad_penalty_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1])  # coef as an output: see _gan_loss_setup


def _grad_penalty_backward(ctx, d_penalty, _d_coef):
    grad, coef = ctx.saved_tensors
    return torch.ops.fastgan.grad_penalty_backward(d_penalty, grad, coef), None, None, None


_grad_penalty_op.register_autograd(_grad_penalty_backward, setup_context=_grad_penalty_setup)


@torch.library.custom_op("fastgan::grad_penalty_backward", mutates_args=())
def _grad_penalty_backward_op(d_penalty: Tensor, grad: Tensor, coef: Tensor) -> Tensor:
    if _eager(grad):
        c = coef.reshape([-1] + [1] * (grad.dim() - 1))
        out = (d_penalty.to(coef.dtype) * c * grad.to(coef.dtype)).to(grad.dtype)
        return _like(out, grad)
    return _like(_backend.kernels().grad_penalty_bwd(d_penalty, grad, coef), grad)


@_grad_penalty_backward_op.register_fake
def _(d_penalty, grad, coef):
    return torch.empty_like(grad)


_grad_penalty_backward_op.register_autograd(_raise_order("grad_penalty_backward", "first"))


def grad_penalty(grad: Tensor, kind: str, weight: float, center: float) -> Tensor:
    """The penalty of ``torch.ops.fastgan.grad_penalty`` (``weight`` multiplies every per-sample term)."""
    return torch.ops.fastgan.grad_penalty(grad, kind, float(weight), float(center))[0]


def _check_registered() -> None:
    missing = [name for name in OPS if not hasattr(torch.ops.fastgan, name)]
    if missing:  # pragma: no cover - a registration failed above
        raise RuntimeError(f"fastgan.library: ops not registered: {missing}")


_check_registered()
