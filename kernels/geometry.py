"""Convolution geometry, written once for the launchers, the autograd layer and the benchmarks.

Plain Python (no Triton, no torch), so every layer can import it without importing Triton.

    conv2d            out = floor((in + 2 pad - dil (k - 1) - 1) / stride) + 1
    conv_transpose2d  out = (in - 1) stride - 2 pad + dil (k - 1) + output_padding + 1

The adjoint of a convolution (what its input gradient is) is the transposed convolution with
the same stride, padding, dilation and groups, and vice versa; the transposed adjoint of a
strided conv2d needs the output_padding that restores the input size exactly.

Resampling FIR filters (upfirdn2d, StyleGAN's convention), per axis with an f-tap filter:

    upfirdn    out = (in * up + pad0 + pad1 - f) // down + 1
    adjoint    up <-> down, pad0' = f - 1 - pad0, pad1' = in * up - out * down + pad0 - up + 1
    centering  upsampling: ((f + up - 1) // 2, (f - up) // 2), downsampling: ((f - down + 1) // 2,
               (f - down) // 2)
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

__all__ = ["ConvGeom", "FirGeom", "pair", "conv_output_size", "fir_centering"]


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


def fir_centering(taps: int, up: int = 1, down: int = 1) -> tuple[int, int]:
    """The (before, after) padding that keeps an upsampled (``up``) or downsampled (``down``)
    image aligned with its input under a ``taps``-tap filter (one of the two factors is 1)."""
    if up > 1:
        return (taps + up - 1) // 2, (taps - up) // 2
    return (taps - down + 1) // 2, (taps - down) // 2


@dataclass(frozen=True)
class FirGeom:
    """The non-tensor arguments of one upfirdn2d: zero-insertion factors ``up``, decimation
    ``down`` (both (h, w)) and ``padding`` (top, bottom, left, right; negative crops)."""
    up: tuple[int, int] = (1, 1)
    down: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)

    @classmethod
    def of(cls, up=1, down=1, padding=0) -> "FirGeom":
        """Parse StyleGAN-style arguments: ``up``/``down`` an int or ``[x, y]``; ``padding`` an int,
        ``[x, y]`` or ``[x_before, x_after, y_before, y_after]`` (x is the width axis)."""
        ux, uy = pair(up, "up", 1)
        dx, dy = pair(down, "down", 1)
        return cls((uy, ux), (dy, dx), padding4(padding))

    def pads(self, axis: int) -> tuple[int, int]:
        """(before, after) along axis 0 (height) or 1 (width)."""
        return self.padding[2 * axis], self.padding[2 * axis + 1]

    def upsampled_hw(self, in_hw) -> tuple[int, int]:
        """The size of the zero-inserted, padded image the filter slides over."""
        return tuple(in_hw[a] * self.up[a] + sum(self.pads(a)) for a in range(2))

    def output_hw(self, in_hw, taps_hw) -> tuple[int, int]:
        return tuple((u - taps_hw[a]) // self.down[a] + 1 for a, u in enumerate(self.upsampled_hw(in_hw)))

    def adjoint(self, in_hw, out_hw, taps_hw) -> "FirGeom":
        """The geometry of the input gradient (with the filter flipped): maps ``out_hw`` back to ``in_hw``."""
        pad = []
        for a in range(2):
            p0, f, up, down = self.pads(a)[0], taps_hw[a], self.up[a], self.down[a]
            pad += [f - 1 - p0, in_hw[a] * up - out_hw[a] * down + p0 - up + 1]
        return FirGeom(self.down, self.up, tuple(pad))

    def op_args(self) -> tuple:
        """The arguments in the order fastgan's registered ops take them (lists)."""
        return list(self.up), list(self.down), list(self.padding)

    @classmethod
    def from_op_args(cls, up, down, padding) -> "FirGeom":
        return cls(tuple(int(v) for v in up), tuple(int(v) for v in down), tuple(int(v) for v in padding))


def padding4(value, name: str = "padding") -> tuple[int, int, int, int]:
    """StyleGAN's padding (an int, ``[x, y]`` or ``[x0, x1, y0, y1]``, negative crops; numpy ints
    too) as (top, bottom, left, right)."""
    def is_int(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if is_int(value):
        value = [value]
    if not isinstance(value, (tuple, list)) or len(value) not in (1, 2, 4) or not all(is_int(v) for v in value):
        raise TypeError(f"{name} must be an int or a list of 2 or 4 ints ([x, y] or [x0, x1, y0, y1]), "
                        f"got {value!r}")
    value = [int(v) for v in value]
    if len(value) == 1:
        value = list(value) * 2
    if len(value) == 2:
        value = [value[0], value[0], value[1], value[1]]
    x0, x1, y0, y1 = value
    return y0, y1, x0, x1
