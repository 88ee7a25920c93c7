"""GAN losses (d_loss, g_loss): the fused kernel against the formulas in float64 (value and
gradient), extreme logits, half precision, shapes, gradcheck, bad input, no host sync."""
import pytest
import torch

import fastgan
from fastgan.functional import LOSS_KINDS, d_loss, g_loss
from fastgan.functional.losses import GAN_LOSS, _d_loss_ref, _g_loss_ref

from .utils import TOL, assert_close, poison_


def _sp(z):
    """softplus(z) = log(1 + e^z), overflow-free in float64."""
    return torch.logaddexp(torch.zeros_like(z), z)


# The formulas of the issue, with their derivatives written out (not taken from the library).
# kind -> ((t_real, t_real'), (t_fake, t_fake')) for D, and (t, t') for G.
D_FORMULAS = {
    "ns": ((lambda r: _sp(-r), lambda r: -torch.sigmoid(-r)), (lambda f: _sp(f), torch.sigmoid)),
    "minimax": ((lambda r: _sp(-r), lambda r: -torch.sigmoid(-r)), (lambda f: _sp(f), torch.sigmoid)),
    "hinge": ((lambda r: (1 - r).clamp_min(0), lambda r: -(r < 1).double()),
              (lambda f: (1 + f).clamp_min(0), lambda f: (f > -1).double())),
    "wgan": ((lambda r: -r, lambda r: -torch.ones_like(r)), (lambda f: f, torch.ones_like)),
    "lsgan": ((lambda r: 0.5 * (r - 1) ** 2, lambda r: r - 1), (lambda f: 0.5 * f ** 2, lambda f: f)),
}
G_FORMULAS = {
    "ns": (lambda f: _sp(-f), lambda f: -torch.sigmoid(-f)),
    "minimax": (lambda f: -_sp(f), lambda f: -torch.sigmoid(f)),
    "hinge": (lambda f: -f, lambda f: -torch.ones_like(f)),
    "wgan": (lambda f: -f, lambda f: -torch.ones_like(f)),
    "lsgan": (lambda f: 0.5 * (f - 1) ** 2, lambda f: f - 1),
}


def _expected_d(real, fake, kind):
    (tr, dr), (tf, df) = D_FORMULAS[kind]
    r = real.detach().double().reshape(-1)
    f = fake.detach().double().reshape(-1)
    loss = tr(r).mean() + tf(f).mean()
    scale = tr(r).abs().mean() + tf(f).abs().mean()
    return (loss, scale), (dr(r) / r.numel()).reshape(real.shape), (df(f) / f.numel()).reshape(fake.shape)


def _expected_g(fake, kind):
    t, d = G_FORMULAS[kind]
    f = fake.detach().double().reshape(-1)
    return (t(f).mean(), t(f).abs().mean()), (d(f) / f.numel()).reshape(fake.shape)


def _logits(n, device, dtype, scale=3.0, shape="n"):
    x = torch.randn(n, device=device, dtype=torch.float64) * scale
    if shape == "n1":
        x = x[:, None]
    return x.to(dtype).requires_grad_()


def _check_loss_value(loss, expected, dtype, what, tol):
    """|loss - ref| <= tol * mean|terms|: a sum of float32 terms of mixed sign (+-1e4) can
    cancel to a small value, so the error is measured against the magnitude summed."""
    ref, scale = expected
    tol = TOL[dtype] if tol is None else tol
    err = (loss.detach().double().cpu() - ref.cpu()).abs().item()
    assert err <= tol * max(scale.item(), 1e-30), f"{what}: |error| {err:.3e} > {tol:.1e} * {scale.item():.3e}"


def _check_d(real, fake, kind, dtype, tol=None):
    loss = d_loss(real, fake, kind)
    assert loss.dim() == 0
    assert loss.dtype == (torch.float64 if real.dtype == torch.float64 else torch.float32)
    g_real, g_fake = torch.autograd.grad(loss * 1.5, (real, fake))
    assert g_real.dtype == real.dtype and g_real.shape == real.shape
    assert g_fake.dtype == fake.dtype and g_fake.shape == fake.shape
    e_loss, e_real, e_fake = _expected_d(real, fake, kind)
    _check_loss_value(loss, e_loss, dtype, f"d_loss {kind}", tol)
    assert_close(g_real, 1.5 * e_real, dtype, f"d_loss {kind} d real", tol)
    assert_close(g_fake, 1.5 * e_fake, dtype, f"d_loss {kind} d fake", tol)


def _check_g(fake, kind, dtype, tol=None):
    loss = g_loss(fake, kind)
    assert loss.dim() == 0
    assert loss.dtype == (torch.float64 if fake.dtype == torch.float64 else torch.float32)
    (g_fake,) = torch.autograd.grad(loss, fake)
    assert g_fake.dtype == fake.dtype and g_fake.shape == fake.shape
    e_loss, e_fake = _expected_g(fake, kind)
    _check_loss_value(loss, e_loss, dtype, f"g_loss {kind}", tol)
    assert_close(g_fake, e_fake, dtype, f"g_loss {kind} d fake", tol)


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", ["n", "n1"])
def test_losses_match_formulas(kind, dtype, shape, device):
    # odd batch sizes that differ between real and fake
    real = _logits(37, device, dtype, shape=shape)
    fake = _logits(11, device, dtype, shape=shape)
    _check_d(real, fake, kind, dtype)
    _check_g(fake, kind, dtype)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_batch_one(kind, device):
    real = _logits(1, device, torch.float64)
    fake = _logits(1, device, torch.float64, shape="n1")
    _check_d(real, fake, kind, torch.float64)
    _check_g(fake, kind, torch.float64)


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_extreme_logits(kind, dtype, device):
    """|logits| = 1e4 (mixed signs, plus moderate ones) stay finite and exact."""
    vals = torch.tensor([1e4, -1e4, 1e4, -1e4, 3.0, -2.5, 0.0], dtype=torch.float64)
    real = vals.clone().to(device=device, dtype=dtype).requires_grad_()
    fake = vals.flip(0)[:5].to(device=device, dtype=dtype).requires_grad_()  # a separate leaf
    tol = 2e-2 if dtype == torch.bfloat16 else TOL[dtype]
    _check_d(real, fake, kind, dtype, tol)
    _check_g(fake, kind, dtype, tol)
    # all logits huge and of one sign: the softplus gradients saturate to exactly 0 / +-1/N
    big = torch.full((4,), 1e4, device=device, dtype=dtype, requires_grad=True)
    _check_d(big, -big.detach().clone().requires_grad_(), kind, dtype, tol)


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_float32(kind, dtype, device):
    real = _logits(301, device, dtype)
    fake = _logits(173, device, dtype, shape="n1")
    _check_d(real, fake, kind, dtype, tol=2e-2)
    _check_g(fake, kind, dtype, tol=2e-2)


def test_many_blocks_and_programs(device):
    """Batches longer than one block (ITERS > 1) and than one program's share (P > 1)."""
    real = _logits(20011, device, torch.float32)
    fake = _logits(3001, device, torch.float32)
    for kind in ("ns", "hinge"):
        _check_d(real, fake, kind, torch.float32)
        _check_g(real, kind, torch.float32)


def test_non_contiguous_logits(device):
    base = torch.randn(9, 2, device=device, dtype=torch.float64)
    real = base[:, 1].requires_grad_()   # stride 2
    fake = torch.randn(4, 1, 1, 1, device=device, dtype=torch.float64).requires_grad_()  # [N,1,1,1]
    _check_d(real, fake, "ns", torch.float64)
    _check_g(fake, "lsgan", torch.float64)


def _poison_allocations(monkeypatch):
    """Every float buffer made with torch.empty/empty_like starts as NaN (the launchers
    allocate their outputs so), so an element a kernel forgets to write fails the check."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(fn):
        def make(*args, **kwargs):
            t = fn(*args, **kwargs)
            return poison_(t) if t.is_floating_point() else t
        return make

    monkeypatch.setattr(torch, "empty", poisoned(empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(empty_like))


def test_every_element_written(device, monkeypatch):
    real = _logits(2053, device, torch.float32)
    fake = _logits(19, device, torch.float32, shape="n1")
    _poison_allocations(monkeypatch)
    _check_d(real, fake, "ns", torch.float32)
    _check_g(real, "lsgan", torch.float32)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_eager_backend_agrees(kind, device):
    real = _logits(13, device, torch.float32)
    fake = _logits(6, device, torch.float32)
    fused = (d_loss(real, fake, kind), g_loss(fake, kind))
    with fastgan.use_backend("eager"):
        eager = (d_loss(real, fake, kind), g_loss(fake, kind))
    ref = (_d_loss_ref(real, fake, kind), _g_loss_ref(fake, kind))
    for a, b, c in zip(fused, eager, ref):
        assert a.dtype == b.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6) and torch.equal(b, c)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_gradcheck(kind, device):
    real = _logits(7, device, torch.float64)
    fake = _logits(5, device, torch.float64, shape="n1")
    from fastgan.functional.losses import _D_TERMS, _G_TERMS

    rt, ft = _D_TERMS[kind]
    assert torch.autograd.gradcheck(lambda r, f: GAN_LOSS(r, f, rt, ft)[0], (real, fake))
    assert torch.autograd.gradcheck(lambda f: GAN_LOSS(None, f, None, _G_TERMS[kind])[0], (fake,))


def test_second_order_raises(device):
    fake = _logits(5, device, torch.float64)
    (g,) = torch.autograd.grad(g_loss(fake), fake, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), fake)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_patchgan_logits_average_over_every_element(kind, device):
    """PatchGAN critics (pix2pix, CycleGAN, StarGAN) return [N, 1, H, W]: each term is a mean over
    all elements, as the hand-written D(x).mean() lines; real and fake shapes may differ."""
    real = torch.randn(3, 1, 4, 5, device=device, requires_grad=True)
    fake = torch.randn(2, 1, 4, 5, device=device, requires_grad=True)
    loss, ref = d_loss(real, fake, kind), _d_loss_ref(real.double().flatten(), fake.double().flatten(), kind)
    assert_close(loss, ref, torch.float32, "d_loss")
    g_real, g_fake = torch.autograd.grad(loss, (real, fake))
    r_real, r_fake = torch.autograd.grad(ref, (real, fake))
    assert g_real.shape == real.shape
    assert_close(g_real, r_real, torch.float32, "d_loss grad real")
    assert_close(g_fake, r_fake, torch.float32, "d_loss grad fake")
    assert_close(g_loss(fake, kind), _g_loss_ref(fake.double().flatten(), kind), torch.float32, "g_loss")
    if kind == "wgan":
        assert_close(d_loss(real, fake, kind), fake.double().mean() - real.double().mean(), torch.float32)


def test_bad_input(device):
    x = torch.randn(4, device=device)
    with pytest.raises(ValueError, match="kind"):
        d_loss(x, x, "wasserstein")
    with pytest.raises(ValueError, match="kind"):
        g_loss(x, None)
    with pytest.raises(ValueError, match="real_logits"):
        d_loss(torch.randn(0, 3, device=device), x)
    with pytest.raises(ValueError, match="fake_logits"):
        g_loss(torch.tensor(1.0, device=device))  # 0-d: no batch dim
    with pytest.raises(ValueError, match="fake_logits"):
        g_loss(torch.randn(0, device=device))
    with pytest.raises(TypeError, match="real_logits"):
        d_loss(torch.ones(4, dtype=torch.int64, device=device), x)
    with pytest.raises(TypeError, match="fake_logits"):
        g_loss(torch.ones(4, dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match="fake_logits"):
        g_loss([0.1, 0.2])
    with pytest.raises(TypeError, match="real_logits"):
        d_loss(1.0, x)
    assert d_loss(x.double(), x).dtype == torch.float64  # promoted, as torch promotes


def test_no_host_sync_by_construction(device, monkeypatch):
    """No Tensor -> Python conversions on the fused path (the CPU stand-in for the CUDA
    sync-debug test below): any .item()/bool()/float()/int()/tolist() raises."""
    real = _logits(9, device, torch.float32)
    fake = _logits(5, device, torch.float32)
    d_loss(real, fake)  # warm up: imports, kernel compilation

    def boom(*args, **kwargs):
        raise AssertionError("host synchronisation: a tensor value was read on the host")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    for kind in LOSS_KINDS:
        loss = d_loss(real, fake, kind) + g_loss(fake, kind)
        torch.autograd.grad(loss, (real, fake))


@pytest.mark.gpu
def test_no_host_sync_cuda():
    real = torch.randn(64, 1, device="cuda", requires_grad=True)
    fake = torch.randn(48, 1, device="cuda", requires_grad=True)
    d_loss(real, fake)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kind in LOSS_KINDS:
            loss = d_loss(real, fake, kind) + g_loss(fake, kind)
            torch.autograd.grad(loss, (real, fake))
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_logit_stats_match_reference(dtype, device):
    """logit_stats = [mean r, mean f, (mean[r > 0] + mean[f < 0]) / 2] in one launch, over every
    element (PatchGAN logits, batches of different sizes, more logits than one block), NaN
    propagating to the means as torch's do."""
    from fastgan.functional import logit_stats
    real = torch.randn(3, 1, 23, 31, device=device).to(dtype) + 0.3  # 2139 logits: three blocks
    fake = torch.randn(5, device=device).to(dtype) - 0.2
    got = logit_stats(real, fake)
    r, f = real.double().reshape(-1), fake.double()
    want = torch.stack([r.mean(), f.mean(), 0.5 * ((r > 0).double().mean() + (f < 0).double().mean())])
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(got, want, got.dtype, "logit stats")
    fake[1] = float("nan")
    got = logit_stats(real, fake)
    assert torch.isnan(got[1]) and not torch.isnan(got[0]) and not torch.isnan(got[2])
    acc = 0.5 * ((r > 0).double().mean() + (f[[0, 2, 3, 4]] < 0).double().sum() / 5)  # NaN < 0 is False
    assert abs(float(got[2]) - float(acc)) < 1e-6
    with pytest.raises(ValueError, match="at least one logit"):
        logit_stats(real, fake[:0])
