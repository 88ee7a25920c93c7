"""conv2d_act / conv_transpose2d_act: convolution + bias + activation, fused, twice differentiable.

    y = clamp(act(conv(x, weight) + bias) * gain, -clamp, clamp)

Forward: one fused Triton kernel (implicit GEMM with the bias_act epilogue on the fp32
accumulator), or the vendor convolution followed by the fused bias_act kernel; the per-shape
dispatcher (``fastgan.backend.conv_dispatch``) picks the faster on CUDA.

Ops (``fused_op.FusedOp``; the geometry arguments are ``kernels.geometry.ConvGeom.op_args()``):

================  ==========================================  =========================================
op                computes                                    its backward
================  ==========================================  =========================================
conv_act          (y, z, count, mean, M2): z = conv(x, w)      dz = bias_act_grad(dy, z) + the gradient
                  pre-bias (empty unless store_z), y =        reaching z; dx = conv_act of dz with the
                  clamp(act(z + b) * gain); y's batch-norm    adjoint geometry; dw = conv_weight_grad;
                  partials per tile (empty unless asked)      db = sum dz (in the same pass as dz)
conv_weight_grad  dw of conv(x, w) for dz (vendor kernel)     conv_act (w.r.t. dz and x)
================  ==========================================  =========================================

This is StyleGAN2-ADA's conv2d_gradfix idea: every derivative of a convolution is another
convolution, so the op is differentiable twice, as R1 and WGAN-GP need. z is saved *as an
output*: in a ``create_graph`` pass the saved z is still connected to the graph through this
very node, which keeps the act''(z) terms of second-order gradients. z is produced only when a
backward will need it: not for a linear epilogue without clamp (act' is 1), nor for relu / lrelu
without clamp, whose act'(z + b) is act'(y) (the backward reads the output y, which the next
layer keeps anyway: one activation-sized write and buffer less per layer).

Inside ``gradfix.no_weight_gradients()`` dw and db are not computed (None). Under
torch.compile the backward is traced once, so the flag is read when it is traced.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backend as _backend
from ..backend import conv_dispatch
from ..kernels.geometry import ConvGeom
from .activations import ActSpec, resolve_act
from .bias_act import BIAS_ACT_GRAD, _bias_act_ref
from .fused_op import FusedOp, _tracing, fresh_like
from .gradfix import weight_gradient_wanted

__all__ = ["conv2d_act", "conv_transpose2d_act"]

_IDENTITY = ActSpec("linear", 0.0, 1.0, None)


def _vendor_conv(x: Tensor, w: Tensor, geom: ConvGeom) -> Tensor:
    """The plain torch convolution without bias (cuDNN on CUDA)."""
    if geom.transposed:
        return F.conv_transpose2d(x, w, None, geom.stride, geom.padding, geom.output_padding, geom.groups,
                                  geom.dilation)
    return F.conv2d(x, w, None, geom.stride, geom.padding, geom.dilation, geom.groups)


def _conv_act_ref(x: Tensor, w: Tensor, b: Optional[Tensor], geom: ConvGeom, spec: ActSpec) -> Tensor:
    """The eager reference: the torch convolution without bias, then the bias_act reference."""
    return _bias_act_ref(_vendor_conv(x, w, geom), b, 1, spec)


def _needs_z(spec: ActSpec) -> bool:
    """Whether the backward needs the pre-activation (linear without clamp: act' == 1)."""
    return spec.act != "linear" or spec.clamp is not None


def _act_from_y(spec: ActSpec) -> bool:
    """relu / lrelu with a slope >= 0, a positive gain and no clamp: act'(z + b) == act'(y) (y > 0
    exactly where z + b > 0, and act'' is 0), so the backward reads the output y, which the next
    layer keeps anyway, instead of a stored copy of the pre-activation."""
    return spec.act in ("relu", "lrelu") and spec.clamp is None and spec.gain > 0 and spec.alpha >= 0


def _out_format(x: Tensor, w: Tensor) -> torch.memory_format:
    return torch.channels_last if _backend.kernels().output_channels_last(x, w) else torch.contiguous_format


# ----------------------------------------------------------------------------- conv_act

def _run_impl(impl: str, x, w, b, geom: ConvGeom, spec: ActSpec, store_z: bool):
    """The forward with one implementation: (y, z), z None unless ``store_z``."""
    kernels = _backend.kernels()
    if impl == "triton":
        return kernels.conv_act_fwd(x, w, b, geom, spec.act, spec.alpha, spec.gain, spec.clamp, store_z=store_z)
    with torch.autocast(x.device.type, enabled=False):  # the caller's autocast must not recast
        z = _vendor_conv(x, w, geom)
    if b is None and spec == _IDENTITY:
        return z, (z if store_z else None)
    return kernels.bias_act_fwd(z, b, 1, spec.act, spec.alpha, spec.gain, spec.clamp), (z if store_z else None)


def _partials_like(x: Tensor, rows: int, cout: int) -> list:
    """Empty batch-norm partials (count, mean, M2) [rows, cout] in the statistics' dtype."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return [x.new_empty((rows, cout), dtype=dtype) for _ in range(3)]


def _fake(x, w, b, transposed, stride, padding, dilation, groups, output_padding, act, alpha, gain, clamp,
          store_z, bn_rows, bn_instance):
    geom = ConvGeom.from_op_args(transposed, stride, padding, dilation, groups, output_padding)
    n, cout = x.shape[0], w.shape[1] * groups if transposed else w.shape[0]
    shape = (n, cout, *geom.output_hw(x.shape[2:], w.shape[2:]))
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_out_format(x, w))
    return (y, (torch.empty_like(y) if store_z else x.new_empty((0,))),
            *_partials_like(x, bn_rows, cout * (n if bn_instance else 1)))


def _forward(x: Tensor, w: Tensor, b: Optional[Tensor], transposed: bool, stride: List[int], padding: List[int],
             dilation: List[int], groups: int, output_padding: List[int], act: str, alpha: float, gain: float,
             clamp: Optional[float], store_z: bool, bn_rows: int,
             bn_instance: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, z, count, mean, M2): z empty unless store_z; the batch-norm partials of y [bn_rows, Cout]
    ([bn_rows, N * Cout] per image and channel with bn_instance: ``kernels.bn_partial_rows``;
    written by the Triton kernel's epilogue, which then always runs) empty unless bn_rows."""
    geom = ConvGeom.from_op_args(transposed, stride, padding, dilation, groups, output_padding)
    spec = ActSpec(act, alpha, gain, clamp)
    fmt = _out_format(x, w)
    cout = w.shape[1] * groups if transposed else w.shape[0]
    partials = _partials_like(x, bn_rows, cout * (x.shape[0] if bn_instance else 1))
    if bn_rows:
        y, z = _backend.kernels().conv_act_fwd(x, w, b, geom, act, alpha, gain, clamp, store_z=store_z,
                                               bn_partials=partials, instance=bn_instance)
    else:
        key = f"{geom.op}_act" + ("" if b is None and spec == _IDENTITY else "+epi") + ("+z" if store_z else "")
        impl = conv_dispatch.choose(key, x, w, geom.args(),
                                    lambda name: _run_impl(name, x, w, b, geom, spec, store_z))
        y, z = _run_impl(impl, x, w, b, geom, spec, store_z)
    y = y if y.is_contiguous(memory_format=fmt) else y.contiguous(memory_format=fmt)
    if not store_z:
        return (y, x.new_empty((0,)), *partials)
    if z is y:  # identity epilogue: outputs must not alias
        z = y.clone(memory_format=fmt)
    return (y, (z if z.is_contiguous(memory_format=fmt) else z.contiguous(memory_format=fmt)), *partials)


def _setup(ctx, inputs, output):
    x, w, b = inputs[:3]
    ctx.geom = ConvGeom.from_op_args(*inputs[3:9])
    ctx.spec = ActSpec(*inputs[9:13])
    ctx.store_z = inputs[13]
    ctx.mark_non_differentiable(*output[2:])
    ctx.from_y = not ctx.store_z and _act_from_y(ctx.spec)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, w, b, output[1] if ctx.store_z else output[0] if ctx.from_y else None)


def _backward(ctx, dy, dz_extra, *_partials):
    x, w, b, z = ctx.saved_tensors
    geom, spec, need = ctx.geom, ctx.spec, ctx.needs_input_grad
    want_w = need[1] and weight_gradient_wanted(w)
    want_b = b is not None and need[2] and weight_gradient_wanted(b)
    dz = db = None
    if dy is not None:
        if z is not None:  # the pre-activation z (pre-bias: b is added) or the output y (ctx.from_y)
            dz, db = BIAS_ACT_GRAD(dy, z, None if ctx.from_y else b, 1, spec.act, spec.alpha, spec.gain, spec.clamp,
                                   want_b)
            if ctx.from_y and want_b and torch.is_grad_enabled():
                dz = _ZeroBiasGrad.apply(dz, b)
        elif not _needs_z(spec):  # linear, no clamp: act' == 1
            dz = dy * spec.gain if spec.gain != 1 else dy
            db = dz.sum(dim=(0, 2, 3)) if want_b else None
        else:
            raise RuntimeError(f"fastgan::conv_act was called with store_z=False and act={spec.act!r}; "
                               "its backward needs the pre-activation (call it with store_z=True)")
    if dz_extra is not None and ctx.store_z:
        dz = dz_extra if dz is None else dz + dz_extra
    dx = dw = None
    if dz is not None:
        if need[0]:
            dx = _input_grad(dz, w, geom, x.shape[2:])
        if want_w:
            dw = CONV_WEIGHT_GRAD(x, dz, w, *geom.op_args())
    return (dx, dw, db if want_b else None) + (None,) * 13


CONV_ACT = FusedOp("conv_act", _forward, _fake, _setup, _backward)


class _ZeroBiasGrad(torch.autograd.Function):
    """dz, unchanged, as a function of b too: act' computed from y (relu, lrelu) does not depend
    on b, so a double backward gives b a zero gradient, as torch's does, not None (an optimizer
    step on that gradient alone, e.g. a lazy R1 step, still moves b by its Adam moments)."""

    @staticmethod
    def forward(dz, b):
        return dz.view_as(dz)

    @staticmethod
    def backward(ctx, g):
        return g, torch.zeros(ctx.b_shape, dtype=ctx.b_dtype, device=g.device)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.b_shape, ctx.b_dtype = inputs[1].shape, inputs[1].dtype


def _conv_act(x: Tensor, w: Tensor, b: Optional[Tensor], geom: ConvGeom, spec: ActSpec) -> Tensor:
    """y of the fused op; z is produced (and kept) only when a backward will need it."""
    store_z = (_needs_z(spec) and not _act_from_y(spec) and torch.is_grad_enabled()
               and any(t is not None and t.requires_grad for t in (x, w, b)))
    return CONV_ACT(x, w, b, *geom.op_args(), spec.act, spec.alpha, spec.gain, spec.clamp, store_z, 0, False)[0]


def _conv_with_bn_partials(x: Tensor, w: Tensor, b: Optional[Tensor], geom: ConvGeom, instance: bool) -> Tensor:
    """y = conv(x, w) + b, its batch-norm partials (per image and channel with ``instance``)
    computed in the epilogue and attached to y (``batch_norm_act`` / ``instance_norm_act`` read
    them: ``tagged_bn_partials``); a plain ``_conv_act`` when the launch cannot write them
    (split-K; instance: no row tile divides an image) or a tracer records the call."""
    rows = 0 if _tracing((x, w)) else _backend.kernels().bn_partial_rows(x, w, geom, instance)
    if not rows:
        return _conv_act(x, w, b, geom, _IDENTITY)
    y, _, *partials = CONV_ACT(x, w, b, *geom.op_args(), "linear", 0.0, 1.0, None, False, rows, instance)
    y._fastgan_bn_partials = (partials, y._version, instance)
    return y


def tagged_bn_partials(y: Tensor, instance: bool = False):
    """The normalisation partials (count, mean, M2) that ``_conv_with_bn_partials`` attached to y
    for a batch norm (or, ``instance``, an instance norm), or None (none of that kind attached, or
    y changed in place since)."""
    tag = getattr(y, "_fastgan_bn_partials", None)
    return tag[0] if tag is not None and tag[1] == y._version and tag[2] == instance else None


def _input_grad(g: Tensor, w: Tensor, geom: ConvGeom, x_hw) -> Tensor:
    """The adjoint of x -> conv(x, w) applied to g (of the output's shape), a differentiable conv."""
    out = _conv_act(g, w, None, geom.adjoint(tuple(x_hw), tuple(g.shape[2:]), tuple(w.shape[2:])), _IDENTITY)
    if tuple(out.shape[2:]) != tuple(x_hw):  # transposed with output_padding >= stride: crop the overshoot
        out = out[:, :, :x_hw[0], :x_hw[1]]
    return out


# ----------------------------------------------------------------------------- conv_weight_grad

def _wgrad_forward(x: Tensor, dz: Tensor, w: Tensor, transposed: bool, stride: List[int], padding: List[int],
                   dilation: List[int], groups: int, output_padding: List[int]) -> Tensor:
    """dw of conv(x, w) given dz (``w`` supplies the shape and layout only)."""
    with torch.autocast(x.device.type, enabled=False):
        dw = torch.ops.aten.convolution_backward(dz, x, w, None, stride, padding, dilation, transposed,
                                                 output_padding, groups, (False, True, False))[1]
    return fresh_like(dw, w)


def _wgrad_setup(ctx, inputs, output):
    x, dz = inputs[:2]
    ctx.geom = ConvGeom.from_op_args(*inputs[3:9])
    ctx.save_for_backward(x, dz)


def _wgrad_backward(ctx, gw):
    """<G, dw(x, dz)> = <dz, conv(x, G)>: d/d(dz) = conv(x, G), d/dx = adjoint(dz, G)."""
    x, dz = ctx.saved_tensors
    gw = gw.to(x.dtype)
    d_x = _input_grad(dz, gw, ctx.geom, x.shape[2:]) if ctx.needs_input_grad[0] else None
    d_dz = _conv_act(x, gw, None, ctx.geom, _IDENTITY) if ctx.needs_input_grad[1] else None
    return (d_x, d_dz) + (None,) * 7


CONV_WEIGHT_GRAD = FusedOp("conv_weight_grad", _wgrad_forward, lambda x, dz, w, *rest: torch.empty_like(w),
                           _wgrad_setup, _wgrad_backward)


# ----------------------------------------------------------------------------- argument checks

def _check_tensors(x, weight, bias):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be 4-d [N, C, H, W] (or 3-d unbatched), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-d, got shape {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"weight must be on x's device {x.device}, got {weight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"bias must be on x's device {x.device}, got {bias.device}")


def _same_padding(padding, stride, dilation, weight):
    """Resolve padding='valid' / 'same' (symmetric only) to pixels, as F.conv2d does."""
    if padding == "valid":
        return 0
    if padding != "same":
        raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    if ConvGeom.of(False, stride).stride != (1, 1):
        raise ValueError("padding='same' requires stride 1")
    total = [d * (k - 1) for d, k in zip(ConvGeom.of(False, dilation=dilation).dilation, weight.shape[2:])]
    if total[0] % 2 or total[1] % 2:
        raise ValueError("padding='same' needs asymmetric padding for this kernel size/dilation, "
                         "which conv2d_act does not support; pad x explicitly")
    return (total[0] // 2, total[1] // 2)


def _check(x, weight, bias, geom: ConvGeom) -> ConvGeom:
    """Shapes of x, weight and bias against the geometry; returns it."""
    cin, groups = x.shape[-3], geom.groups
    if geom.transposed:
        if weight.shape[0] != cin:
            raise ValueError(f"x has {cin} channels but weight.shape[0] = {weight.shape[0]} "
                             "(conv_transpose2d weights are [in_channels, out_channels / groups, kH, kW])")
        if cin % groups:
            raise ValueError(f"groups={groups} must divide in_channels = x.shape[1] = {cin}")
        cout = weight.shape[1] * groups
    else:
        cout = weight.shape[0]
        if cout % groups:
            raise ValueError(f"groups={groups} must divide out_channels = weight.shape[0] = {cout}")
        if cin % groups:
            raise ValueError(f"groups={groups} must divide in_channels = x.shape[1] = {cin}")
        if weight.shape[1] * groups != cin:
            raise ValueError(f"x has {cin} channels but weight expects weight.shape[1] * groups = "
                             f"{weight.shape[1]} * {groups} = {weight.shape[1] * groups}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != cout):
        raise ValueError(f"bias must be 1-d of length out_channels = {cout}, got shape {tuple(bias.shape)}")
    kernel = tuple(weight.shape[2:])
    if min(kernel) == 0:
        raise ValueError(f"weight kernel size must be positive, got {kernel}")
    out = geom.output_hw(tuple(x.shape[-2:]), kernel)
    if min(out) <= 0:
        raise ValueError(f"output size {out} is not positive for input {tuple(x.shape[-2:])}, kernel {kernel}, "
                         f"stride {geom.stride}, padding {geom.padding} and dilation {geom.dilation}")
    return geom


def _autocast_args(x, weight, bias):
    """Under autocast, convolutions run in the autocast dtype (as F.conv2d does)."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return x, weight, bias
    dev = x.device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(dev)

    def cast(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
            return t.to(dtype)
        return t
    return cast(x), cast(weight), cast(bias)


# ----------------------------------------------------------------------------- public API

def _run(x, weight, bias, geom: ConvGeom, act, alpha, gain, clamp, bn_partials=False) -> Tensor:
    spec = resolve_act(act, alpha, gain, clamp)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if _backend.backend_for(x, weight) == "eager":
        y = _conv_act_ref(x, weight, bias, geom, spec)
    elif bn_partials and spec == _IDENTITY and not unbatched:
        y = _conv_with_bn_partials(x, weight, bias, geom, instance=bn_partials == "instance")
    else:
        y = _conv_act(x, weight, bias, geom, spec)
    return y.squeeze(0) if unbatched else y


def conv2d_act(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1,
               groups: int = 1, act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
               clamp: Optional[float] = None, *, bn_partials=False) -> Tensor:
    """``bias_act(F.conv2d(x, weight, stride=..., ...), bias, dim=1, act, alpha, gain, clamp)``, fused.

    Args:
        x: [N, Cin, H, W] (or [Cin, H, W]) float16/bfloat16/float32/float64; NCHW or
           channels_last (the fast layout on the GPU), any strides.
        weight: [Cout, Cin / groups, kH, kW], x's dtype and device (torch's layout).
        bias: [Cout] or None.
        stride, padding, dilation, groups: as F.conv2d (padding also 'valid', or 'same' when
           symmetric).
        act, alpha, gain, clamp: the activation epilogue of :func:`fastgan.functional.bias_act`.
        bn_partials: for a linear epilogue followed by a training-mode ``batch_norm_act`` of y
           (True) or an ``instance_norm_act`` with the instances' statistics ("instance"): the
           epilogue also computes y's per-tile statistics and attaches them to y, so that the
           norm skips its statistics pass (the Triton kernel then always runs; nothing changes
           where it cannot, e.g. a split-K launch).

    Returns y of shape [N, Cout, OH, OW], channels_last when x or weight is (as F.conv2d).
    Differentiable twice with respect to x, weight and bias. Under autocast, float16/32
    arguments are cast to the autocast dtype first (as F.conv2d).
    """
    x, weight, bias = _autocast_args(x, weight, bias)
    _check_tensors(x, weight, bias)
    if isinstance(padding, str):
        padding = _same_padding(padding, stride, dilation, weight)
    geom = _check(x, weight, bias, ConvGeom.of(False, stride, padding, dilation, groups))
    return _run(x, weight, bias, geom, act, alpha, gain, clamp, bn_partials)


def conv_transpose2d_act(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
                         output_padding=0, groups: int = 1, dilation=1, act: str = "linear",
                         alpha: Optional[float] = None, gain: Optional[float] = None,
                         clamp: Optional[float] = None, *, bn_partials=False) -> Tensor:
    """``bias_act(F.conv_transpose2d(x, weight, ...), bias, dim=1, act, alpha, gain, clamp)``, fused.

    weight is [Cin, Cout / groups, kH, kW] (torch's transposed layout); the other arguments
    as :func:`conv2d_act` and F.conv_transpose2d (note its argument order: output_padding,
    groups, dilation), ``bn_partials`` too. The transposed convolution never builds a
    zero-inserted input.
    """
    x, weight, bias = _autocast_args(x, weight, bias)
    _check_tensors(x, weight, bias)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair of ints for conv_transpose2d_act, got {padding!r}")
    geom = _check(x, weight, bias, ConvGeom.of(True, stride, padding, dilation, groups, output_padding))
    return _run(x, weight, bias, geom, act, alpha, gain, clamp, bn_partials)
