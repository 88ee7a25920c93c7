import math

import torch
import torch.nn.functional as F

from .. import custom_ops

_ACTS = {  # name: (function of (x, alpha), default alpha, default gain)
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2)),
    "tanh": (lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a: torch.sigmoid(x), 0.0, 1.0),
}


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="cuda"):
    if impl == "cuda":
        custom_ops.get_plugin("bias_act_plugin")
    fn, def_alpha, def_gain = _ACTS[act]
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = fn(x, def_alpha if alpha is None else alpha)
    x = x * (def_gain if gain is None else gain)
    return x if clamp is None else x.clamp(-clamp, clamp)
