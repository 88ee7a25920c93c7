"""BiasAct: a learnable per-channel bias followed by the fused activation epilogue."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import bias_act, resolve_act


class BiasAct(nn.Module):
    """y = clamp(act(x + bias) * gain, -clamp, clamp) along ``dim``.

    ``bias`` is a float32 parameter of shape [num_features] (initialised to ``bias_init``);
    under autocast or with half inputs it is cast to the input's dtype for the op.
    """

    def __init__(self, num_features: int, act: str = "linear", alpha: float | None = None,
                 gain: float | None = None, clamp: float | None = None, dim: int = 1,
                 bias: bool = True, bias_init: float = 0.0, device=None, dtype=None):
        super().__init__()
        if not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        resolve_act(act, alpha, gain, clamp)  # validate early
        self.num_features, self.dim = num_features, dim
        self.act, self.alpha, self.gain, self.clamp = act, alpha, gain, clamp
        if bias:
            self.bias = nn.Parameter(torch.full((num_features,), float(bias_init), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return bias_act(x, b, dim=self.dim, act=self.act, alpha=self.alpha, gain=self.gain, clamp=self.clamp)

    def extra_repr(self) -> str:
        parts = [f"{self.num_features}", f"act={self.act!r}", f"dim={self.dim}"]
        for name in ("alpha", "gain", "clamp"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)}")
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)
