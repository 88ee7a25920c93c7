"""fastgan.kernels: Triton kernels and their launchers (tensors in, tensors out; no autograd).

Installed from the top-level folder ``kernels/`` (see setup.py). Import it through
``fastgan.backend.kernels()`` so that interpreter mode is decided before Triton compiles.
"""
from .activation import ACT_IDS
from .batch_norm_act import bn_act_bwd, bn_stats
from .bias_act import bias_act_bwd, bias_act_fwd, channel_layout
from .common import is_interpreted
from .losses import LOSS_TERMS, gan_loss
from .penalty import PENALTY_KINDS, grad_penalty_bwd, grad_penalty_fwd, interpolate

__all__ = ["ACT_IDS", "bn_stats", "bn_act_bwd", "bias_act_fwd", "bias_act_bwd", "channel_layout", "is_interpreted",
           "LOSS_TERMS", "gan_loss", "PENALTY_KINDS", "interpolate", "grad_penalty_fwd", "grad_penalty_bwd"]
from .conv import conv2d_act_fwd, conv_transpose2d_act_fwd  # noqa: E402

__all__ += ["conv2d_act_fwd", "conv_transpose2d_act_fwd"]
