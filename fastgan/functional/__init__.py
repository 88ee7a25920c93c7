"""fastgan.functional: the autograd level. Each op validates its arguments, then runs the
fused Triton path or the eager reference, as ``fastgan.backend`` decides."""
from .activations import ACTIVATIONS, ActSpec, resolve_act
from .bias_act import bias_act

__all__ = ["ACTIVATIONS", "ActSpec", "resolve_act", "bias_act"]
