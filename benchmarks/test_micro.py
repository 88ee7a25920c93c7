"""Micro benchmarks with pytest-benchmark's own statistics and JSON:

    pytest benchmarks/ --benchmark-only                         # CPU or CUDA
    pytest benchmarks/ --benchmark-only --benchmark-json out.json
    pytest benchmarks/ --benchmark-only --benchmark-compare     # against a saved run (--benchmark-autosave)

Two providers per op, grouped by op: ``torch`` (the lines a user writes with plain torch) and
``fastgan`` (fastgan.functional; on CUDA its Triton kernels, on the CPU its eager reference
path under ``fastgan.use_backend("eager")``, so a CPU run measures the API and dispatch
overhead, not the kernels). Sizes are small so the whole file runs in well under a minute on
a CPU; the suite proper (``fastgan bench``) measures the real sizes, rooflines and energy.

The main test run does not collect this folder (``testpaths = ["tests"]`` in pyproject.toml).
"""
from __future__ import annotations

import contextlib
import time

import pytest
import torch
import torch.nn.functional as F

import fastgan
import fastgan.backend
from fastgan.functional import bias_act, conv2d_act, d_loss, gradient_penalty

pytest.importorskip("pytest_benchmark")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROVIDERS = ("torch", "fastgan")


def _backend():
    """fastgan's path here: the Triton kernels on CUDA, the eager reference on the CPU."""
    return contextlib.nullcontext() if DEVICE.type == "cuda" else fastgan.use_backend("eager")


def _run(benchmark, op: str, provider: str, fn, budget_s: float = 0.4):
    """Time ``fn`` with pytest-benchmark (its statistics and JSON); the number of rounds is
    fixed from a short estimate so each benchmark takes about ``budget_s`` (calibration on a
    busy CPU can otherwise pick hundreds of rounds of a slow call)."""
    benchmark.group = op
    if provider == "torch":
        backend = "torch"
    elif DEVICE.type == "cuda":
        backend = fastgan.backend.backend_for_device(DEVICE)
    else:
        backend = "eager (reference path; the Triton kernels need CUDA)"
    benchmark.extra_info.update(device=str(DEVICE), provider=provider, backend=backend, torch=torch.__version__)

    def call():
        with _backend() if provider == "fastgan" else contextlib.nullcontext():
            out = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    call()  # warm-up: kernel compilation, allocations
    t0 = time.perf_counter()
    for _ in range(3):
        call()
    per_call = max((time.perf_counter() - t0) / 3, 1e-6)
    rounds = int(min(200, max(5, budget_s / per_call)))
    return benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bias_act_lrelu_fwd(benchmark, provider):
    x = torch.randn(8, 64, 32, 32, device=DEVICE)
    b = torch.randn(64, device=DEVICE)
    if provider == "torch":
        fn = lambda: F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * 2 ** 0.5  # noqa: E731
    else:
        fn = lambda: bias_act(x, b, act="lrelu")  # noqa: E731
    out = _run(benchmark, "bias_act.lrelu.fwd", provider, fn)
    assert out.shape == x.shape


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bias_act_lrelu_fwdbwd(benchmark, provider):
    x = torch.randn(8, 64, 32, 32, device=DEVICE, requires_grad=True)
    b = torch.randn(64, device=DEVICE, requires_grad=True)
    dy = torch.randn(8, 64, 32, 32, device=DEVICE)
    if provider == "torch":
        f = lambda: F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * 2 ** 0.5  # noqa: E731
    else:
        f = lambda: bias_act(x, b, act="lrelu")  # noqa: E731
    dx, db = _run(benchmark, "bias_act.lrelu.fwdbwd", provider, lambda: torch.autograd.grad(f(), (x, b), dy))
    assert dx.shape == x.shape and db.shape == b.shape


@pytest.mark.parametrize("provider", PROVIDERS)
def test_d_loss_ns_fwdbwd(benchmark, provider):
    real = torch.randn(4096, device=DEVICE, requires_grad=True)
    fake = torch.randn(4096, device=DEVICE, requires_grad=True)
    if provider == "torch":
        f = lambda: F.softplus(-real).mean() + F.softplus(fake).mean()  # noqa: E731
    else:
        f = lambda: d_loss(real, fake, "ns")  # noqa: E731
    gr, gf = _run(benchmark, "d_loss.ns.fwdbwd", provider, lambda: torch.autograd.grad(f(), (real, fake)))
    assert gr.shape == real.shape


@pytest.mark.parametrize("provider", PROVIDERS)
def test_conv2d_act_lrelu_fwd(benchmark, provider):
    x = torch.randn(4, 32, 16, 16, device=DEVICE)
    w = torch.randn(32, 32, 3, 3, device=DEVICE) * 0.05
    b = torch.randn(32, device=DEVICE)
    if provider == "torch":
        fn = lambda: F.leaky_relu(F.conv2d(x, w, b, 1, 1), 0.2)  # noqa: E731
    else:
        fn = lambda: conv2d_act(x, w, b, 1, 1, act="lrelu", alpha=0.2, gain=1.0)  # noqa: E731
    with torch.no_grad():
        out = _run(benchmark, "conv2d_act.3x3.lrelu.fwd", provider, fn)
    assert out.shape == x.shape


@pytest.mark.parametrize("provider", PROVIDERS)
def test_r1_penalty_double_backward(benchmark, provider):
    """R1 on a small conv D: forward, input gradient with create_graph, backward to the weights."""
    D = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 4, 2, 1), torch.nn.LeakyReLU(0.2),
                            torch.nn.Conv2d(16, 32, 4, 2, 1), torch.nn.LeakyReLU(0.2),
                            torch.nn.Conv2d(32, 1, 4, 1, 0), torch.nn.Flatten()).to(DEVICE)
    real = torch.randn(8, 3, 16, 16, device=DEVICE)

    def by_hand():
        x = real.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        penalty = 0.5 * g.flatten(1).square().sum(1).mean()
        penalty.backward()
        return penalty

    def fused():
        penalty = gradient_penalty(D, real, kind="r1", gamma=1.0)
        penalty.backward()
        return penalty

    out = _run(benchmark, "r1_penalty.fwd_double_bwd", provider, by_hand if provider == "torch" else fused)
    assert torch.isfinite(out)
