"""The activation table (StyleGAN2-ADA semantics) and argument resolution shared by every
op with an activation epilogue (bias_act, conv2d_act, conv_transpose2d_act).

One table drives the eager reference and the fused kernels: the kernel side knows the
same names (``fastgan.kernels.ACT_IDS``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    name: str
    func: Callable[[torch.Tensor, float], torch.Tensor]  # reference act(z, alpha), any autograd order
    def_alpha: float
    def_gain: float
    has_2nd_grad: bool  # False: act'' is zero almost everywhere


ACTIVATIONS: dict[str, Activation] = {
    a.name: a for a in [
        Activation("linear", lambda z, alpha: z, 0.0, 1.0, False),
        Activation("relu", lambda z, alpha: F.relu(z), 0.0, math.sqrt(2), False),
        Activation("lrelu", lambda z, alpha: F.leaky_relu(z, alpha), 0.2, math.sqrt(2), False),
        Activation("tanh", lambda z, alpha: torch.tanh(z), 0.0, 1.0, True),
        Activation("sigmoid", lambda z, alpha: torch.sigmoid(z), 0.0, 1.0, True),
        Activation("elu", lambda z, alpha: F.elu(z), 0.0, 1.0, True),
        Activation("selu", lambda z, alpha: F.selu(z), 0.0, 1.0, True),
        Activation("softplus", lambda z, alpha: F.softplus(z), 0.0, 1.0, True),
        Activation("swish", lambda z, alpha: z * torch.sigmoid(z), 0.0, math.sqrt(2), True),
    ]
}


@dataclass(frozen=True)
class ActSpec:
    """A fully resolved activation epilogue: y = clamp(act(z) * gain, -clamp, clamp)."""
    act: str
    alpha: float
    gain: float
    clamp: float | None

    @property
    def has_2nd_grad(self) -> bool:
        return ACTIVATIONS[self.act].has_2nd_grad

    def reference(self, z: torch.Tensor) -> torch.Tensor:
        """The eager definition of the epilogue (differentiable to any order)."""
        y = ACTIVATIONS[self.act].func(z, self.alpha)
        if self.gain != 1:
            y = y * self.gain
        if self.clamp is not None:
            y = y.clamp(-self.clamp, self.clamp)
        return y


def _finite_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def resolve_act(act: str, alpha=None, gain=None, clamp=None) -> ActSpec:
    """Validate the activation arguments and fill in the table's defaults."""
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"act: unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    if alpha is not None and act != "lrelu":
        raise ValueError(f"alpha only applies to act='lrelu' (the negative slope), not act={act!r}")
    alpha = spec.def_alpha if alpha is None else _finite_number(alpha, "alpha")
    gain = spec.def_gain if gain is None else _finite_number(gain, "gain")
    if clamp is not None:
        clamp = _finite_number(clamp, "clamp")
        if clamp < 0:
            raise ValueError(f"clamp must be >= 0 (or None for no clamp), got {clamp}")
    return ActSpec(act, alpha, gain, clamp)
