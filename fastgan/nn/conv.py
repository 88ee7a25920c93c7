"""Conv2dAct / ConvTranspose2dAct: nn.Conv2d / nn.ConvTranspose2d with a fused activation epilogue.

They *are* torch's convolution modules (subclasses): the same parameters (``weight``, ``bias``),
the same initialisation, the same state_dict, so checkpoints load in both directions and
``isinstance(m, nn.Conv2d)`` holds. Only ``forward`` differs: it runs
``fastgan.functional.conv2d_act`` / ``conv_transpose2d_act`` with the module's ``act``,
``alpha``, ``gain`` and ``clamp``. ``fastgan.accelerate`` binds these same forwards onto
existing torch convolutions.
"""
from __future__ import annotations

import torch
from torch import nn

from ..functional import conv2d_act, conv_transpose2d_act
from .epilogue import Epilogue, epilogue, params_for

__all__ = ["Conv2dAct", "ConvTranspose2dAct"]


class _Epilogue(Epilogue):
    """The conv modules' epilogue, their padding_mode check and ``from_torch``.

    ``bn_partials`` (default False; not part of the state_dict): the module feeds a batch norm
    (True) or an instance norm ("instance"). In training mode with a linear epilogue, the
    convolution's epilogue then also computes the statistics' per-tile partials of its output,
    and a fused norm of that output (``BatchNormAct2d``, ``InstanceNormAct2d``, or an
    accelerated torch norm) skips its statistics pass."""

    bn_partials = False

    def _set_epilogue(self, act, alpha, gain, clamp, padding_mode):
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode={padding_mode!r} is not supported by {type(self).__name__}; only 'zeros'")
        super()._set_epilogue(act, alpha, gain, clamp)

    @classmethod
    def from_torch(cls, conv, act: str = "linear", alpha=None, gain=None, clamp=None):
        """A fused module with ``conv``'s hyper-parameters, device, dtype and a copy of its parameters."""
        base = cls._torch_base
        if not isinstance(conv, base):
            raise TypeError(f"{cls.__name__}.from_torch expects a torch.nn.{base.__name__}, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported; only 'zeros'")
        kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                      bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype, act=act,
                      alpha=alpha, gain=gain, clamp=clamp)
        if base is nn.ConvTranspose2d:
            kwargs["output_padding"] = conv.output_padding
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, **kwargs)
        with torch.no_grad():
            m.weight.copy_(conv.weight)
            if m.bias is not None:
                m.bias.copy_(conv.bias)
        return m


class Conv2dAct(_Epilogue, nn.Conv2d):
    """``nn.Conv2d`` followed by ``bias_act``: y = clamp(act(conv2d(x, W) + b) * gain), fused.

    Constructor arguments: nn.Conv2d's (``padding_mode`` must be "zeros") plus ``act``,
    ``alpha``, ``gain``, ``clamp`` (see :func:`fastgan.functional.bias_act`).
    """
    _torch_base = nn.Conv2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 act: str = "linear", alpha: float | None = None, gain: float | None = None,
                 clamp: float | None = None):
        self._set_epilogue(act, alpha, gain, clamp, padding_mode)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w, b = params_for(self, input)
        return conv2d_act(input, w, b, self.stride, self.padding, self.dilation, self.groups, **epilogue(self),
                          bn_partials=self.bn_partials if self.training else False)


class ConvTranspose2dAct(_Epilogue, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` followed by ``bias_act``, fused (weight [Cin, Cout/groups, kH, kW]).

    Constructor arguments: nn.ConvTranspose2d's (``padding_mode`` must be "zeros") plus
    ``act``, ``alpha``, ``gain``, ``clamp``; ``forward(x, output_size=None)`` as torch's.
    """
    _torch_base = nn.ConvTranspose2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros", device=None, dtype=None, act: str = "linear",
                 alpha: float | None = None, gain: float | None = None, clamp: float | None = None):
        self._set_epilogue(act, alpha, gain, clamp, padding_mode)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor, output_size=None) -> torch.Tensor:
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        w, b = params_for(self, input)
        return conv_transpose2d_act(input, w, b, self.stride, self.padding, output_padding, self.groups,
                                    self.dilation, **epilogue(self),
                                    bn_partials=self.bn_partials if self.training else False)
