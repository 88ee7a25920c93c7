"""conv2d_act / conv_transpose2d_act: convolution + bias + activation, fused, twice differentiable.

    y = clamp(act(conv(x, weight) + bias) * gain, -clamp, clamp)

Forward: one fused Triton kernel (implicit GEMM with the bias_act epilogue on the fp32
accumulator), or the vendor convolution followed by the fused bias_act kernel; a per-shape
dispatcher (``conv_dispatch``) picks the faster on CUDA.

Autograd (the StyleGAN2-ADA conv2d_gradfix idea: every derivative of a convolution is
another convolution):

- ``_Conv2dAct`` / ``_ConvTranspose2dAct`` compute z = conv(x, w) (pre-bias) and y in the
  same kernel. z is returned as a second, real output and saved *as an output*, so in a
  ``create_graph`` pass the saved z is still connected to the graph through this very
  node; that keeps the act''(z) * dz/d(x, w) terms of second-order gradients.
- backward: (dz, db) = ``_BiasActGrad`` (fused act' + bias reduction, itself twice
  differentiable); dz += the gradient arriving at z; then dx = the adjoint convolution of
  dz (a differentiable fastgan conv, dispatched like the forward) and dw =
  ``_ConvWeightGrad(x, dz)`` whose backward is again made of convolutions.
- Inside ``gradfix.no_weight_gradients()`` dw and db are not computed (None).

Only the forward has a Triton kernel; the weight gradient uses the vendor's kernel
(``aten.convolution_backward``), the input gradient is a fastgan conv (Triton or vendor
as dispatched).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import backend as _backend
from . import conv_dispatch
from .activations import ActSpec, resolve_act
from .bias_act import _bias_act_ref, _BiasActGrad
from .gradfix import weight_gradients_enabled

__all__ = ["conv2d_act", "conv_transpose2d_act"]

_IDENTITY = ActSpec("linear", 0.0, 1.0, None)


@dataclass(frozen=True)
class ConvGeom:
    """The non-tensor arguments of one convolution (all pairs are (h, w))."""
    transposed: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    output_padding: tuple[int, int] = (0, 0)

    @property
    def op(self) -> str:
        return "conv_transpose2d" if self.transposed else "conv2d"

    def args(self) -> tuple:
        return (*self.stride, *self.padding, *self.dilation, self.groups, *self.output_padding)


# ----------------------------------------------------------------------------- references

def _vendor_conv(x: torch.Tensor, w: torch.Tensor, geom: ConvGeom) -> torch.Tensor:
    """The plain torch convolution without bias (cuDNN on CUDA)."""
    if geom.transposed:
        return F.conv_transpose2d(x, w, None, geom.stride, geom.padding, geom.output_padding,
                                  geom.groups, geom.dilation)
    return F.conv2d(x, w, None, geom.stride, geom.padding, geom.dilation, geom.groups)


def _conv2d_act_ref(x, weight, bias, stride, padding, dilation, groups, spec: ActSpec) -> torch.Tensor:
    """The eager reference: F.conv2d without bias, then the bias_act reference."""
    z = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    return _bias_act_ref(z, bias, 1, spec)


def _conv_transpose2d_act_ref(x, weight, bias, stride, padding, output_padding, groups, dilation,
                              spec: ActSpec) -> torch.Tensor:
    """The eager reference: F.conv_transpose2d without bias, then the bias_act reference."""
    z = F.conv_transpose2d(x, weight, None, stride, padding, output_padding, groups, dilation)
    return _bias_act_ref(z, bias, 1, spec)


# ----------------------------------------------------------------------------- forward implementations

def _is_identity(spec: ActSpec, b) -> bool:
    return b is None and spec.act == "linear" and spec.gain == 1 and spec.clamp is None


def _needs_z(spec: ActSpec) -> bool:
    """Whether the backward needs the pre-activation (linear without clamp: act' == 1)."""
    return spec.act != "linear" or spec.clamp is not None


def _run_impl(impl: str, x, w, b, geom: ConvGeom, spec: ActSpec, store_z: bool):
    """Forward with one implementation; returns (y, z) (z None unless ``store_z``)."""
    if impl == "triton":
        kernels = _backend.kernels()
        launch = kernels.conv_transpose2d_act_fwd if geom.transposed else kernels.conv2d_act_fwd
        extra = {"output_padding": geom.output_padding} if geom.transposed else {}
        return launch(x, w, b, stride=geom.stride, padding=geom.padding, dilation=geom.dilation,
                      groups=geom.groups, act=spec.act, alpha=spec.alpha, gain=spec.gain,
                      clamp=spec.clamp, store_z=store_z, **extra)
    with torch.autocast(x.device.type, enabled=False):  # the caller's autocast must not recast
        z = _vendor_conv(x, w, geom)
    if _is_identity(spec, b):
        return z, (z if store_z else None)
    kernels = _backend.kernels()
    y = kernels.bias_act_fwd(z, b, 1, spec.act, spec.alpha, spec.gain, spec.clamp)
    return y, (z if store_z else None)


def _forward(x, w, b, geom: ConvGeom, spec: ActSpec, store_z: bool):
    op = f"{geom.op}_act" + ("" if _is_identity(spec, b) else "+epi") + ("+z" if store_z else "")
    impl = conv_dispatch.choose(op, x, w, geom.args(),
                                lambda name: _run_impl(name, x, w, b, geom, spec, store_z))
    return _run_impl(impl, x, w, b, geom, spec, store_z)


# ----------------------------------------------------------------------------- autograd

def _input_grad(g: torch.Tensor, w: torch.Tensor, geom: ConvGeom, x_hw, honor_nwg: bool) -> torch.Tensor:
    """The adjoint of x -> conv(x, w) applied to g (shape of x), as a differentiable conv."""
    (sh, sw), (ph, pw), (dh, dw), groups = geom.stride, geom.padding, geom.dilation, geom.groups
    kh, kw = w.shape[2], w.shape[3]
    gh, gw = g.shape[2], g.shape[3]
    if geom.transposed:
        adj = ConvGeom(False, geom.stride, geom.padding, geom.dilation, groups)
        out = _conv_apply(g, w, None, adj, _IDENTITY, honor_nwg)
        # output_padding >= stride (allowed when < dilation) leaves rows the adjoint overshoots
        if out.shape[2] != x_hw[0] or out.shape[3] != x_hw[1]:
            out = out[:, :, :x_hw[0], :x_hw[1]]
        return out
    oph = x_hw[0] - ((gh - 1) * sh - 2 * ph + dh * (kh - 1) + 1)
    opw = x_hw[1] - ((gw - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
    adj = ConvGeom(True, geom.stride, geom.padding, geom.dilation, groups, (oph, opw))
    return _conv_apply(g, w, None, adj, _IDENTITY, honor_nwg)


class _ConvWeightGrad(torch.autograd.Function):
    """(x, dz) -> dw of conv(x, w) (vendor weight-gradient kernel); backward made of convs:

    <G, dw(x, dz)> = <dz, conv(x, G)>, so d/d(dz) = conv(x, G) and d/dx = adjoint(dz, G).
    """

    @staticmethod
    def forward(ctx, x, dz, geom, w_shape):
        w_like = dz.new_empty(1).expand(w_shape)
        with torch.autocast(x.device.type, enabled=False):
            dw = torch.ops.aten.convolution_backward(
                dz, x, w_like, None, list(geom.stride), list(geom.padding), list(geom.dilation),
                geom.transposed, list(geom.output_padding), geom.groups, (False, True, False))[1]
        ctx.save_for_backward(x, dz)
        ctx.geom = geom
        return dw

    @staticmethod
    def backward(ctx, gw):
        x, dz = ctx.saved_tensors
        geom = ctx.geom
        d_x = d_dz = None
        gw = gw.to(x.dtype)
        if ctx.needs_input_grad[0]:
            d_x = _input_grad(dz, gw, geom, x.shape[2:], honor_nwg=False)
        if ctx.needs_input_grad[1]:
            d_dz = _conv_apply(x, gw, None, geom, _IDENTITY, honor_nwg=False)
        return d_x, d_dz, None, None


class _ConvActBase(torch.autograd.Function):
    """(x, w, b) -> y, or (y, z) when ``return_z`` (z = conv(x, w), saved as an output)."""

    @staticmethod
    def forward(ctx, x, w, b, geom, spec, return_z, honor_nwg):
        y, z = _forward(x, w, b, geom, spec, store_z=return_z)
        ctx.set_materialize_grads(False)
        ctx.geom, ctx.spec, ctx.return_z, ctx.honor_nwg = geom, spec, return_z, honor_nwg
        ctx.x_hw = tuple(x.shape[2:])
        if return_z:
            ctx.save_for_backward(x, w, b, z)
            return y, z
        ctx.save_for_backward(x, w, b)
        return y

    @staticmethod
    def backward(ctx, dy, dz_extra=None):
        if ctx.return_z:
            x, w, b, z = ctx.saved_tensors
        else:
            (x, w, b), z = ctx.saved_tensors, None
        geom, spec = ctx.geom, ctx.spec
        weights_on = weight_gradients_enabled() or not ctx.honor_nwg
        want_w = ctx.needs_input_grad[1] and weights_on
        want_b = b is not None and ctx.needs_input_grad[2] and weights_on
        dz = db = None
        if dy is not None:
            if z is not None:
                dz, db = _BiasActGrad.apply(dy, z, b, 1, spec, want_b)
            else:  # linear, no clamp: act' == 1
                dz = dy * spec.gain if spec.gain != 1 else dy
                if want_b:
                    db = dz.sum(dim=(0, 2, 3))
        if dz_extra is not None:
            dz = dz_extra if dz is None else dz + dz_extra
        dx = dw = None
        if dz is not None:
            if ctx.needs_input_grad[0]:
                dx = _input_grad(dz, w, geom, ctx.x_hw, ctx.honor_nwg)
            if want_w:
                dw = _ConvWeightGrad.apply(x, dz, geom, tuple(w.shape))
        if not want_b:
            db = None
        return dx, dw, db, None, None, None, None


class _Conv2dAct(_ConvActBase):
    """conv2d + bias_act (geom.transposed is False)."""


class _ConvTranspose2dAct(_ConvActBase):
    """conv_transpose2d + bias_act (geom.transposed is True)."""


def _conv_apply(x, w, b, geom: ConvGeom, spec: ActSpec, honor_nwg: bool) -> torch.Tensor:
    """Run the Function (z is produced and kept only when a backward will need it)."""
    needs_graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w, b))
    fn = _ConvTranspose2dAct if geom.transposed else _Conv2dAct
    if needs_graph and _needs_z(spec):
        y, _ = fn.apply(x, w, b, geom, spec, True, honor_nwg)
        return y
    return fn.apply(x, w, b, geom, spec, False, honor_nwg)


# ----------------------------------------------------------------------------- argument checks

def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    elif isinstance(value, (tuple, list, torch.Size)):
        value = tuple(value)
        if len(value) == 1:
            value = value * 2
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__}")
    if min(value) < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


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


def _check_groups(groups):
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {type(groups).__name__}")
    if groups <= 0:
        raise ValueError(f"groups must be positive, got {groups}")


def _check_bias_len(bias, cout):
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != cout):
        raise ValueError(f"bias must be 1-d of length out_channels = {cout}, got shape {tuple(bias.shape)}")


def _check_conv2d(x, weight, bias, stride, padding, dilation, groups) -> ConvGeom:
    _check_tensors(x, weight, bias)
    _check_groups(groups)
    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    kh, kw = weight.shape[2], weight.shape[3]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' requires stride 1")
            tot = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
            if tot[0] % 2 or tot[1] % 2:
                raise ValueError("padding='same' needs asymmetric padding for this kernel size/dilation, "
                                 "which conv2d_act does not support; pad x explicitly")
            padding = (tot[0] // 2, tot[1] // 2)
        else:
            raise ValueError(f"padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
    padding = _pair(padding, "padding", 0)
    cin, cout = x.shape[-3], weight.shape[0]
    if cout % groups:
        raise ValueError(f"groups={groups} must divide out_channels = weight.shape[0] = {cout}")
    if cin % groups:
        raise ValueError(f"groups={groups} must divide in_channels = x.shape[1] = {cin}")
    if weight.shape[1] * groups != cin:
        raise ValueError(f"x has {cin} channels but weight expects weight.shape[1] * groups = "
                         f"{weight.shape[1]} * {groups} = {weight.shape[1] * groups}")
    _check_bias_len(bias, cout)
    if kh == 0 or kw == 0:
        raise ValueError(f"weight kernel size must be positive, got {(kh, kw)}")
    h, w = x.shape[-2], x.shape[-1]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"output size {(oh, ow)} is not positive: input {(h, w)} is too small for kernel "
                         f"{(kh, kw)} with padding {padding} and dilation {dilation}")
    return ConvGeom(False, stride, padding, dilation, groups)


def _check_conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation) -> ConvGeom:
    _check_tensors(x, weight, bias)
    _check_groups(groups)
    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair of ints for conv_transpose2d_act, got {padding!r}")
    padding = _pair(padding, "padding", 0)
    output_padding = _pair(output_padding, "output_padding", 0)
    for i in range(2):
        if output_padding[i] >= stride[i] and output_padding[i] >= dilation[i]:
            raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                             f"output_padding={output_padding}, stride={stride}, dilation={dilation}")
    cin = x.shape[-3]
    if weight.shape[0] != cin:
        raise ValueError(f"x has {cin} channels but weight.shape[0] = {weight.shape[0]} "
                         "(conv_transpose2d weights are [in_channels, out_channels / groups, kH, kW])")
    if cin % groups:
        raise ValueError(f"groups={groups} must divide in_channels = x.shape[1] = {cin}")
    cout = weight.shape[1] * groups
    _check_bias_len(bias, cout)
    kh, kw = weight.shape[2], weight.shape[3]
    if kh == 0 or kw == 0:
        raise ValueError(f"weight kernel size must be positive, got {(kh, kw)}")
    h, w = x.shape[-2], x.shape[-1]
    oh = (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    ow = (w - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"output size {(oh, ow)} is not positive for input {(h, w)}, kernel {(kh, kw)}, "
                         f"stride {stride}, padding {padding}")
    return ConvGeom(True, stride, padding, dilation, groups, output_padding)


# ----------------------------------------------------------------------------- public API

def _autocast_args(x, weight, bias):
    """Under autocast, convolutions run in the autocast dtype (as F.conv2d does)."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return x, weight, bias
    dev = x.device.type
    if dev not in ("cuda", "cpu") or not torch.is_autocast_enabled(dev):
        return x, weight, bias
    get = getattr(torch, "get_autocast_dtype", None)
    dtype = get(dev) if get is not None else (
        torch.get_autocast_gpu_dtype() if dev == "cuda" else torch.get_autocast_cpu_dtype())

    def cast(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
            return t.to(dtype)
        return t
    return cast(x), cast(weight), cast(bias)


def _run(x, weight, bias, geom: ConvGeom, spec: ActSpec, ref):
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    if torch.compiler.is_compiling():  # one opaque node for torch.compile (fastgan.library)
        from .. import library
        y = library.conv_act(x, weight, bias, geom, spec)
    elif _backend.backend_for(x, weight) == "eager":
        y = ref(x)
    else:
        y = _conv_apply(x, weight, bias, geom, spec, honor_nwg=True)
    return y.squeeze(0) if unbatched else y


def conv2d_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
               padding=0, dilation=1, groups: int = 1, act: str = "linear", alpha: float | None = None,
               gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """``bias_act(F.conv2d(x, weight, stride=..., ...), bias, dim=1, act, alpha, gain, clamp)``, fused.

    Args:
        x: [N, Cin, H, W] (or [Cin, H, W]) float16/bfloat16/float32/float64; NCHW or
           channels_last (the fast layout on the GPU), any strides.
        weight: [Cout, Cin / groups, kH, kW], x's dtype and device (torch's layout).
        bias: [Cout] or None.
        stride, padding, dilation, groups: as F.conv2d (padding also 'valid', or 'same' when
           symmetric).
        act, alpha, gain, clamp: the activation epilogue of :func:`fastgan.functional.bias_act`.

    Returns y of shape [N, Cout, OH, OW], channels_last when x or weight is (as F.conv2d).
    Differentiable twice with respect to x, weight and bias. Under autocast, float16/32
    arguments are cast to the autocast dtype first (as F.conv2d).
    """
    x, weight, bias = _autocast_args(x, weight, bias)
    geom = _check_conv2d(x, weight, bias, stride, padding, dilation, groups)
    spec = resolve_act(act, alpha, gain, clamp)
    return _run(x, weight, bias, geom, spec,
                lambda x4: _conv2d_act_ref(x4, weight, bias, geom.stride, geom.padding, geom.dilation,
                                           geom.groups, spec))


def conv_transpose2d_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         stride=1, padding=0, output_padding=0, groups: int = 1, dilation=1,
                         act: str = "linear", alpha: float | None = None, gain: float | None = None,
                         clamp: float | None = None) -> torch.Tensor:
    """``bias_act(F.conv_transpose2d(x, weight, ...), bias, dim=1, act, alpha, gain, clamp)``, fused.

    weight is [Cin, Cout / groups, kH, kW] (torch's transposed layout); the other arguments
    as :func:`conv2d_act` and F.conv_transpose2d (note its argument order: output_padding,
    groups, dilation). The transposed convolution never builds a zero-inserted input.
    """
    x, weight, bias = _autocast_args(x, weight, bias)
    geom = _check_conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)
    spec = resolve_act(act, alpha, gain, clamp)
    return _run(x, weight, bias, geom, spec,
                lambda x4: _conv_transpose2d_act_ref(x4, weight, bias, geom.stride, geom.padding,
                                                     geom.output_padding, geom.groups, geom.dilation, spec))
