"""fastgan.functional: the autograd level. Each op validates its arguments, then runs the
fused Triton path or the eager reference, as ``fastgan.backend`` decides."""
from .activations import ACTIVATIONS, ActSpec, resolve_act
from .bias_act import bias_act
from .losses import LOSS_KINDS, d_loss, g_loss
from .penalty import PENALTY_KINDS, gradient_penalty, lazy_adam_hparams, lazy_regularization

__all__ = ["ACTIVATIONS", "ActSpec", "resolve_act", "bias_act",
           "LOSS_KINDS", "d_loss", "g_loss",
           "PENALTY_KINDS", "gradient_penalty", "lazy_regularization", "lazy_adam_hparams"]
from .conv import conv2d_act, conv_transpose2d_act  # noqa: E402

__all__ += ["conv2d_act", "conv_transpose2d_act"]
