"""BatchNormAct2d: batch normalisation followed by the fused activation epilogue."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import resolve_act
from ..functional.batch_norm_act import batch_norm_act


def batch_norm_arguments(bn: nn.BatchNorm2d) -> tuple:
    """The (running_mean, running_var, weight, bias, training, momentum, eps) arguments of
    ``F.batch_norm`` for this module's next forward, with nn.BatchNorm2d.forward's bookkeeping
    (``num_batches_tracked`` incremented, cumulative average when momentum is None)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return (bn.running_mean if track else None, bn.running_var if track else None, bn.weight, bn.bias,
            use_batch_stats, factor, bn.eps)


class BatchNormAct2d(nn.BatchNorm2d):
    """``act(batch_norm(x)) * gain`` (then clamp), a drop-in for ``nn.BatchNorm2d`` + activation.

    It *is* an ``nn.BatchNorm2d`` (same parameters ``weight``/``bias``, buffers
    ``running_mean``/``running_var``/``num_batches_tracked``, same training/eval semantics and
    state_dict). In training mode the statistics, normalisation, affine map and activation run
    as two fused passes forward (statistics; normalise + activate) and two backward, instead
    of batch norm's two plus the activation's separate passes
    (``fastgan.functional.batch_norm_act``).

    Defaults follow fastgan's activation table (relu: gain sqrt(2)); pass ``gain=1.0`` to
    reproduce ``nn.BatchNorm2d`` + ``nn.ReLU`` exactly.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, act: str = "relu", alpha: float | None = None,
                 gain: float | None = None, clamp: float | None = None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        resolve_act(act, alpha, gain, clamp)  # validate early
        self.act, self.alpha, self.gain, self.clamp = act, alpha, gain, clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"BatchNormAct2d expects a 4-d input [N, C, H, W], got shape {tuple(x.shape)}")
        return batch_norm_act(x, *batch_norm_arguments(self), act=self.act, alpha=self.alpha, gain=self.gain,
                              clamp=self.clamp)

    @classmethod
    def from_torch(cls, bn: nn.BatchNorm2d, act: str = "relu", alpha=None, gain=None, clamp=None):
        m = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, act=act, alpha=alpha,
                gain=gain, clamp=clamp, device=(bn.weight.device if bn.weight is not None else None),
                dtype=(bn.weight.dtype if bn.weight is not None else None))
        m.load_state_dict(bn.state_dict())
        m.train(bn.training)
        return m

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", act={self.act!r}"
        for name in ("alpha", "gain", "clamp"):
            if getattr(self, name) is not None:
                s += f", {name}={getattr(self, name)}"
        return s
