"""Skip weight-gradient work where it would be thrown away.

A gradient penalty calls ``autograd.grad(D(x).sum(), x, create_graph=True)``: only the
gradient with respect to the *input* is wanted, but an autograd Function cannot see that
(``ctx.needs_input_grad`` says the weight requires grad, not that this pass wants it).
Inside ``no_weight_gradients()`` fastgan's conv ops skip their weight and bias gradients;
the penalty's second backward (w.r.t. the parameters) still flows through the graph built
from the input gradient. The same idea as StyleGAN2-ADA's ``conv2d_gradfix``.
"""
from __future__ import annotations

import contextlib

# A process-wide counter, not a thread-local: on CUDA the autograd engine runs backward
# functions on its own per-device worker threads, which would not see a thread-local flag
# set by the thread that called autograd.grad.
_disabled = 0


def weight_gradients_enabled() -> bool:
    """False inside ``no_weight_gradients()``."""
    return _disabled == 0


@contextlib.contextmanager
def no_weight_gradients(disable: bool = True):
    """Within this block, fastgan's layer ops return None for weight and bias gradients."""
    global _disabled
    if disable:
        _disabled += 1
    try:
        yield
    finally:
        if disable:
            _disabled -= 1
