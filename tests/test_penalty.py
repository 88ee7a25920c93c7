"""Gradient penalties (wgan-gp, r1, r2): value and D-parameter gradients against a plain
autograd reference written here, for discriminators of torch modules and of fastgan pieces;
the fused norm/penalty Function (gradcheck, zero norm, layouts, half precision); the
interpolation kernel; return_logits; lazy regularisation helpers; bad input; no host sync."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.backend import kernels
from fastgan.functional import (PENALTY_KINDS, bias_act, d_loss, gradient_penalty, lazy_adam_hparams,
                                lazy_regularization)
from fastgan.functional.penalty import GRAD_PENALTY, draw_eps

from .test_losses import _poison_allocations
from .utils import TOL, assert_close

N, C, RES = 3, 3, 8


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full float32 convolutions on CUDA, so that float32 results meet the float32 bound."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ----------------------------------------------------------------------------- discriminators

class TorchD(nn.Module):
    """Plain torch modules: conv + LeakyReLU, conv + LeakyReLU, linear."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(C, 4, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4, 5, 3, 2, 1),
                                 nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(5 * 2 * 2, 1))

    def forward(self, x):
        return self.net(x)


class _TwoConvParams(nn.Module):
    """The parameters of a small D: two 3x3 stride-2 convs (C -> 4 -> 5 channels) and a linear layer."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, C, 3, 3) / 3)
        self.b1 = nn.Parameter(torch.randn(4) * 0.1)
        self.w2 = nn.Parameter(torch.randn(5, 4, 3, 3) / 6)
        self.b2 = nn.Parameter(torch.randn(5) * 0.1)
        self.fc = nn.Linear(5 * 2 * 2, 1)


class BiasActD(_TwoConvParams):
    """F.conv2d without bias + fastgan bias_act (lrelu, then tanh: a 2nd-order term), linear."""

    def forward(self, x):
        h = bias_act(F.conv2d(x, self.w1, stride=2, padding=1), self.b1, act="lrelu")
        h = bias_act(F.conv2d(h, self.w2, stride=2, padding=1), self.b2, act="tanh")
        return self.fc(h.flatten(1))


def _conv2dact_d():
    Conv2dAct = getattr(fastgan.nn, "Conv2dAct", None)
    if Conv2dAct is None:
        pytest.skip("fastgan.nn.Conv2dAct is not available yet")
    return nn.Sequential(Conv2dAct(C, 4, 3, stride=2, padding=1, act="lrelu"),
                         Conv2dAct(4, 5, 3, stride=2, padding=1, act="lrelu"),
                         nn.Flatten(), nn.Linear(5 * 2 * 2, 1))


class FunctionalConvD(_TwoConvParams):
    """fastgan.functional.conv2d_act (fused conv + bias + lrelu / tanh; it skips its weight
    gradients inside no_weight_gradients()), then a linear layer."""

    def __init__(self):
        if not hasattr(fastgan.functional, "conv2d_act"):
            pytest.skip("fastgan.functional.conv2d_act is not available yet")
        super().__init__()

    def forward(self, x):
        conv2d_act = fastgan.functional.conv2d_act
        h = conv2d_act(x, self.w1, self.b1, stride=2, padding=1, act="lrelu")
        h = conv2d_act(h, self.w2, self.b2, stride=2, padding=1, act="tanh")
        return self.fc(h.flatten(1))


D_FACTORIES = {"torch": TorchD, "bias_act": BiasActD, "conv2dact": _conv2dact_d, "conv2d_act": FunctionalConvD}


# ----------------------------------------------------------------------------- reference

def reference_penalty(D, real, fake, kind, gamma, center, eps, x=None):
    """The usual penalty lines, all in plain autograd (D is run with the eager backend);
    ``x`` overrides the wgan-gp interpolate."""
    if x is not None:
        pass
    elif kind == "wgan-gp":
        e = eps.reshape(-1, *[1] * (real.dim() - 1)).to(real.dtype)
        x = e * real + (1 - e) * fake
    else:
        x = real if kind == "r1" else fake
    x = x.detach().requires_grad_(True)
    with fastgan.use_backend("eager"):
        logits = D(x)
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    norm = g.flatten(1).norm(2, dim=1)
    if kind == "wgan-gp":
        return gamma * ((norm - center) ** 2).mean(), logits
    return gamma / 2 * (norm ** 2).mean(), logits


def _param_grads(out, D):
    params = list(D.parameters())
    grads = torch.autograd.grad(out, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _images(device, dtype=torch.float32, n=N):
    real = torch.randn(n, C, RES, RES, device=device, dtype=dtype)
    fake = torch.randn(n, C, RES, RES, device=device, dtype=dtype) * 0.5 + 0.3
    return real, fake


# ----------------------------------------------------------------------------- penalty vs reference

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", PENALTY_KINDS)
@pytest.mark.parametrize("d_name", sorted(D_FACTORIES))
def test_penalty_and_param_grads_match_reference(d_name, kind, dtype, device):
    D = D_FACTORIES[d_name]().to(device=device, dtype=dtype)
    D64 = copy.deepcopy(D).double()
    real, fake = _images(device, dtype)
    gamma, center = 7.5, 0.8
    seed = 1234
    gen = torch.Generator(device=device).manual_seed(seed)
    penalty = gradient_penalty(D, real, fake, kind=kind, gamma=gamma, center=center, generator=gen)
    assert penalty.dim() == 0 and penalty.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    grads = _param_grads(penalty, D)

    # eps as gradient_penalty draws it (documented): torch.rand(N, float32/float64, generator)
    eps = torch.rand(N, device=device, generator=torch.Generator(device=device).manual_seed(seed),
                     dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    # the reference gets the float64 copy of what D sees: for wgan-gp the interpolate as it is
    # stored in `dtype` (computed in eps's dtype), for r1/r2 the inputs themselves
    e = eps.reshape(-1, 1, 1, 1)
    x = (e * real + (1 - e) * fake).to(dtype).double() if kind == "wgan-gp" else None
    ref, _ = reference_penalty(D64, real.double(), fake.double(), kind, gamma, center, None, x=x)
    ref_g = _param_grads(ref, D64)
    tol = TOL[dtype]
    assert_close(penalty.reshape(1), ref.reshape(1), dtype, f"{d_name} {kind} penalty", tol)
    for (name, _), g, r in zip(D.named_parameters(), grads, ref_g):
        assert g.dtype == dtype
        if r.norm() == 0:
            assert g.abs().max() == 0, f"{name}: gradient should be exactly zero"
        else:
            assert_close(g, r, dtype, f"{d_name} {kind} d{name}", tol)


class PatchD(nn.Module):
    """A PatchGAN critic: fused conv + lrelu, then a conv to a [N, 1, H, W] map of logits."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(fastgan.nn.Conv2dAct(C, 4, 3, 2, 1, act="lrelu", alpha=0.2, gain=1.0),
                                 nn.Conv2d(4, 1, 3, 1, 1))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_patchgan_critic_penalty_is_the_per_sample_gradient_of_its_logit_map(kind, device):
    """[N, 1, H, W] logits (pix2pix, CycleGAN, StarGAN critics): the penalty takes each sample's
    gradient of the sum of its logit map over the whole input, as the hand-written lines do."""
    D = PatchD().to(device)
    real, fake = _images(device)
    eps = torch.rand(N, device=device)
    penalty, logits = gradient_penalty(D, real, fake, kind=kind, gamma=3.0, eps=eps if kind == "wgan-gp" else None,
                                       return_logits=True)
    assert logits.shape == (N, 1, RES // 2, RES // 2)
    D64 = copy.deepcopy(D).double()
    ref, _ = reference_penalty(D64, real.double(), fake.double(), kind, 3.0, 1.0, eps.double())
    assert_close(penalty.reshape(1), ref.reshape(1), torch.float32, "penalty")
    for g, r in zip(_param_grads(penalty, D), _param_grads(ref, D64)):
        assert_close(g, r, torch.float32, "penalty grad")


@pytest.mark.parametrize("backend", ["auto", "interpret"])
def test_autocast_fake_is_promoted_like_hand_written_code(backend, device):
    """Under bf16 autocast G(z) is bf16 while real is float32: gradient_penalty and d_loss promote
    as torch does (issue 18: 'fake must have real's dtype' raised)."""
    D = TorchD().to(device)
    real, fake = _images(device)
    eps = torch.rand(N, device=device)
    with fastgan.use_backend(backend):
        with torch.autocast(device, dtype=torch.bfloat16):
            p = gradient_penalty(D, real, fake.to(torch.bfloat16), eps=eps)
            loss = d_loss(D(real), D(fake.to(torch.bfloat16)).float(), kind="wgan")
        ref = gradient_penalty(D, real, fake.to(torch.bfloat16).float(), eps=eps)
    assert p.dtype == torch.float32 and torch.isfinite(loss)
    assert_close(p, ref, torch.bfloat16, "autocast penalty")


class _BiasActLrelu(nn.Module):
    """x @ w^T, then fastgan's bias_act (lrelu): the form StyleGAN's layers call."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(cout, cin)), nn.Parameter(torch.randn(cout))

    def forward(self, x):
        return bias_act(x @ self.weight.t(), self.bias, act="lrelu")


@pytest.mark.parametrize("layer", ["linear", "conv", "conv_transpose", "bias_act"])
def test_penalty_gives_a_zero_not_none_where_torch_does(layer, device):
    """relu/lrelu have act'' = 0, so a penalty's gradient with respect to the bias before them is
    zero: torch returns zeros, and so must fastgan (None makes an optimizer skip the bias on a
    penalty-only step, such as StyleGAN's lazy R1 step, where Adam's moments still move it)."""
    flat = layer in ("linear", "bias_act")

    def make():
        torch.manual_seed(0)
        if layer == "bias_act":
            return nn.Sequential(_BiasActLrelu(4, 5), nn.Linear(5, 1))
        first = {"linear": nn.Linear(4, 5), "conv": nn.Conv2d(3, 5, 3), "conv_transpose": nn.ConvTranspose2d(3, 5, 3)}
        width = {"linear": 5, "conv": 5 * 4 * 4, "conv_transpose": 5 * 8 * 8}[layer]
        return nn.Sequential(first[layer], nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(width, 1))

    x = torch.randn(3, 4, device=device) if flat else torch.randn(3, 3, 6, 6, device=device)
    grads = {}
    fused = "triton" if device == "cuda" else "interpret"
    for name, backend, model in (("torch", "eager", make()), ("fastgan", fused, fastgan.accelerate(make()))):
        with fastgan.use_backend(backend):
            model = model.to(device)
            xi = x.clone().requires_grad_()
            (g,) = torch.autograd.grad(model(xi).sum(), xi, create_graph=True)
            grads[name] = torch.autograd.grad(g.square().sum(), list(model.parameters()), allow_unused=True)
    assert layer == "bias_act" or fastgan.accelerate(make(), report=True)[1].replaced, "nothing was fused"
    for (pname, _), ref, out in zip(make().named_parameters(), grads["torch"], grads["fastgan"]):
        assert (out is None) == (ref is None), f"{pname}: torch gives {'None' if ref is None else 'a tensor'}"
        if ref is not None:
            assert_close(out, ref, torch.float32, pname, tol=TOL[torch.float32] if ref.norm() > 0 else 0.0)


@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_fused_matches_eager_backend(kind, device):
    """The library's own eager path (the reference implementation) agrees with the fused path."""
    D = BiasActD().to(device=device, dtype=torch.float64)
    real, fake = _images(device, torch.float64)
    eps = torch.rand(N, device=device, dtype=torch.float64)
    out = {}
    for backend in ("auto", "eager"):
        with fastgan.use_backend(backend):
            p, logits = gradient_penalty(D, real, fake, kind=kind, eps=eps if kind == "wgan-gp" else None,
                                         return_logits=True)
            out[backend] = (p, logits, _param_grads(p, D))
    assert_close(out["auto"][0].reshape(1), out["eager"][0].reshape(1), torch.float64, "penalty")
    assert_close(out["auto"][1], out["eager"][1], torch.float64, "logits")
    for g, r in zip(out["auto"][2], out["eager"][2]):
        assert_close(g, r, torch.float64, "param grad", tol=1e-9 if r.norm() > 0 else 0.0)


def test_batch_one_and_channels_last(device):
    D = TorchD().to(device=device, dtype=torch.float64)
    real = torch.randn(1, C, RES, RES, device=device, dtype=torch.float64)
    p = gradient_penalty(D, real, kind="r1", gamma=2.0)
    ref, _ = reference_penalty(D, real, None, "r1", 2.0, 1.0, None)
    assert_close(p.reshape(1), ref.reshape(1), torch.float64, "batch 1")
    real, fake = _images(device, torch.float64)
    real_cl = real.to(memory_format=torch.channels_last)
    eps = torch.rand(N, device=device, dtype=torch.float64)
    p = gradient_penalty(D, real_cl, fake, kind="wgan-gp", eps=eps)
    ref, _ = reference_penalty(D, real, fake, "wgan-gp", 10.0, 1.0, eps)
    assert_close(p.reshape(1), ref.reshape(1), torch.float64, "channels_last")


@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_return_logits(kind, device):
    D = TorchD().to(device=device, dtype=torch.float64)
    real, fake = _images(device, torch.float64)
    eps = torch.rand(N, device=device, dtype=torch.float64)
    p, logits = gradient_penalty(D, real, fake, kind=kind, eps=eps if kind == "wgan-gp" else None,
                                 return_logits=True)
    e = eps.reshape(-1, 1, 1, 1)
    x = {"r1": real, "r2": fake, "wgan-gp": e * real + (1 - e) * fake}[kind]
    with torch.no_grad():
        expected = D(x)
    assert_close(logits, expected, torch.float64, "logits")
    assert logits.requires_grad


def test_r1_step_runs_d_once(device):
    """An R1 step from the returned logits: d_loss(logits, fake_logits) + penalty gives the
    same D gradients as computing the real logits separately."""
    D = BiasActD().to(device=device, dtype=torch.float64)
    real, fake = _images(device, torch.float64)
    p, real_logits = gradient_penalty(D, real, kind="r1", gamma=5.0, return_logits=True)
    loss = d_loss(real_logits, D(fake), "ns") + p
    grads = _param_grads(loss, D)
    with fastgan.use_backend("eager"):
        ref_p, _ = reference_penalty(D, real, None, "r1", 5.0, 1.0, None)
        ref_loss = d_loss(D(real), D(fake), "ns") + ref_p
        ref_grads = _param_grads(ref_loss, D)
    assert_close(loss.reshape(1), ref_loss.reshape(1), torch.float64, "loss")
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, torch.float64, "param grad")


def test_eps_from_generator_is_reproducible(device):
    D = TorchD().to(device)
    real, fake = _images(device)
    gen = lambda: torch.Generator(device=device).manual_seed(99)  # noqa: E731
    a = gradient_penalty(D, real, fake, generator=gen())
    b = gradient_penalty(D, real, fake, eps=draw_eps(real, gen()))
    # not torch.equal: on CUDA, cuDNN's input-gradient convolution may accumulate with atomics
    # (run-to-run rounding differences); another eps would change the penalty by far more
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0.0)
    assert torch.equal(draw_eps(real, gen()), torch.rand(N, device=device, generator=gen()))


# ----------------------------------------------------------------------------- the fused Function

@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_grad_penalty_function_gradcheck(kind, device):
    g = torch.randn(4, 2, 3, 5, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: GRAD_PENALTY(t, kind, 0.7, 1.3)[0], (g,))


def test_grad_penalty_function_values(device):
    """P = sum_n w * term_n against the formula, odd sizes, several programs' worth of M."""
    g = torch.randn(5, 3, 37, 41, device=device, dtype=torch.float64)
    norm = g.flatten(1).norm(dim=1)
    for kind, expected in (("wgan-gp", 0.3 * ((norm - 1.1) ** 2).sum()), ("r1", 0.3 * (norm ** 2).sum())):
        assert_close(GRAD_PENALTY(g, kind, 0.3, 1.1)[0].reshape(1), expected.reshape(1), torch.float64, kind)


def test_zero_gradient_no_nan(device):
    """||g|| = 0: wgan-gp gives gamma * center^2 and a zero (not NaN) derivative."""
    g = torch.zeros(3, 2, 4, device=device, dtype=torch.float32, requires_grad=True)
    g2 = torch.cat([torch.zeros(1, 2, 4, device=device), torch.randn(2, 2, 4, device=device)]).requires_grad_()
    for kind in PENALTY_KINDS:
        p = GRAD_PENALTY(g, kind, 1.0 / 3, 1.0)[0]
        (d,) = torch.autograd.grad(p, g)
        assert torch.isfinite(p).all() and torch.equal(d, torch.zeros_like(d))
        p2 = GRAD_PENALTY(g2, kind, 0.5, 1.0)[0]
        (d2,) = torch.autograd.grad(p2, g2)
        assert torch.isfinite(d2).all() and torch.equal(d2[0], torch.zeros_like(d2[0]))
    p = GRAD_PENALTY(g, "wgan-gp", 1.0 / 3, 1.0)[0]
    assert abs(p.item() - 1.0) < 1e-6


def test_every_element_written(device, monkeypatch):
    """Kernel outputs allocated NaN-poisoned: penalty, coef, the backward and the interpolate."""
    D = BiasActD().to(device=device, dtype=torch.float64)
    real, fake = _images(device, torch.float64, n=5)
    eps = torch.rand(5, device=device, dtype=torch.float64)
    ref, _ = reference_penalty(D, real, fake, "wgan-gp", 10.0, 1.0, eps)
    ref_g = _param_grads(ref, D)
    _poison_allocations(monkeypatch)
    p = gradient_penalty(D, real, fake, eps=eps)
    assert_close(p.reshape(1), ref.reshape(1), torch.float64, "penalty")
    for g, r in zip(_param_grads(p, D), ref_g):
        assert_close(g, r, torch.float64, "param grad", tol=1e-9 if r.norm() > 0 else 0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_grad_penalty_half_and_layouts(dtype, device):
    g = torch.randn(3, 4, 6, 5, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    g.requires_grad_(True)
    g64 = g.detach().double().requires_grad_(True)
    tol = 2e-2 if dtype != torch.float32 else TOL[dtype]
    for kind in PENALTY_KINDS:
        p = GRAD_PENALTY(g, kind, 0.25, 1.0)[0]
        assert p.dtype == torch.float32
        n64 = g64.flatten(1).norm(dim=1)
        ref = 0.25 * (((n64 - 1.0) ** 2).sum() if kind == "wgan-gp" else (n64 ** 2).sum())
        assert_close(p.reshape(1), ref.reshape(1), dtype, kind, tol)
        (d,) = torch.autograd.grad(p, g)
        (d64,) = torch.autograd.grad(ref, g64)
        assert d.dtype == dtype and d.stride() == g.stride()
        assert_close(d, d64, dtype, f"{kind} backward", tol)
    # a non-batch-major input (a transposed view) is copied, not misread
    gt = torch.randn(6, 3, device=device, dtype=torch.float64).t().requires_grad_(True)
    p = GRAD_PENALTY(gt, "r1", 1.0, 1.0)[0]
    assert_close(p.reshape(1), (gt.detach() ** 2).sum().reshape(1), torch.float64, "transposed")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_interpolate_kernel(dtype, device):
    real = torch.randn(3, 5, 7, 9, device=device, dtype=dtype)
    fake = torch.randn(3, 5, 7, 9, device=device, dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    eps = torch.rand(3, device=device, dtype=acc)
    e = eps.reshape(-1, 1, 1, 1)
    expected = (e * real.to(acc) + (1 - e) * fake.to(acc)).to(dtype)
    for r, f in ((real, fake), (real.to(memory_format=torch.channels_last), fake),
                 (real.to(memory_format=torch.channels_last), fake.to(memory_format=torch.channels_last))):
        out = kernels().interpolate(r, f, eps)
        assert out.dtype == dtype
        tol = 1e-15 if dtype == torch.float64 else (1e-6 if dtype == torch.float32 else 1e-2)
        assert_close(out, expected, dtype, "interpolate", tol)


# ----------------------------------------------------------------------------- lazy regularisation

def test_lazy_regularization():
    assert lazy_regularization(10.0, 16) == 160.0
    assert lazy_regularization(0.5, 1) == 0.5
    lr, (b1, b2) = lazy_adam_hparams(0.002, (0.0, 0.99), 16)
    ratio = 16 / 17
    assert math.isclose(lr, 0.002 * ratio) and b1 == 0.0 and math.isclose(b2, 0.99 ** ratio)
    for bad in (0, -1, 1.5, True, "4"):
        with pytest.raises(ValueError, match="interval"):
            lazy_regularization(1.0, bad)
    with pytest.raises(ValueError, match="gamma"):
        lazy_regularization(-1.0, 4)
    with pytest.raises(ValueError, match="betas"):
        lazy_adam_hparams(0.1, (0.9, 1.0), 4)


# ----------------------------------------------------------------------------- bad input

def test_bad_input(device):
    D = TorchD().to(device)
    real, fake = _images(device)
    with pytest.raises(ValueError, match="kind"):
        gradient_penalty(D, real, fake, kind="gp")
    for kind in ("wgan-gp", "r2"):
        with pytest.raises(ValueError, match="fake"):
            gradient_penalty(D, real, None, kind=kind)
    with pytest.raises(ValueError, match="fake"):
        gradient_penalty(D, real, fake[:2])
    with pytest.raises(ValueError, match="fake"):
        gradient_penalty(D, real, fake[:, :, :4], kind="r2")
    with pytest.raises(TypeError, match="real"):
        gradient_penalty(D, real.to(torch.int32), kind="r1")
    with pytest.raises(TypeError, match="fake"):
        gradient_penalty(D, real, fake.to(torch.uint8))
    with pytest.raises(TypeError, match="real"):
        gradient_penalty(D, real.tolist(), kind="r1")
    with pytest.raises(TypeError, match="fake"):
        gradient_penalty(D, real, "fake", kind="r1")
    with pytest.raises(TypeError, match="D"):
        gradient_penalty("D", real, fake)
    with pytest.raises(ValueError, match="D must return logits with one row per sample"):
        gradient_penalty(lambda x: x[:1].flatten(1)[:, :2], real, kind="r1")
    with pytest.raises(ValueError, match="D must return logits with one row per sample"):
        gradient_penalty(lambda x: x.sum(), real, kind="r1")
    with pytest.raises(TypeError, match="D must return"):
        gradient_penalty(lambda x: (x.sum(),), real, kind="r1")
    for gamma in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            gradient_penalty(D, real, fake, gamma=gamma)
    with pytest.raises(TypeError, match="gamma"):
        gradient_penalty(D, real, fake, gamma=torch.tensor(10.0))
    with pytest.raises(ValueError, match="center"):
        gradient_penalty(D, real, fake, center=float("nan"))
    with pytest.raises(ValueError, match="eps"):
        gradient_penalty(D, real, fake, eps=torch.rand(N + 1, device=device))
    with pytest.raises(ValueError, match="eps"):
        gradient_penalty(D, real, fake, kind="r1", eps=torch.rand(N, device=device))
    with pytest.raises(TypeError, match="generator"):
        gradient_penalty(D, real, fake, generator=7)
    with pytest.raises(ValueError, match="real"):
        gradient_penalty(D, real[:0], fake[:0])


# ----------------------------------------------------------------------------- no host sync

@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_no_host_sync_by_construction(kind, device, monkeypatch):
    """No Tensor -> Python conversion anywhere in gradient_penalty (fused path) or its
    backward: .item()/bool()/float()/int()/tolist() raise. (D here syncs nothing either.)"""
    D = BiasActD().to(device)
    real, fake = _images(device)
    gradient_penalty(D, real, fake, kind=kind)  # warm up

    def boom(*args, **kwargs):
        raise AssertionError("host synchronisation: a tensor value was read on the host")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    p = gradient_penalty(D, real, fake, kind=kind, gamma=lazy_regularization(10.0, 4))
    _param_grads(p, D)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", PENALTY_KINDS)
def test_no_host_sync_cuda(kind):
    D = BiasActD().cuda()
    real, fake = _images("cuda")
    gradient_penalty(D, real, fake, kind=kind)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        p = gradient_penalty(D, real, fake, kind=kind)
        _param_grads(p, D)
    finally:
        torch.cuda.set_sync_debug_mode(0)
