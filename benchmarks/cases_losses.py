"""Benchmark cases for the fused GAN losses and gradient penalties (issue #4).

``loss_cases(quick)`` returns plain dicts whose keys are the fields of the harness's
``Case`` (case, family, shape, dtype, bytes, flops, make, images), so ``Case(**d)`` builds
one; the file imports nothing from the harness and nothing from fastgan at import time.

Providers per case (``make(device, dtype) -> {provider: zero-arg callable or error text}``):

- ``eager``: the lines a user writes by hand (``F.softplus(-real).mean() + ...``; the usual
  WGAN-GP lines with ``torch.autograd.grad(create_graph=True)`` and ``.norm(2, dim=1)``).
- ``compile``: ``torch.compile`` of that same eager function. The penalty cases need a
  double backward, which compiled graphs may not support: the error is left to the
  harness, which records it as the provider's ``error``.
- ``fastgan``: ``fastgan.functional.d_loss/g_loss/gradient_penalty`` (the fused kernels;
  on a machine without CUDA the provider is reported as unavailable, not timed in eager).

Cases:
- ``d_loss.<kind>.fwdbwd.N<n>`` / ``g_loss.<kind>.fwdbwd.N<n>`` (ops): loss + gradient w.r.t.
  the logits, at a training batch (64: launch-latency bound) and at 2^20 logits
  (bandwidth bound). bytes = read the logits + write their gradients.
- ``grad_penalty.<kind>.fwdbwd`` (ops): the norm/penalty reduction and its backward on a given
  input gradient [B, 3, R, R]. bytes = read g twice (forward, backward) + write dg.
- ``step.dcgan32.wgan_gp.d_iter`` (steps): one WGAN-GP discriminator step on a small
  DCGAN-like D made of torch modules (conv 4x4 stride 2 + LeakyReLU(0.2), no norm layers):
  D on real and fake, the wgan loss, the penalty on interpolates, backward, Adam step.
  flops: an estimate of 11 forward passes of D worth of convolution FLOPs (3 forwards,
  their weight and input gradients, and the double backward of the penalty); bytes: a lower
  bound (the three image batches read once, the parameters and Adam state read and written).
"""
from __future__ import annotations

import copy

import torch

LOSS_KINDS_QUICK = ("ns", "hinge")
LOSS_KINDS_FULL = ("ns", "minimax", "hinge", "wgan", "lsgan")


def _fastgan_unavailable(x: torch.Tensor) -> str | None:
    import fastgan

    backend = fastgan.backend_for(x)
    if backend != "triton":
        return f"fastgan's Triton path needs CUDA (backend here: {backend})"
    return None


# ----------------------------------------------------------------------------- hand-written losses

def _eager_d_loss(kind: str):
    import torch.nn.functional as F

    def fn(real, fake):
        if kind in ("ns", "minimax"):
            return F.softplus(-real).mean() + F.softplus(fake).mean()
        if kind == "hinge":
            return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        if kind == "wgan":
            return fake.mean() - real.mean()
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake ** 2).mean()

    return fn


def _eager_g_loss(kind: str):
    import torch.nn.functional as F

    def fn(fake):
        if kind == "ns":
            return F.softplus(-fake).mean()
        if kind == "minimax":
            return -F.softplus(fake).mean()
        if kind in ("hinge", "wgan"):
            return -fake.mean()
        return 0.5 * ((fake - 1) ** 2).mean()

    return fn


def _make_loss(which: str, kind: str, n: int):
    def make(device, dtype):
        from fastgan.functional import d_loss, g_loss

        real = torch.randn(n, 1, device=device, dtype=dtype, requires_grad=True)
        fake = torch.randn(n, 1, device=device, dtype=dtype, requires_grad=True)
        if which == "d":
            eager = _eager_d_loss(kind)
            fused = lambda r, f: d_loss(r, f, kind)  # noqa: E731
            inputs = (real, fake)
        else:
            eager = _eager_g_loss(kind)
            fused = lambda f: g_loss(f, kind)  # noqa: E731
            inputs = (fake,)
        compiled = torch.compile(eager)

        def bind(fn):
            return lambda: torch.autograd.grad(fn(*inputs), inputs)

        fns = {"eager": bind(eager), "compile": bind(compiled)}
        why = _fastgan_unavailable(real)
        fns["fastgan"] = why if why else bind(fused)
        return fns

    return make


# ----------------------------------------------------------------------------- penalty on a given gradient

def _make_grad_penalty(kind: str, shape: list):
    def make(device, dtype):
        from fastgan.functional.penalty import _GradPenalty

        g = torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)
        n = shape[0]
        gamma = 10.0

        def eager(g):
            norm = g.flatten(1).norm(2, dim=1)
            if kind == "wgan-gp":
                return gamma * ((norm - 1) ** 2).mean()
            return gamma / 2 * (norm ** 2).mean()

        weight = gamma / n if kind == "wgan-gp" else gamma / (2 * n)
        fused = lambda g: _GradPenalty.apply(g, kind, weight, 1.0)  # noqa: E731
        compiled = torch.compile(eager)

        def bind(fn):
            return lambda: torch.autograd.grad(fn(g), g)

        fns = {"eager": bind(eager), "compile": bind(compiled)}
        why = _fastgan_unavailable(g)
        fns["fastgan"] = why if why else bind(fused)
        return fns

    return make


# ----------------------------------------------------------------------------- WGAN-GP D step

DCGAN32_D = [(3, 64, 32), (64, 128, 16), (128, 256, 8)]  # (in, out, input resolution), 4x4 s2 p1


def _dcgan32_d(device, dtype):
    from torch import nn

    layers = []
    for cin, cout, _ in DCGAN32_D:
        layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
    layers += [nn.Conv2d(256, 1, 4, 1, 0), nn.Flatten()]
    return nn.Sequential(*layers).to(device=device, dtype=dtype)


def _dcgan32_d_flops(batch: int) -> int:
    """Convolution FLOPs of one forward pass of the DCGAN-32 D (2 * MACs)."""
    flops = 0
    for cin, cout, res in DCGAN32_D:
        flops += 2 * cin * cout * 16 * (res // 2) ** 2
    flops += 2 * 256 * 16  # final 4x4 -> 1x1
    return flops * batch


def _dcgan32_d_params() -> int:
    return sum(cin * cout * 16 + cout for cin, cout, _ in DCGAN32_D) + 256 * 16 + 1


def _make_d_step(batch: int):
    def make(device, dtype):
        from fastgan.functional import d_loss, gradient_penalty

        base = _dcgan32_d(device, dtype)
        real = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype)
        fake = torch.randn(batch, 3, 32, 32, device=device, dtype=dtype)  # G's output, detached
        gamma = 10.0

        def fresh():
            D = copy.deepcopy(base)
            opt = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9))
            return D, opt

        def eager_step_fn(D, opt):
            def step():
                opt.zero_grad(set_to_none=True)
                loss = D(fake).mean() - D(real).mean()
                eps = torch.rand(batch, 1, 1, 1, device=real.device, dtype=real.dtype)
                x = (eps * real + (1 - eps) * fake).requires_grad_(True)
                (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
                gp = gamma * ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
                (loss + gp).backward()
                opt.step()
            return step

        def fused_step_fn(D, opt):
            def step():
                opt.zero_grad(set_to_none=True)
                loss = d_loss(D(real), D(fake), "wgan")
                gp = gradient_penalty(D, real, fake, kind="wgan-gp", gamma=gamma)
                (loss + gp).backward()
                opt.step()
            return step

        fns = {"eager": eager_step_fn(*fresh())}
        D_c, opt_c = fresh()
        fns["compile"] = torch.compile(eager_step_fn(D_c, opt_c))  # double backward: may be unsupported
        why = _fastgan_unavailable(real)
        fns["fastgan"] = why if why else fused_step_fn(*fresh())
        return fns

    return make


# ----------------------------------------------------------------------------- the case list

def loss_cases(quick: bool = True) -> list[dict]:
    """The loss / penalty benchmark cases (dicts with the harness's Case fields)."""
    cases = []
    kinds = LOSS_KINDS_QUICK if quick else LOSS_KINDS_FULL
    sizes = (64, 1 << 20)
    esize = 4  # float32
    for n in sizes:
        for kind in kinds:
            cases.append(dict(case=f"d_loss.{kind}.fwdbwd.N{n}", family="ops", shape=[n, 1], dtype="float32",
                              bytes=4 * n * esize, flops=2 * 10 * n, make=_make_loss("d", kind, n), images=None))
            cases.append(dict(case=f"g_loss.{kind}.fwdbwd.N{n}", family="ops", shape=[n, 1], dtype="float32",
                              bytes=2 * n * esize, flops=10 * n, make=_make_loss("g", kind, n), images=None))
    shapes = [[64, 3, 64, 64]] if quick else [[64, 3, 64, 64], [32, 3, 256, 256]]
    for shape in shapes:
        numel = 1
        for s in shape:
            numel *= s
        for kind in ("wgan-gp", "r1"):
            cases.append(dict(case=f"grad_penalty.{kind}.fwdbwd.{'x'.join(map(str, shape))}", family="ops",
                              shape=shape, dtype="float32", bytes=3 * numel * esize, flops=4 * numel,
                              make=_make_grad_penalty(kind, shape), images=None))
    for batch in ((64,) if quick else (64, 256)):
        images_bytes = 3 * batch * 3 * 32 * 32 * esize
        param_bytes = _dcgan32_d_params() * esize
        cases.append(dict(case=f"step.dcgan32.wgan_gp.d_iter.B{batch}", family="steps", shape=[batch, 3, 32, 32],
                          dtype="float32", bytes=images_bytes + 6 * param_bytes,
                          flops=11 * _dcgan32_d_flops(batch), make=_make_d_step(batch), images=batch))
    return cases
