"""fastgan.functional: the autograd level. One module per op family: its eager reference, its
fused ops (``fused_op.FusedOp``: an autograd.Function in eager code, a ``torch.ops.fastgan``
custom op under torch.compile, sharing one forward and one backward) and its public function,
which validates the arguments and runs the reference on the "eager" backend, the fused op
otherwise (``fastgan.backend``)."""
from .activations import ACTIVATIONS, ActSpec, resolve_act
from .batch_norm_act import batch_norm_act, instance_norm_act
from .bias_act import bias_act
from .conv import conv2d_act, conv_transpose2d_act
from .conv2d_resample import conv2d_resample
from .filtered_lrelu import filtered_lrelu
from .fma import fma
from .fused_op import REGISTERED, check_registered
from .grid_sample import grid_sample
from .linear import linear_act
from .losses import LOSS_KINDS, d_loss, g_loss, logit_stats
from .modulated_conv import modulated_conv2d
from .penalty import PENALTY_KINDS, gradient_penalty, lazy_adam_hparams, lazy_regularization
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = ["ACTIVATIONS", "ActSpec", "resolve_act", "bias_act", "batch_norm_act", "instance_norm_act", "linear_act",
           "conv2d_act", "conv_transpose2d_act", "LOSS_KINDS", "d_loss", "g_loss", "logit_stats", "PENALTY_KINDS",
           "gradient_penalty",
           "lazy_regularization", "lazy_adam_hparams", "REGISTERED", "check_registered", "setup_filter", "upfirdn2d",
           "filter2d", "upsample2d", "downsample2d", "filtered_lrelu", "fma", "grid_sample",
           "conv2d_resample", "modulated_conv2d"]
