"""Skip weight-gradient work where it would be thrown away.

A gradient penalty calls ``autograd.grad(D(x).sum(), x, create_graph=True)``: only the
gradient with respect to the *input* is wanted, but an autograd Function cannot see that
(``ctx.needs_input_grad`` says the weight requires grad, not that this pass wants it).
Inside ``no_weight_gradients()`` fastgan's conv ops skip their weight and bias gradients;
the penalty's second backward (w.r.t. the parameters) still flows through the graph built
from the input gradient. The same idea as StyleGAN2-ADA's ``conv2d_gradfix``, except that a
weight computed from tensors the pass differentiates (StyleGAN's modulated weights under path
length) keeps its gradient (``weight_gradient_wanted``): the block skips work, not results.
A parameter passed to an op directly has no gradient inside the block even when asked for.
"""
from __future__ import annotations

import contextlib

import torch

# A process-wide counter, not a thread-local: on CUDA the autograd engine runs backward
# functions on its own per-device worker threads, which would not see a thread-local flag
# set by the thread that called autograd.grad.
_disabled = 0


def weight_gradients_enabled() -> bool:
    """False inside ``no_weight_gradients()``."""
    return _disabled == 0


def weight_gradient_wanted(w) -> bool:
    """Whether a layer op's backward computes the gradient of its weight (or bias) ``w``: always
    outside ``no_weight_gradients()``; inside it, only for a weight computed from other tensors
    that the running backward pass differentiates through (StyleGAN's per-sample modulated
    weights when the path length is taken with respect to the styles). A parameter, or a weight
    computed from parameters only (equalised learning rate, spectral norm), is skipped."""
    if weight_gradients_enabled():
        return True
    node = getattr(w, "grad_fn", None)
    if node is None:
        return False
    try:  # the autograd engine knows whether this pass will execute w's node
        return bool(torch._C._will_engine_execute_node(node))
    except (RuntimeError, AttributeError):  # not inside an engine pass (or an older torch): keep it
        return True


@contextlib.contextmanager
def no_weight_gradients(disable: bool = True):
    """Within this block, fastgan's layer ops return None for weight and bias gradients that the
    running backward pass does not use (``weight_gradient_wanted``)."""
    global _disabled
    if disable:
        _disabled += 1
    try:
        yield
    finally:
        if disable:
            _disabled -= 1
