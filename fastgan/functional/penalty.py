"""Gradient penalties on the discriminator (WGAN-GP, R1, R2) and lazy regularisation.

    wgan-gp  x = eps * real + (1 - eps) * fake,  eps ~ U(0, 1) per sample
             P = gamma * mean_n (||dD(x)/dx[n]||_2 - center)^2
    r1       P = gamma / 2 * mean_n ||dD(real)/dx[n]||_2^2
    r2       P = gamma / 2 * mean_n ||dD(fake)/dx[n]||_2^2

The input gradient is taken with ``torch.autograd.grad(logits.sum(), x, create_graph=True)``
inside :func:`fastgan.functional.gradfix.no_weight_gradients` (fastgan's layer ops skip their
weight gradients in that pass); P stays differentiable w.r.t. D's parameters through the
graph of that input gradient.

Fused path (backends "triton"/"interpret"): the interpolation is one Triton kernel; the
per-sample norms and the penalty are one reduction kernel whose backward is one pointwise
kernel ``dgrad = dP * coef[n] * grad`` (the autograd Function ``_GradPenalty``, first order:
the second backward reaches the parameters through the graph of ``grad``, not through
another derivative of the penalty). Accumulation is float32 (float64 for float64 inputs).

At ||grad|| = 0 the wgan-gp derivative is defined as 0 (the safe-norm convention, the same
as torch's ``vector_norm`` backward), so a zero gradient gives a finite penalty
(gamma * center^2) and no NaN.

Nothing here reads a tensor on the host (no ``.item()``, no ``bool(tensor)``, no value
checks; eps is drawn on the device with ``torch.rand``), so a penalty step can be captured
in a CUDA graph. Validation looks at shapes, dtypes and Python arguments only.
"""
import math
from typing import Callable

import torch
from torch import Tensor

from .. import backend as _backend
from .fused_op import FusedOp, fresh_like
from .gradfix import no_weight_gradients

__all__ = ["PENALTY_KINDS", "gradient_penalty", "lazy_regularization", "lazy_adam_hparams"]

PENALTY_KINDS = ("wgan-gp", "r1", "r2")


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _weight(kind: str, gamma: float, n: int) -> float:
    """The factor in front of every per-sample term: gamma / N (wgan-gp) or gamma / (2N) (r1, r2)."""
    return gamma / n if kind == "wgan-gp" else gamma / (2.0 * n)


def draw_eps(real: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The wgan-gp interpolation weights as ``gradient_penalty`` draws them when ``eps`` is None:

        torch.rand(N, dtype=float32 (float64 for float64 real), device=real.device, generator=generator)
    """
    return torch.rand(real.shape[0], dtype=_acc_dtype(real), device=real.device, generator=generator)


# ----------------------------------------------------------------------------- reference

def _interpolate_ref(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    acc = _acc_dtype(real)
    e = eps.reshape([-1] + [1] * (real.dim() - 1)).to(acc)
    return (e * real.to(acc) + (1 - e) * fake.to(acc)).to(real.dtype)


def _penalty_ref(grad: torch.Tensor, kind: str, gamma: float, center: float) -> torch.Tensor:
    """P from the input gradient with plain torch ops (differentiable to any order)."""
    g = grad.reshape(grad.shape[0], -1).to(_acc_dtype(grad))
    if kind == "wgan-gp":
        return gamma * ((torch.linalg.vector_norm(g, dim=1) - center) ** 2).mean()
    return gamma / 2 * g.square().sum(dim=1).mean()


def _gradient_penalty_ref(D: Callable, real: torch.Tensor, fake: torch.Tensor | None, kind: str,
                          gamma: float, center: float, eps: torch.Tensor | None, d_kwargs: dict):
    """The eager definition of ``gradient_penalty``: returns (penalty, logits)."""
    if kind == "wgan-gp":
        x = _interpolate_ref(real.detach(), fake.detach(), eps)
    else:
        x = (real if kind == "r1" else fake).detach()
    x = x.requires_grad_(True)
    with torch.enable_grad(), no_weight_gradients():
        logits = D(x, **d_kwargs)
        _check_logits(logits, x.shape[0])
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        return _penalty_ref(grad, kind, gamma, center), logits


# ----------------------------------------------------------------------------- fused

def _interpolate_forward(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    return fresh_like(_backend.kernels().interpolate(real, fake, eps), real)


# the penalty's inputs are detached: the interpolation needs no backward
INTERPOLATE = FusedOp("interpolate", _interpolate_forward, lambda real, fake, eps: torch.empty_like(real),
                      limit="the interpolation takes detached inputs and has no gradient")


def _penalty_fake(grad, kind, weight, center):
    return grad.new_empty((), dtype=_acc_dtype(grad)), grad.new_empty((grad.shape[0],), dtype=_acc_dtype(grad))


def _penalty_forward(grad: Tensor, kind: str, weight: float, center: float) -> tuple[Tensor, Tensor]:
    """(P, coef): P = sum_n weight * term(||grad[n]||), coef[n] what the backward scales grad[n] by."""
    return _backend.kernels().grad_penalty_fwd(grad, kind, weight, center)


def _penalty_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1])  # coef as an output: a derivative through it raises
    ctx.set_materialize_grads(False)


def _penalty_backward(ctx, d_penalty, _d_coef):
    if d_penalty is None:
        return None, None, None, None
    grad, coef = ctx.saved_tensors
    return GRAD_PENALTY_BACKWARD(d_penalty, grad, coef), None, None, None


GRAD_PENALTY = FusedOp("grad_penalty", _penalty_forward, _penalty_fake, _penalty_setup, _penalty_backward)


def _penalty_backward_forward(d_penalty: Tensor, grad: Tensor, coef: Tensor) -> Tensor:
    """dgrad[n] = d_penalty * coef[n] * grad[n] (one pointwise kernel)."""
    return fresh_like(_backend.kernels().grad_penalty_bwd(d_penalty, grad, coef), grad)


GRAD_PENALTY_BACKWARD = FusedOp("grad_penalty_backward", _penalty_backward_forward,
                                lambda d_penalty, grad, coef: torch.empty_like(grad),
                                limit="the penalty term supports gradients up to first order (the second "
                                      "backward reaches D's parameters through the graph of grad)")


# ----------------------------------------------------------------------------- public

def _check_number(value, name: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_images(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must have a batch dim with at least one sample, got shape {tuple(x.shape)}")


def _check_logits(logits, n: int) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"D must return a torch.Tensor of logits, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"D must return floating-point logits, got dtype {logits.dtype}")
    if logits.dim() == 0 or logits.shape[0] != n:
        raise ValueError(f"D must return logits with one row per sample (shape [{n}, ...]: [{n}], [{n}, 1] or "
                         f"a PatchGAN critic's [{n}, 1, H, W]), got shape {tuple(logits.shape)}")


def gradient_penalty(D: Callable, real: torch.Tensor, fake: torch.Tensor | None = None,
                     kind: str = "wgan-gp", gamma: float = 10.0, center: float = 1.0,
                     return_logits: bool = False, eps: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, **d_kwargs):
    """Weighted gradient penalty of the discriminator ``D``, differentiable w.r.t. D's parameters.

    Drop-in for the hand-written WGAN-GP lines (``eps`` drawn per sample, the interpolate made
    to require grad, ``autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)``,
    ``gamma * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()``) and for R1/R2.

    Args:
        D: callable ``D(x, **d_kwargs) -> logits`` of shape [N, ...] ([N], [N, 1], or a PatchGAN
            critic's [N, 1, H, W]); the per-sample gradient is that of the sum of the sample's
            logits (``autograd.grad(logits.sum(), x)``) over the whole input sample.
        real: real batch [N, ...] (floating point); detached here.
        fake: generated batch of real's shape and device; required by "wgan-gp" and "r2",
            ignored by "r1". Detached here. A dtype other than real's (``G(z)`` under autocast) is
            promoted with real's as torch promotes them.
        kind: "wgan-gp" (gamma * mean (||g|| - center)^2 on interpolates), "r1"
            (gamma / 2 * mean ||g||^2 on real) or "r2" (the same on fake).
        gamma: weight, a finite number >= 0 (WGAN-GP: 10; R1: e.g. 10, or 0.0002 * res^2 / batch).
            With lazy regularisation pass ``lazy_regularization(gamma, interval)``.
        center: the target norm of wgan-gp (1.0); ignored by r1/r2.
        return_logits: also return ``D(x)`` on the penalised batch (R1: the real logits, so
            an R1 step runs D once; they are differentiable w.r.t. D's parameters).
        eps: wgan-gp only: N interpolation weights in [0, 1] (any shape with N elements).
            When None they are drawn by :func:`draw_eps`:
            ``torch.rand(N, dtype=float32 (float64 for float64 real), device=real.device,
            generator=generator)``; the interpolate is computed in that dtype and stored in
            real's dtype. Pass the same seeded ``generator`` (or eps) to reproduce a draw.
        generator: a ``torch.Generator`` on real's device for the eps draw (inside a CUDA
            graph capture a custom generator must be registered with the graph; the default
            generator needs nothing).
        **d_kwargs: forwarded to D.

    Returns:
        The penalty, a 0-d float32 tensor (float64 for float64 inputs), or
        ``(penalty, logits)`` when ``return_logits``.

    Runs with grad enabled even inside ``torch.no_grad()`` (the penalty is a gradient).
    No host synchronisation (CUDA-graph capturable). At ||g|| = 0 the wgan-gp derivative is
    taken as 0 (safe norm). The penalised input's own ``.grad`` is left untouched by this
    function; a later backward through the returned logits may populate it.
    """
    if not callable(D):
        raise TypeError(f"D must be callable (a module or function), got {type(D).__name__}")
    if not isinstance(kind, str) or kind not in PENALTY_KINDS:
        raise ValueError(f"kind: unknown gradient penalty {kind!r}; expected one of {PENALTY_KINDS}")
    gamma = _check_number(gamma, "gamma", minimum=0.0)
    center = _check_number(center, "center")
    if not isinstance(return_logits, bool):
        raise TypeError(f"return_logits must be a bool, got {type(return_logits).__name__}")
    _check_images(real, "real")
    if kind in ("wgan-gp", "r2"):
        if fake is None:
            raise ValueError(f"fake is required for kind={kind!r}")
        _check_images(fake, "fake")
        if fake.shape != real.shape:
            raise ValueError(f"fake must have real's shape {tuple(real.shape)}, got {tuple(fake.shape)}")
        if fake.device != real.device:
            raise ValueError(f"fake must be on real's device {real.device}, got {fake.device}")
        if fake.dtype != real.dtype:  # e.g. G(z) under autocast: torch's promotion, as hand-written code
            dtype = torch.promote_types(real.dtype, fake.dtype)
            real, fake = real.to(dtype), fake.to(dtype)
    elif fake is not None and not isinstance(fake, torch.Tensor):
        raise TypeError(f"fake must be a torch.Tensor or None, got {type(fake).__name__}")
    if eps is not None:
        if kind != "wgan-gp":
            raise ValueError(f"eps only applies to kind='wgan-gp', not {kind!r}")
        if not isinstance(eps, torch.Tensor):
            raise TypeError(f"eps must be a torch.Tensor or None, got {type(eps).__name__}")
        if not eps.is_floating_point():
            raise TypeError(f"eps must be floating point, got dtype {eps.dtype}")
        if eps.numel() != real.shape[0]:
            raise ValueError(f"eps must hold one value per sample ({real.shape[0]}), got shape {tuple(eps.shape)}")
        if eps.device != real.device:
            raise ValueError(f"eps must be on real's device {real.device}, got {eps.device}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if kind == "wgan-gp" and eps is None:
        eps = draw_eps(real, generator)

    n = real.shape[0]
    if _backend.backend_for(real, fake if kind != "r1" else None) == "eager":
        penalty, logits = _gradient_penalty_ref(D, real, fake, kind, gamma, center, eps, d_kwargs)
    else:
        if kind == "wgan-gp":
            x = INTERPOLATE(real.detach(), fake.detach(), eps.detach())
        else:
            x = (real if kind == "r1" else fake).detach()
        x = x.requires_grad_(True)
        with torch.enable_grad():
            with no_weight_gradients():
                logits = D(x, **d_kwargs)
                _check_logits(logits, n)
                (grad,) = torch.autograd.grad(logits, x, torch.ones_like(logits), create_graph=True)  # one launch
            penalty = GRAD_PENALTY(grad, kind, _weight(kind, gamma, n), center)[0]
    return (penalty, logits) if return_logits else penalty


# ----------------------------------------------------------------------------- lazy regularisation

def _check_interval(interval) -> int:
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"interval must be an int >= 1, got {interval!r}")
    return interval


def lazy_regularization(gamma: float, interval: int) -> float:
    """The gamma to pass on the steps where a penalty runs only every ``interval`` steps.

    StyleGAN2's lazy regularisation evaluates R1 (or the path-length term) once every
    ``interval`` minibatches and multiplies it by ``interval`` so that its average
    strength per step is unchanged: returns ``gamma * interval``. ``interval=1`` returns
    gamma unchanged. Pair with :func:`lazy_adam_hparams` for the optimiser.
    """
    gamma = _check_number(gamma, "gamma", minimum=0.0)
    return gamma * _check_interval(interval)


def lazy_adam_hparams(lr: float, betas: tuple[float, float] = (0.0, 0.99), interval: int = 16):
    """Adam's (lr, betas) for an optimiser that also takes the lazy regularisation steps.

    With a penalty step every ``interval`` steps the optimiser performs interval + 1 updates
    per interval minibatches; StyleGAN2 compensates with ``ratio = interval / (interval + 1)``:
    ``lr * ratio`` and ``(beta1 ** ratio, beta2 ** ratio)`` (the betas are raised to the
    power, which keeps their decay per minibatch). Returns ``(lr, betas)``.
    """
    lr = _check_number(lr, "lr", minimum=0.0)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair of numbers, got {betas!r}")
    b1 = _check_number(betas[0], "betas[0]", minimum=0.0)
    b2 = _check_number(betas[1], "betas[1]", minimum=0.0)
    if b1 >= 1 or b2 >= 1:
        raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
    ratio = _check_interval(interval) / (interval + 1)
    return lr * ratio, (b1 ** ratio, b2 ** ratio)
