"""Conv2dAct / ConvTranspose2dAct: nn.Conv2d / nn.ConvTranspose2d with a fused activation epilogue.

Parameters are named, shaped and initialised exactly like torch's (``weight``, ``bias``;
torch's reset_parameters recipe: kaiming_uniform_(a=sqrt(5)) and a uniform bias of bound
1/sqrt(fan_in)), so ``load_state_dict`` works in both directions and, under the same seed,
a fresh module holds the same numbers as a fresh torch module.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import init

from ..functional import conv2d_act, conv_transpose2d_act, resolve_act

__all__ = ["Conv2dAct", "ConvTranspose2dAct"]


def _pair(v, name):
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(isinstance(i, int) for i in v):
        return tuple(v) * (2 if len(v) == 1 else 1)
    raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")


class _ConvActNd(nn.Module):
    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                 bias, padding_mode, output_padding, act, alpha, gain, clamp, device, dtype):
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode={padding_mode!r} is not supported by {type(self).__name__}; "
                             "only 'zeros'")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels % groups:
            raise ValueError(f"in_channels={in_channels} must be divisible by groups={groups}")
        if out_channels % groups:
            raise ValueError(f"out_channels={out_channels} must be divisible by groups={groups}")
        resolve_act(act, alpha, gain, clamp)  # validate early
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = padding if isinstance(padding, str) else _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.output_padding = _pair(output_padding, "output_padding")
        self.groups, self.padding_mode = groups, padding_mode
        self.act, self.alpha, self.gain, self.clamp = act, alpha, gain, clamp
        factory = {"device": device, "dtype": dtype}
        if self.transposed:
            shape = (in_channels, out_channels // groups, *self.kernel_size)
        else:
            shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's _ConvNd.reset_parameters: the same init calls in the same order."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def _params_for(self, x: torch.Tensor):
        """The parameters in x's dtype (bf16/fp16 inputs with float32 parameters); under
        autocast the functional op casts everything to the autocast dtype itself."""
        w, b = self.weight, self.bias
        if w.dtype != x.dtype:
            w = w.to(x.dtype)
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return w, b

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.transposed and self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        s += f", act={self.act!r}"
        for name in ("alpha", "gain", "clamp"):
            if getattr(self, name) is not None:
                s += f", {name}={getattr(self, name)}"
        return s

    @classmethod
    def _check_torch(cls, conv, expected):
        if not isinstance(conv, expected):
            raise TypeError(f"{cls.__name__}.from_torch expects a torch.nn.{expected.__name__}, "
                            f"got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported; only 'zeros'")

    def _copy_from(self, conv):
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if self.bias is not None:
                self.bias.copy_(conv.bias)
        return self


class Conv2dAct(_ConvActNd):
    """``nn.Conv2d`` followed by ``bias_act``: y = clamp(act(conv2d(x, W) + b) * gain), fused.

    Constructor arguments: nn.Conv2d's (``padding_mode`` must be "zeros") plus ``act``,
    ``alpha``, ``gain``, ``clamp`` (see :func:`fastgan.functional.bias_act`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 act: str = "linear", alpha: float | None = None, gain: float | None = None,
                 clamp: float | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, 0, act, alpha, gain, clamp, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._params_for(x)
        return conv2d_act(x, w, b, self.stride, self.padding, self.dilation, self.groups,
                          act=self.act, alpha=self.alpha, gain=self.gain, clamp=self.clamp)

    @classmethod
    def from_torch(cls, conv: nn.Conv2d, act: str = "linear", alpha: float | None = None,
                   gain: float | None = None, clamp: float | None = None) -> "Conv2dAct":
        """A Conv2dAct with ``conv``'s hyper-parameters, device, dtype and a copy of its parameters."""
        cls._check_torch(conv, nn.Conv2d)
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, device=conv.weight.device,
                dtype=conv.weight.dtype, act=act, alpha=alpha, gain=gain, clamp=clamp)
        return m._copy_from(conv)


class ConvTranspose2dAct(_ConvActNd):
    """``nn.ConvTranspose2d`` followed by ``bias_act``, fused (weight [Cin, Cout/groups, kH, kW]).

    Constructor arguments: nn.ConvTranspose2d's (``padding_mode`` must be "zeros") plus
    ``act``, ``alpha``, ``gain``, ``clamp``. ``forward(x)`` takes no ``output_size``.
    """
    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros", device=None, dtype=None, act: str = "linear",
                 alpha: float | None = None, gain: float | None = None, clamp: float | None = None):
        if isinstance(padding, str):
            raise ValueError(f"padding={padding!r}: string padding is not supported by ConvTranspose2dAct")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, output_padding, act, alpha, gain, clamp, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._params_for(x)
        return conv_transpose2d_act(x, w, b, self.stride, self.padding, self.output_padding, self.groups,
                                    self.dilation, act=self.act, alpha=self.alpha, gain=self.gain,
                                    clamp=self.clamp)

    @classmethod
    def from_torch(cls, conv: nn.ConvTranspose2d, act: str = "linear", alpha: float | None = None,
                   gain: float | None = None, clamp: float | None = None) -> "ConvTranspose2dAct":
        """A ConvTranspose2dAct with ``conv``'s hyper-parameters and a copy of its parameters."""
        cls._check_torch(conv, nn.ConvTranspose2d)
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.output_padding, conv.groups, conv.bias is not None, conv.dilation,
                device=conv.weight.device, dtype=conv.weight.dtype, act=act, alpha=alpha, gain=gain,
                clamp=clamp)
        return m._copy_from(conv)
