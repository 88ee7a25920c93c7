"""GAN losses: the mean loss and its gradient w.r.t. the logits in ONE kernel pass.

A GAN loss is a sum of at most two batch means of a pointwise term:

    D loss  L = mean_i t_real(r_i) + mean_j t_fake(f_j)     (real and fake batches may differ)
    G loss  L = mean_j t_fake(f_j)

so the forward pass already knows dL/dr_i = t_real'(r_i) / N_real and dL/df_j = t_fake'(f_j) / N_fake.
The kernel writes those gradients (in the logits' dtype) next to the loss, and the backward
of the autograd Function is one scale ``grad * dL``.

Terms (``LOSS_TERMS``; z = one logit; every one is finite for |z| up to the dtype's max):

    softplus_neg   softplus(-z)       d = -sigmoid(-z)
    softplus       softplus(z)        d =  sigmoid(z)
    neg_softplus  -softplus(z)        d = -sigmoid(z)
    hinge_real     relu(1 - z)        d = -[z < 1]
    hinge_fake     relu(1 + z)        d =  [z > -1]
    neg           -z                  d = -1
    identity       z                  d =  1
    half_sq_m1     0.5 (z - 1)^2      d =  z - 1
    half_sq        0.5 z^2            d =  z

softplus is max(z, 0) + log1p(exp(-|z|)) and sigmoid takes exp of -|z| only, so logits of
magnitude 1e4 (or 1e38) neither overflow nor lose the gradient. At the hinge kinks the
derivative is 0 (as torch.relu's). At +-inf and NaN every term gives what the reference gives:
the hinge terms select as torch.relu's backward does (NaN passes the gradient, inf beyond the
kink gives 0), and the constant derivatives stay finite.

Reduction: ``P`` programs; program p accumulates (in float32, or float64 for float64 logits)
the blocks p, p + P, p + 2P, ... of both batches, already divided by the batch size, and
stores one partial sum. With P == 1 (any batch up to ``BLOCK * MAX_ITERS`` logits) the
partial buffer *is* the loss: one launch and no further op. Nothing is read on the host.
The means divide by the integer batch sizes inside the kernel: a float scalar argument
(1 / N) would be rounded to float32 on the GPU, too coarse for float64 logits.
"""
import torch
import triton
import triton.language as tl

from .activation import _sigmoid, _softplus
from .common import check_launch_dtype

__all__ = ["LOSS_TERMS", "gan_loss", "logit_stats"]

LOSS_TERMS = {
    "softplus_neg": 0,
    "softplus": 1,
    "neg_softplus": 2,
    "hinge_real": 3,
    "hinge_fake": 4,
    "neg": 5,
    "identity": 6,
    "half_sq_m1": 7,
    "half_sq": 8,
}

BLOCK = 1024
MAX_ITERS = 16  # blocks one program walks before the launcher adds programs


@triton.jit
def _loss_term(z, TERM: tl.constexpr):
    """(t(z), t'(z)) for the term with id TERM."""
    if TERM == 0:
        v = _softplus(-z)
        d = -_sigmoid(-z)
    elif TERM == 1:
        v = _softplus(z)
        d = _sigmoid(z)
    elif TERM == 2:
        v = -_softplus(z)
        d = -_sigmoid(z)
    elif TERM == 3:
        v = tl.where(z >= 1.0, 0.0, 1.0 - z)
        d = tl.where(z >= 1.0, 0.0, -1.0).to(z.dtype)
    elif TERM == 4:
        v = tl.where(z <= -1.0, 0.0, 1.0 + z)
        d = tl.where(z <= -1.0, 0.0, 1.0).to(z.dtype)
    elif TERM == 5:
        v = -z
        d = tl.zeros_like(z) - 1.0
    elif TERM == 6:
        v = z
        d = tl.zeros_like(z) + 1.0
    elif TERM == 7:
        v = 0.5 * (z - 1.0) * (z - 1.0)
        d = z - 1.0
    else:
        v = 0.5 * z * z
        d = z
    return v, d


@triton.jit
def _gan_loss_kernel(real_ptr, fake_ptr, dreal_ptr, dfake_ptr, partial_ptr,
                     N_REAL, N_FAKE, NUM_PROGRAMS, ITERS_REAL, ITERS_FAKE,
                     REAL_TERM: tl.constexpr, FAKE_TERM: tl.constexpr, HAS_REAL: tl.constexpr,
                     IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if IS_F64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_REAL:
        for i in range(0, ITERS_REAL):
            offs = (pid + i * NUM_PROGRAMS) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < N_REAL
            z = tl.load(real_ptr + offs, mask=mask, other=0.0).to(acc.dtype)
            v, d = _loss_term(z, REAL_TERM)
            acc += tl.where(mask, v / N_REAL, 0.0)
            tl.store(dreal_ptr + offs, (d / N_REAL).to(dreal_ptr.dtype.element_ty), mask=mask)
    for i in range(0, ITERS_FAKE):
        offs = (pid + i * NUM_PROGRAMS) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N_FAKE
        z = tl.load(fake_ptr + offs, mask=mask, other=0.0).to(acc.dtype)
        v, d = _loss_term(z, FAKE_TERM)
        acc += tl.where(mask, v / N_FAKE, 0.0)
        tl.store(dfake_ptr + offs, (d / N_FAKE).to(dfake_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1).contiguous()


def gan_loss(real: torch.Tensor | None, fake: torch.Tensor, real_term: str | None, fake_term: str):
    """``(loss, d_real, d_fake)`` of ``mean t_real(real) + mean t_fake(fake)`` in one launch.

    ``real`` (None for a generator loss) and ``fake`` hold one logit per sample, any shape;
    ``d_real``/``d_fake`` are flat, in the logits' dtype, with dL/dz already divided by the
    batch size. ``loss`` is a 0-d float32 tensor (float64 for float64 logits).
    """
    if fake_term not in LOSS_TERMS or (real is not None and real_term not in LOSS_TERMS):
        raise ValueError(f"unknown loss term {real_term!r}/{fake_term!r}; expected {sorted(LOSS_TERMS)}")
    check_launch_dtype(fake, real)
    fake = _flat(fake)
    real = _flat(real) if real is not None else None
    n_fake = fake.numel()
    n_real = real.numel() if real is not None else 0
    if n_fake == 0 or (real is not None and n_real == 0):
        raise ValueError("gan_loss needs at least one logit per batch")
    acc_dtype = torch.float64 if fake.dtype == torch.float64 else torch.float32
    blocks = triton.cdiv(max(n_real, n_fake), BLOCK)
    programs = triton.cdiv(blocks, MAX_ITERS)
    partial = torch.empty(programs, dtype=acc_dtype, device=fake.device)
    d_fake = torch.empty_like(fake)
    d_real = torch.empty_like(real) if real is not None else None
    _gan_loss_kernel[(programs,)](
        real if real is not None else fake, fake, d_real if real is not None else d_fake, d_fake, partial,
        n_real, n_fake, programs,
        triton.cdiv(triton.cdiv(n_real, BLOCK), programs), triton.cdiv(triton.cdiv(n_fake, BLOCK), programs),
        REAL_TERM=LOSS_TERMS[real_term] if real is not None else 0, FAKE_TERM=LOSS_TERMS[fake_term],
        HAS_REAL=real is not None, IS_F64=fake.dtype == torch.float64, BLOCK=BLOCK, num_warps=4)
    loss = partial.reshape(()) if programs == 1 else partial.sum()
    return loss, d_real, d_fake


@triton.jit
def _logit_stats_kernel(real_ptr, fake_ptr, out_ptr, N_REAL, N_FAKE, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    """One program: out = (mean r, mean f, (mean [r > 0] + mean [f < 0]) / 2)."""
    if IS_F64:
        zero = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        zero = tl.zeros([BLOCK], dtype=tl.float32)
    sum_r, pos_r, sum_f, neg_f = zero, zero, zero, zero
    for start in range(0, N_REAL, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < N_REAL
        z = tl.load(real_ptr + offs, mask=mask, other=0.0).to(zero.dtype)
        sum_r += z
        pos_r += tl.where(mask & (z > 0.0), 1.0, 0.0)
    for start in range(0, N_FAKE, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < N_FAKE
        z = tl.load(fake_ptr + offs, mask=mask, other=0.0).to(zero.dtype)
        sum_f += z
        neg_f += tl.where(mask & (z < 0.0), 1.0, 0.0)
    tl.store(out_ptr, tl.sum(sum_r, axis=0) / N_REAL)
    tl.store(out_ptr + 1, tl.sum(sum_f, axis=0) / N_FAKE)
    tl.store(out_ptr + 2, 0.5 * (tl.sum(pos_r, axis=0) / N_REAL + tl.sum(neg_f, axis=0) / N_FAKE))


def logit_stats(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """D's logit statistics in one launch: [mean real, mean fake, accuracy], accuracy the mean of
    the fraction of real logits > 0 and of fake logits < 0; float32 (float64 for float64)."""
    check_launch_dtype(fake, real)
    real, fake = _flat(real), _flat(fake)
    if real.numel() == 0 or fake.numel() == 0:
        raise ValueError("logit_stats needs at least one logit per batch")
    out = torch.empty(3, dtype=torch.float64 if fake.dtype == torch.float64 else torch.float32, device=fake.device)
    _logit_stats_kernel[(1,)](real, fake, out, real.numel(), fake.numel(), IS_F64=fake.dtype == torch.float64,
                              BLOCK=BLOCK, num_warps=4)
    return out
