"""fastgan.kernels: Triton kernels and their launchers (tensors in, tensors out; no autograd).

Installed from the top-level folder ``kernels/`` (see setup.py). Import it through
``fastgan.backend.kernels()`` so that interpreter mode is decided before Triton compiles.
"""
from .activation import ACT_IDS
from .bias_act import bias_act_bwd, bias_act_fwd, channel_layout
from .common import is_interpreted

__all__ = ["ACT_IDS", "bias_act_fwd", "bias_act_bwd", "channel_layout", "is_interpreted"]
