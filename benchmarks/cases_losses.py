"""Benchmark cases for the fused GAN losses and gradient penalties (issue #4).

``loss_cases(quick, device_type)`` returns the harness's ``Case`` objects; nothing from fastgan
is imported at import time.

Providers per case (``make(device, dtype) -> {provider: zero-arg callable or error text}``):

- ``eager``: the lines a user writes by hand (``F.softplus(-real).mean() + ...``; the usual
  WGAN-GP lines with ``torch.autograd.grad(create_graph=True)`` and ``.norm(2, dim=1)``).
- ``compile``: ``torch.compile`` of that same eager function (first order only: the penalty
  op here is the reduction on a given input gradient; the double backward of a whole
  penalised D step is timed by the step cases, ``cases_steps.py``).
- ``fastgan``: ``fastgan.functional.d_loss/g_loss/gradient_penalty`` (the fused kernels;
  on a machine without CUDA the provider is reported as unavailable, not timed in eager).

Cases:
- ``d_loss.<kind>.fwdbwd.N<n>`` / ``g_loss.<kind>.fwdbwd.N<n>`` (ops): loss + gradient w.r.t.
  the logits, at a training batch (64: launch-latency bound) and at 2^20 logits
  (bandwidth bound). bytes = read the logits + write their gradients.
- ``grad_penalty.<kind>.fwdbwd`` (ops): the norm/penalty reduction and its backward on a given
  input gradient [B, 3, R, R]. bytes = read g twice (forward, backward) + write dg.
"""
from __future__ import annotations

import torch

from .harness import Case

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

        from .harness import compile_fn

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
        compiled = compile_fn(eager)

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

        from .harness import compile_fn

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
        compiled = compile_fn(eager)

        def bind(fn):
            return lambda: torch.autograd.grad(fn(g), g)

        fns = {"eager": bind(eager), "compile": bind(compiled)}
        why = _fastgan_unavailable(g)
        fns["fastgan"] = why if why else bind(fused)
        return fns

    return make


# ----------------------------------------------------------------------------- the case list

def loss_cases(quick: bool = True, device_type: str = "cuda") -> list[Case]:
    """The loss / penalty benchmark cases.

    --quick on CUDA: d_loss.ns at both sizes, g_loss.ns at 2^20, the two penalties at 64x3x64x64;
    --full: every kind at both sizes, the penalties also at 32x3x256x256. CPU: small sizes
    (a smoke run: 64 and 4096 logits, penalties on 4x3x32x32)."""
    cases = []
    on_gpu = device_type == "cuda"
    kinds = LOSS_KINDS_QUICK if quick else LOSS_KINDS_FULL
    sizes = (64, 1 << 20) if on_gpu else (64, 4096)
    esize = 4  # float32
    # --quick on CUDA: d_loss.ns at both sizes, g_loss.ns at 2^20 (each case is one more
    # torch.compile); the other kinds run the same kernels with other terms
    for n in sizes:
        for kind in kinds:
            if quick and on_gpu and kind != "ns":
                continue
            cases.append(Case(case=f"d_loss.{kind}.fwdbwd.N{n}", family="ops", shape=[n, 1], dtype="float32",
                              bytes=4 * n * esize, flops=2 * 10 * n, make=_make_loss("d", kind, n)))
            if quick and on_gpu and (kind != "ns" or n != sizes[-1]):
                continue
            cases.append(Case(case=f"g_loss.{kind}.fwdbwd.N{n}", family="ops", shape=[n, 1], dtype="float32",
                              bytes=2 * n * esize, flops=10 * n, make=_make_loss("g", kind, n)))
    if not on_gpu:
        shapes = [[4, 3, 32, 32]]
    else:
        shapes = [[64, 3, 64, 64]] if quick else [[64, 3, 64, 64], [32, 3, 256, 256]]
    for shape in shapes:
        numel = 1
        for s in shape:
            numel *= s
        for kind in ("wgan-gp", "r1"):
            cases.append(Case(case=f"grad_penalty.{kind}.fwdbwd.{'x'.join(map(str, shape))}", family="ops",
                              shape=shape, dtype="float32", bytes=3 * numel * esize, flops=4 * numel,
                              make=_make_grad_penalty(kind, shape)))
    return cases
