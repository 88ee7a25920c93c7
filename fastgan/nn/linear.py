"""LinearAct: nn.Linear with a fused bias + activation epilogue (the MLP GANs' and mapping
networks' Linear -> activation). It *is* an ``nn.Linear`` (same parameters, initialisation and
state_dict); ``fastgan.accelerate`` binds its forward onto existing ``nn.Linear`` modules."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import linear_act
from .epilogue import Epilogue, epilogue, params_for

__all__ = ["LinearAct"]


class LinearAct(Epilogue, nn.Linear):
    """``act(x @ W^T + b) * gain`` (then clamp): ``fastgan.functional.linear_act``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 act: str = "linear", alpha: float | None = None, gain: float | None = None,
                 clamp: float | None = None):
        self._set_epilogue(act, alpha, gain, clamp)
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w, b = params_for(self, input)
        return linear_act(input, w, b, **epilogue(self))
