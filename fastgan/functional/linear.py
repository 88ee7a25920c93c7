"""linear_act: y = clamp(act(x @ weight^T + bias) * gain, -clamp, clamp).

The matrix product is the vendor's (``F.linear`` without bias: cuBLAS on CUDA, differentiable to
any order by torch); the bias, activation, gain and clamp run as the fused ``bias_act`` along the
last dim, whose backward reduces the bias gradient in the same pass. Differentiable twice.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .bias_act import bias_act

__all__ = ["linear_act"]


def linear_act(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, act: str = "linear",
               alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None) -> Tensor:
    """``bias_act(F.linear(x, weight), bias, dim=-1, act, alpha, gain, clamp)``.

    Args:
        x: [..., in_features], floating point.
        weight: [out_features, in_features], x's dtype and device.
        bias: [out_features] or None.
        act, alpha, gain, clamp: the epilogue of :func:`fastgan.functional.bias_act`.

    Under autocast the product runs in the autocast dtype (as ``F.linear``) and the bias is cast
    to it.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"x and weight must be torch.Tensors, got {type(x).__name__} and {type(weight).__name__}")
    if not x.is_floating_point() or x.dim() == 0:
        raise TypeError(f"x must be a floating-point tensor with at least one dim, got {x.dtype}, shape "
                        f"{tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must be [out_features, {x.shape[-1]}] for x of shape {tuple(x.shape)}, got "
                         f"{tuple(weight.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],)):
        raise ValueError(f"bias must be a tensor of shape [{weight.shape[0]}], got "
                         f"{getattr(bias, 'shape', type(bias).__name__)}")
    z = F.linear(x, weight)
    if bias is not None and bias.dtype != z.dtype:
        bias = bias.to(z.dtype)
    return bias_act(z, bias, z.dim() - 1, act, alpha, gain, clamp)
