"""What every fastgan.nn module shares: its activation epilogue (``act``, ``alpha``, ``gain``,
``clamp``: see :func:`fastgan.functional.bias_act`), validated once and shown in the repr, and the
cast of float32 parameters to a half-precision input's dtype."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import resolve_act

__all__ = ["Epilogue", "epilogue", "params_for"]


def epilogue(module: nn.Module) -> dict:
    """The activation keyword arguments of a fused module."""
    return {"act": module.act, "alpha": module.alpha, "gain": module.gain, "clamp": module.clamp}


def params_for(module: nn.Module, x: torch.Tensor):
    """(weight, bias) in x's dtype (bf16/fp16 inputs with float32 parameters); under autocast
    the functional op casts everything to the autocast dtype itself."""
    w, b = module.weight, module.bias
    if w is not None and w.dtype != x.dtype:
        w = w.to(x.dtype)
    if b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype)
    return w, b


class Epilogue:
    """Mixin: ``_set_epilogue`` (call before torch's ``__init__``) and the repr."""

    def _set_epilogue(self, act, alpha, gain, clamp):
        resolve_act(act, alpha, gain, clamp)  # validate early
        self.act, self.alpha, self.gain, self.clamp = act, alpha, gain, clamp

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", act={self.act!r}"
        for name in ("alpha", "gain", "clamp"):
            if getattr(self, name) is not None:
                s += f", {name}={getattr(self, name)}"
        return s
