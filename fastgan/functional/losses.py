"""GAN losses on discriminator logits, fused: one kernel computes the loss and dL/dlogits.

Kinds (r = logits of real samples, f = logits of fake samples, each term a mean over all elements
of its own tensor: [N], [N, 1] or a PatchGAN critic's [N, 1, H, W] alike, as ``D(x).mean()``):

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

``LOSS_TERMS`` (below) is the one table of pointwise terms: it defines the reference and names
the kernel's terms (``fastgan.kernels.losses`` implements each name and its derivative).

The fused path runs one op, ``fastgan::gan_loss`` -> (loss, dL/dreal, dL/dfake): one kernel
writes the loss and the gradient w.r.t. every logit; its backward is the op
``gan_loss_backward`` (the scale ``grad * dL``), which is not differentiable: losses are
differentiable once, and a second-order gradient raises. The loss is a 0-d float32 tensor
(float64 for float64 logits); the eager reference follows the same rule. Nothing is read back
to the host, so the losses can be captured in a CUDA graph.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import backend as _backend
from .fused_op import FusedOp

__all__ = ["LOSS_KINDS", "LOSS_TERMS", "d_loss", "g_loss", "logit_stats"]

# term name -> its reference (plain torch); the kernel implements the same names
LOSS_TERMS = {
    "softplus_neg": lambda z: F.softplus(-z),
    "softplus": F.softplus,
    "neg_softplus": lambda z: -F.softplus(z),
    "hinge_real": lambda z: F.relu(1 - z),
    "hinge_fake": lambda z: F.relu(1 + z),
    "neg": lambda z: -z,
    "identity": lambda z: z,
    "half_sq_m1": lambda z: 0.5 * (z - 1) ** 2,
    "half_sq": lambda z: 0.5 * z ** 2,
}

# kind -> ((term of the real logits, term of the fake logits) of d_loss, term of g_loss)
_KINDS = {
    "ns": (("softplus_neg", "softplus"), "softplus_neg"),
    "minimax": (("softplus_neg", "softplus"), "neg_softplus"),
    "hinge": (("hinge_real", "hinge_fake"), "neg"),
    "wgan": (("neg", "identity"), "neg"),
    "lsgan": (("half_sq_m1", "half_sq"), "half_sq_m1"),
}
LOSS_KINDS = tuple(_KINDS)
_D_TERMS = {kind: d for kind, (d, g) in _KINDS.items()}
_G_TERMS = {kind: g for kind, (d, g) in _KINDS.items()}


# ----------------------------------------------------------------------------- reference

def _acc(x: Tensor) -> Tensor:
    """Flat logits in the accumulation dtype (float32, or float64 for float64)."""
    x = x.reshape(-1)
    return x if x.dtype == torch.float64 else x.float()


def _ref_term(z: Tensor, term: str) -> Tensor:
    return LOSS_TERMS[term](z)


def _d_loss_ref(real_logits: Tensor, fake_logits: Tensor, kind: str = "ns") -> Tensor:
    """The eager definition of ``d_loss``: plain torch ops, float32 (float64) accumulation."""
    real_term, fake_term = _D_TERMS[kind]
    return _ref_term(_acc(real_logits), real_term).mean() + _ref_term(_acc(fake_logits), fake_term).mean()


def _g_loss_ref(fake_logits: Tensor, kind: str = "ns") -> Tensor:
    """The eager definition of ``g_loss``."""
    return _ref_term(_acc(fake_logits), _G_TERMS[kind]).mean()


# ----------------------------------------------------------------------------- fused

def _loss_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake(real, fake, real_term, fake_term):
    d_real = fake.new_empty((0,)) if real is None else real.new_empty((real.numel(),))
    return fake.new_empty((), dtype=_loss_dtype(fake)), d_real, fake.new_empty((fake.numel(),))


def _forward(real: Optional[Tensor], fake: Tensor, real_term: Optional[str],
             fake_term: str) -> tuple[Tensor, Tensor, Tensor]:
    loss, d_real, d_fake = _backend.kernels().gan_loss(real, fake, real_term, fake_term)
    return loss, (fake.new_empty((0,)) if d_real is None else d_real), d_fake


def _setup(ctx, inputs, output):
    real, fake, _, _ = inputs
    # saved as (differentiable) outputs: a second derivative then reaches gan_loss_backward,
    # which raises, instead of silently returning zeros
    ctx.save_for_backward(output[1], output[2])
    ctx.set_materialize_grads(False)
    ctx.real_shape = real.shape if real is not None else None
    ctx.fake_shape = fake.shape


def _backward(ctx, d_loss, _d_real, _d_fake):
    if d_loss is None:
        return None, None, None, None
    d_real, d_fake = ctx.saved_tensors
    g_real, g_fake = GAN_LOSS_BACKWARD(d_loss, d_real, d_fake)
    g_real = g_real.reshape(ctx.real_shape) if ctx.real_shape is not None and ctx.needs_input_grad[0] else None
    g_fake = g_fake.reshape(ctx.fake_shape) if ctx.needs_input_grad[1] else None
    return g_real, g_fake, None, None


GAN_LOSS = FusedOp("gan_loss", _forward, _fake, _setup, _backward)


def _backward_forward(d_loss: Tensor, d_real: Tensor, d_fake: Tensor) -> tuple[Tensor, Tensor]:
    g_real, g_fake = torch._foreach_mul([d_real, d_fake], d_loss)  # both scales in one launch
    return g_real, g_fake


GAN_LOSS_BACKWARD = FusedOp("gan_loss_backward", _backward_forward,
                            lambda d_loss, d_real, d_fake: (torch.empty_like(d_real), torch.empty_like(d_fake)),
                            limit="the GAN losses support gradients up to first order")


def _logit_stats_ref(real: Tensor, fake: Tensor) -> Tensor:
    real, fake = _acc(real), _acc(fake)
    acc = 0.5 * ((real > 0).to(real.dtype).mean() + (fake < 0).to(fake.dtype).mean())
    return torch.stack([real.mean(), fake.mean(), acc])


def _logit_stats_forward(real: Tensor, fake: Tensor) -> Tensor:
    return _backend.kernels().logit_stats(real, fake)


LOGIT_STATS = FusedOp("logit_stats", _logit_stats_forward,
                      lambda real, fake: fake.new_empty((3,), dtype=_loss_dtype(fake)),
                      limit="D's logit statistics are monitoring values, not differentiable")


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
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(f"{name} must have a batch dim and at least one logit (shape [N, ...]), "
                         f"got shape {tuple(x.shape)}")


def d_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "ns") -> Tensor:
    """Discriminator loss: mean over the real batch + mean over the fake batch (table above).

    Args:
        real_logits: D's logits on real samples, any shape [N, ...]: [N], [N, 1], or a PatchGAN
            critic's [N, 1, H, W]; every term is a mean over *all* elements, as ``D(x).mean()``.
        fake_logits: D's logits on generated samples, [M, ...]; M and the shape may differ from
            real's. Same device as ``real_logits``; different dtypes (e.g. under autocast) are
            promoted as torch promotes them.
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
    if real_logits.device != fake_logits.device:
        raise ValueError(f"real_logits and fake_logits must be on one device, got {real_logits.device} "
                         f"and {fake_logits.device}")
    if real_logits.dtype != fake_logits.dtype:  # torch's promotion, as the hand-written lines do
        dtype = torch.promote_types(real_logits.dtype, fake_logits.dtype)
        real_logits, fake_logits = real_logits.to(dtype), fake_logits.to(dtype)
    if _backend.backend_for(real_logits, fake_logits) == "eager":
        return _d_loss_ref(real_logits, fake_logits, kind)
    return GAN_LOSS(real_logits, fake_logits, *_D_TERMS[kind])[0]


def g_loss(fake_logits: Tensor, kind: str = "ns") -> Tensor:
    """Generator loss: mean over the fake batch of the kind's G term (table above).

    ``kind="ns"`` is the non-saturating softplus(-f); "minimax" is the original
    log(1 - sigmoid(f)) = -softplus(f) (which G minimises). Shapes, dtypes and the result
    as in :func:`d_loss`. Drop-in for ``-D(fake).mean()`` (wgan, hinge) or
    ``F.binary_cross_entropy_with_logits(f, ones)`` (ns).
    """
    _check_kind(kind)
    _check_logits(fake_logits, "fake_logits")
    if _backend.backend_for(fake_logits) == "eager":
        return _g_loss_ref(fake_logits, kind)
    return GAN_LOSS(None, fake_logits, None, _G_TERMS[kind])[0]


def logit_stats(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """What a D step reports about D, in one launch and without a host sync: the tensor
    [mean(r), mean(f), accuracy] with accuracy = (mean[r > 0] + mean[f < 0]) / 2, means over all
    elements (float32; float64 for float64 logits). Not differentiable: it reads detached logits."""
    _check_logits(real_logits, "real_logits")
    _check_logits(fake_logits, "fake_logits")
    real_logits, fake_logits = real_logits.detach(), fake_logits.detach()
    if real_logits.dtype != fake_logits.dtype:
        dtype = torch.promote_types(real_logits.dtype, fake_logits.dtype)
        real_logits, fake_logits = real_logits.to(dtype), fake_logits.to(dtype)
    if _backend.backend_for(real_logits, fake_logits) == "eager":
        return _logit_stats_ref(real_logits, fake_logits)
    return LOGIT_STATS(real_logits, fake_logits)
