"""BatchNormAct1d / BatchNormAct2d / InstanceNormAct2d: torch's normalisation modules followed
by the fused activation epilogue.

Each *is* its torch module (a subclass: the same parameters, buffers, training/eval semantics
and state_dict); only the normalisation call differs, running
``fastgan.functional.batch_norm_act`` / ``instance_norm_act`` with the module's ``act``,
``alpha``, ``gain`` and ``clamp``. Defaults follow fastgan's activation table (relu: gain
sqrt(2)); pass ``gain=1.0`` to reproduce the torch module + ``nn.ReLU`` exactly.
``fastgan.accelerate`` binds these same methods onto existing torch modules.
"""
from __future__ import annotations

import torch
from torch import nn

from ..functional import batch_norm_act, instance_norm_act
from .epilogue import Epilogue, epilogue

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "InstanceNormAct2d", "batch_norm_arguments"]


def batch_norm_arguments(bn: nn.modules.batchnorm._BatchNorm) -> dict:
    """The keyword arguments of ``fastgan.functional.batch_norm_act`` for this module's next
    forward, with torch's batch-norm bookkeeping: in training mode with running statistics,
    ``num_batches_tracked`` counts the batch and ``momentum=None`` is the cumulative average
    (both done by the op, in the statistics kernel's launch)."""
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    counting = bn.training and bn.track_running_stats and bn.num_batches_tracked is not None
    return dict(running_mean=bn.running_mean if track else None, running_var=bn.running_var if track else None,
                weight=bn.weight, bias=bn.bias, training=use_batch_stats,
                momentum=bn.momentum if counting or bn.momentum is not None else 0.0, eps=bn.eps,
                num_batches_tracked=bn.num_batches_tracked if counting else None)


class _NormAct(Epilogue):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, act: str = "relu", alpha: float | None = None,
                 gain: float | None = None, clamp: float | None = None, device=None, dtype=None):
        self._set_epilogue(act, alpha, gain, clamp)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)

    @classmethod
    def from_torch(cls, norm, act: str = "relu", alpha=None, gain=None, clamp=None):
        """A fused module with ``norm``'s settings, device, dtype and a copy of its state."""
        ref = norm.weight if norm.weight is not None else norm.running_mean
        m = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, act=act,
                alpha=alpha, gain=gain, clamp=clamp, device=ref.device if ref is not None else None,
                dtype=ref.dtype if ref is not None else None)
        m.load_state_dict(norm.state_dict())
        m.train(norm.training)
        return m


class _BatchNormAct(_NormAct):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        return batch_norm_act(input, **batch_norm_arguments(self), **epilogue(self))


class BatchNormAct1d(_BatchNormAct, nn.BatchNorm1d):
    """``act(batch_norm(x)) * gain`` (then clamp), a drop-in for ``nn.BatchNorm1d`` + activation
    (x [N, C] or [N, C, L]: the MLP GANs' Linear -> BatchNorm1d -> activation)."""


class BatchNormAct2d(_BatchNormAct, nn.BatchNorm2d):
    """``act(batch_norm(x)) * gain`` (then clamp), a drop-in for ``nn.BatchNorm2d`` + activation.

    In training mode the statistics, normalisation, affine map and activation run as two fused
    passes forward (statistics; normalise + activate) and two backward, instead of batch norm's
    two plus the activation's separate passes; differentiable twice."""

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"BatchNormAct2d expects a 4-d input [N, C, H, W], got shape {tuple(input.shape)}")


class InstanceNormAct2d(_NormAct, nn.InstanceNorm2d):
    """``act(instance_norm(x)) * gain`` (then clamp), a drop-in for ``nn.InstanceNorm2d`` +
    activation (pix2pix, CycleGAN, StarGAN, UNIT): torch's forward, with the fused op in place of
    ``F.instance_norm``. Note torch's defaults: ``affine=False``, ``track_running_stats=False``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = False,
                 track_running_stats: bool = False, **kwargs):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, **kwargs)

    def _apply_instance_norm(self, input: torch.Tensor) -> torch.Tensor:
        return instance_norm_act(input, self.running_mean, self.running_var, self.weight, self.bias,
                                 self.training or not self.track_running_stats,
                                 self.momentum if self.momentum is not None else 0.0, self.eps, **epilogue(self))
