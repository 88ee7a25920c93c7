"""Convolution geometry, written once for the launchers, the autograd layer and the benchmarks.

Plain Python (no Triton, no torch), so every layer can import it without importing Triton.

    conv2d            out = floor((in + 2 pad - dil (k - 1) - 1) / stride) + 1
    conv_transpose2d  out = (in - 1) stride - 2 pad + dil (k - 1) + output_padding + 1

The adjoint of a convolution (what its input gradient is) is the transposed convolution with
the same stride, padding, dilation and groups, and vice versa; the transposed adjoint of a
strided conv2d needs the output_padding that restores the input size exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConvGeom", "pair", "conv_output_size"]


def pair(value, name: str, minimum: int = 0) -> tuple[int, int]:
    """``value`` as an (h, w) pair of ints >= ``minimum``: an int, or a sequence of one or two ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    elif isinstance(value, (tuple, list)) or type(value).__name__ == "Size":
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


def conv_output_size(size: int, k: int, stride: int, pad: int, dil: int, transposed: bool = False,
                     output_padding: int = 0) -> int:
    """One spatial output size of a convolution (transposed: of a transposed convolution)."""
    if transposed:
        return (size - 1) * stride - 2 * pad + dil * (k - 1) + output_padding + 1
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvGeom:
    """The non-tensor arguments of one 2-d convolution (every pair is (h, w))."""
    transposed: bool
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    output_padding: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, transposed: bool, stride=1, padding=0, dilation=1, groups=1, output_padding=0) -> "ConvGeom":
        """Parse and validate torch-style arguments (ints or pairs)."""
        if isinstance(groups, bool) or not isinstance(groups, int):
            raise TypeError(f"groups must be an int, got {type(groups).__name__}")
        if groups <= 0:
            raise ValueError(f"groups must be positive, got {groups}")
        geom = cls(bool(transposed), pair(stride, "stride", 1), pair(padding, "padding", 0),
                   pair(dilation, "dilation", 1), groups, pair(output_padding, "output_padding", 0))
        for i in range(2):
            if geom.output_padding[i] and (not transposed or (geom.output_padding[i] >= geom.stride[i]
                                                              and geom.output_padding[i] >= geom.dilation[i])):
                raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                                 f"output_padding={geom.output_padding}, stride={geom.stride}, "
                                 f"dilation={geom.dilation}")
        return geom

    @property
    def op(self) -> str:
        return "conv_transpose2d" if self.transposed else "conv2d"

    def output_hw(self, in_hw, kernel_hw) -> tuple[int, int]:
        return tuple(conv_output_size(in_hw[i], kernel_hw[i], self.stride[i], self.padding[i], self.dilation[i],
                                      self.transposed, self.output_padding[i]) for i in range(2))

    def adjoint(self, in_hw, out_hw, kernel_hw) -> "ConvGeom":
        """The geometry of the input gradient: maps a tensor of the output's size back to ``in_hw``.

        conv2d -> conv_transpose2d with the output_padding that recovers in_hw exactly;
        conv_transpose2d -> conv2d (whose output may overshoot in_hw when output_padding >=
        stride; the caller crops, see ``overshoot``)."""
        if self.transposed:
            return ConvGeom(False, self.stride, self.padding, self.dilation, self.groups)
        op = tuple(in_hw[i] - conv_output_size(out_hw[i], kernel_hw[i], self.stride[i], self.padding[i],
                                               self.dilation[i], True) for i in range(2))
        return ConvGeom(True, self.stride, self.padding, self.dilation, self.groups, op)

    def args(self) -> tuple:
        """A flat tuple of every argument (dispatch cache keys)."""
        return (*self.stride, *self.padding, *self.dilation, self.groups, *self.output_padding)

    def op_args(self) -> tuple:
        """The arguments in the order fastgan's registered conv ops take them (lists, not tuples)."""
        return (self.transposed, list(self.stride), list(self.padding), list(self.dilation), self.groups,
                list(self.output_padding))

    @classmethod
    def from_op_args(cls, transposed, stride, padding, dilation, groups, output_padding) -> "ConvGeom":
        """The inverse of :meth:`op_args` (arguments already validated)."""
        def ints(v):
            return tuple(int(i) for i in v)
        return cls(bool(transposed), ints(stride), ints(padding), ints(dilation), int(groups), ints(output_padding))
