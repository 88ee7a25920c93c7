"""GAN losses on discriminator logits, fused: one kernel computes the loss and dL/dlogits.

Kinds (r = logits of real samples, f = logits of fake samples, each term a mean over its own batch):

=========  =====================================  ==========================================
kind       d_loss(r, f)                           g_loss(f)
=========  =====================================  ==========================================
ns         softplus(-r) + softplus(f)             softplus(-f)        (non-saturating)
minimax    softplus(-r) + softplus(f)             -softplus(f) = log(1 - sigmoid(f))
hinge      relu(1 - r) + relu(1 + f)              -f
wgan       f - r                                  -f
lsgan      0.5 (r - 1)^2 + 0.5 f^2                0.5 (f - 1)^2
=========  =====================================  ==========================================

lsgan uses the LSGAN paper's 0-1 coding (a = 0 for fake, b = c = 1 for real) with the 1/2
factor of its objective; ``ns`` is the logistic loss of StyleGAN (softplus of logits).

The fused path (backends "triton" and "interpret") runs one kernel that writes the loss and
the gradient of the loss w.r.t. every logit; backward is the single scale ``grad * dL``.
The loss is a 0-d float32 tensor for float16/bfloat16/float32 logits (accumulation in
float32) and float64 for float64 logits; the eager reference follows the same rule.
Nothing is read back to the host, so the losses can be captured in a CUDA graph.
Losses are differentiable once (a second-order gradient raises).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import backend as _backend

__all__ = ["LOSS_KINDS", "d_loss", "g_loss"]

LOSS_KINDS = ("ns", "minimax", "hinge", "wgan", "lsgan")

# kind -> (term of the real logits, term of the fake logits) in fastgan.kernels.LOSS_TERMS
_D_TERMS = {
    "ns": ("softplus_neg", "softplus"),
    "minimax": ("softplus_neg", "softplus"),
    "hinge": ("hinge_real", "hinge_fake"),
    "wgan": ("neg", "identity"),
    "lsgan": ("half_sq_m1", "half_sq"),
}
_G_TERMS = {
    "ns": "softplus_neg",
    "minimax": "neg_softplus",
    "hinge": "neg",
    "wgan": "neg",
    "lsgan": "half_sq_m1",
}


# ----------------------------------------------------------------------------- reference

def _acc(x: torch.Tensor) -> torch.Tensor:
    """Flat logits in the accumulation dtype (float32, or float64 for float64)."""
    x = x.reshape(-1)
    return x if x.dtype == torch.float64 else x.float()


def _ref_term(z: torch.Tensor, term: str) -> torch.Tensor:
    if term == "softplus_neg":
        return F.softplus(-z)
    if term == "softplus":
        return F.softplus(z)
    if term == "neg_softplus":
        return -F.softplus(z)
    if term == "hinge_real":
        return F.relu(1 - z)
    if term == "hinge_fake":
        return F.relu(1 + z)
    if term == "neg":
        return -z
    if term == "identity":
        return z
    if term == "half_sq_m1":
        return 0.5 * (z - 1) ** 2
    return 0.5 * z ** 2


def _d_loss_ref(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "ns") -> torch.Tensor:
    """The eager definition of ``d_loss``: plain torch ops, float32 (float64) accumulation."""
    real_term, fake_term = _D_TERMS[kind]
    return _ref_term(_acc(real_logits), real_term).mean() + _ref_term(_acc(fake_logits), fake_term).mean()


def _g_loss_ref(fake_logits: torch.Tensor, kind: str = "ns") -> torch.Tensor:
    """The eager definition of ``g_loss``."""
    return _ref_term(_acc(fake_logits), _G_TERMS[kind]).mean()


# ----------------------------------------------------------------------------- fused

class _GanLoss(torch.autograd.Function):
    """(real or None, fake) -> mean t_real(real) + mean t_fake(fake); gradients saved by the forward."""

    @staticmethod
    def forward(ctx, real, fake, real_term, fake_term):
        kernels = _backend.kernels()
        loss, d_real, d_fake = kernels.gan_loss(real, fake, real_term, fake_term)
        ctx.save_for_backward(d_real, d_fake)
        ctx.real_shape = real.shape if real is not None else None
        ctx.fake_shape = fake.shape
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, d_loss):
        d_real, d_fake = ctx.saved_tensors
        g_real = g_fake = None
        if ctx.needs_input_grad[0]:
            g_real = (d_real * d_loss).reshape(ctx.real_shape)
        if ctx.needs_input_grad[1]:
            g_fake = (d_fake * d_loss).reshape(ctx.fake_shape)
        return g_real, g_fake, None, None


# ----------------------------------------------------------------------------- public

def _check_kind(kind) -> str:
    if not isinstance(kind, str) or kind not in LOSS_KINDS:
        raise ValueError(f"kind: unknown GAN loss {kind!r}; expected one of {LOSS_KINDS}")
    return kind


def _check_logits(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[0] == 0 or x.numel() != x.shape[0]:
        raise ValueError(f"{name} must hold one logit per sample (shape [N] or [N, 1], N >= 1), "
                         f"got shape {tuple(x.shape)}")


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "ns") -> torch.Tensor:
    """Discriminator loss: mean over the real batch + mean over the fake batch (table above).

    Args:
        real_logits: D's logits on real samples, shape [N] or [N, 1] (one value per sample).
        fake_logits: D's logits on generated samples, shape [M] or [M, 1]; M may differ from N.
            Same dtype and device as ``real_logits``.
        kind: "ns", "minimax", "hinge", "wgan" or "lsgan".

    Returns a 0-d float32 tensor (float64 for float64 logits). Differentiable once w.r.t.
    both logits. Stable for logits of any finite magnitude. No host synchronisation.

    Drop-in for the hand-written lines, e.g. ``kind="wgan"``: ``D(fake).mean() - D(real).mean()``;
    ``kind="ns"``: ``F.binary_cross_entropy_with_logits(r, ones) + F.binary_cross_entropy_with_logits(f, zeros)``;
    ``kind="hinge"``: ``F.relu(1 - r).mean() + F.relu(1 + f).mean()``.
    """
    _check_kind(kind)
    _check_logits(real_logits, "real_logits")
    _check_logits(fake_logits, "fake_logits")
    if real_logits.dtype != fake_logits.dtype:
        raise TypeError(f"real_logits and fake_logits must share one dtype, got {real_logits.dtype} "
                        f"and {fake_logits.dtype}")
    if real_logits.device != fake_logits.device:
        raise ValueError(f"real_logits and fake_logits must be on one device, got {real_logits.device} "
                         f"and {fake_logits.device}")
    real_term, fake_term = _D_TERMS[kind]
    if torch.compiler.is_compiling():  # one opaque node for torch.compile (fastgan.library)
        from .. import library
        return library.gan_loss(real_logits, fake_logits, real_term, fake_term)
    if _backend.backend_for(real_logits, fake_logits) == "eager":
        return _d_loss_ref(real_logits, fake_logits, kind)
    return _GanLoss.apply(real_logits, fake_logits, real_term, fake_term)


def g_loss(fake_logits: torch.Tensor, kind: str = "ns") -> torch.Tensor:
    """Generator loss: mean over the fake batch of the kind's G term (table above).

    ``kind="ns"`` is the non-saturating softplus(-f); "minimax" is the original
    log(1 - sigmoid(f)) = -softplus(f) (which G minimises). Shapes, dtypes and the result
    as in :func:`d_loss`. Drop-in for ``-D(fake).mean()`` (wgan, hinge) or
    ``F.binary_cross_entropy_with_logits(f, ones)`` (ns).
    """
    _check_kind(kind)
    _check_logits(fake_logits, "fake_logits")
    if torch.compiler.is_compiling():  # one opaque node for torch.compile (fastgan.library)
        from .. import library
        return library.gan_loss(None, fake_logits, None, _G_TERMS[kind])
    if _backend.backend_for(fake_logits) == "eager":
        return _g_loss_ref(fake_logits, kind)
    return _GanLoss.apply(None, fake_logits, None, _G_TERMS[kind])
