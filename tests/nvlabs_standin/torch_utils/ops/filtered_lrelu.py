import math

from . import bias_act, upfirdn2d


def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=math.sqrt(2), slope=0.2, clamp=None,
                   flip_filter=False, impl="cuda"):
    x = bias_act.bias_act(x, b, impl=impl)
    x = upfirdn2d.upfirdn2d(x, fu, up=up, padding=padding, flip_filter=flip_filter, gain=up * up, impl=impl)
    x = bias_act.bias_act(x, act="lrelu", alpha=slope, gain=gain, clamp=clamp, impl=impl)
    return upfirdn2d.upfirdn2d(x, fd, down=down, flip_filter=flip_filter, impl=impl)
