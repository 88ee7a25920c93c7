"""modulated_conv2d: the coefficient kernel, both execution forms (scaled, grouped) against the
float64 reference with every gradient, a path-length penalty inside no_weight_gradients, and
bad input."""
import pytest
import torch

import fastgan
from fastgan.functional.gradfix import no_weight_gradients
from fastgan.functional.modulated_conv import _modconv_coeffs_ref, _modulated_conv2d_ref, modconv_coeffs, \
    modulated_conv2d
from fastgan.functional.upfirdn2d import setup_filter

from .utils import assert_close, check_against_ref


def test_coefficients_kernel_and_its_gradients(device):
    s = torch.randn(3, 5, device=device, requires_grad=True)
    w = torch.randn(7, 5, 2, 3, device=device, requires_grad=True)
    check_against_ref(lambda s_, w_: modconv_coeffs(s_, w_, 1e-8), lambda s_, w_: _modconv_coeffs_ref(s_, w_, 1e-8),
                      [s, w], torch.float32)
    s64, w64 = (t.detach().double().requires_grad_() for t in (s[:2, :3], w[:2, :3, :1]))
    assert torch.autograd.gradgradcheck(lambda s_, w_: modconv_coeffs(s_, w_, 1e-3), (s64, w64), fast_mode=True)
    result = torch.library.opcheck(torch.ops.fastgan.modconv_coeffs.default, (s64, w64, 1e-8))
    assert all(v == "SUCCESS" for v in result.values()), result


# (name, up, padding, demodulate, noise, bias + act)
CASES = [("plain", 1, 1, True, True, dict(act="lrelu")),
         ("up2", 2, 1, True, False, dict(act="lrelu", clamp=0.5)),
         ("no_demod", 1, 0, False, True, {})]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_matches_reference_with_gradients(case, device):
    _, up, pad, demod, with_noise, epi = case
    f = setup_filter([1, 3, 3, 1], device=device)
    x = torch.randn(2, 3, 4, 4, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    s = torch.randn(2, 3, device=device, requires_grad=True)
    out_hw = 4 * up + 2 * pad - 2
    noise = torch.randn(2, 1, out_hw, out_hw, device=device, requires_grad=True) if with_noise else None
    b = torch.randn(4, device=device, requires_grad=True) if epi else None
    kw = dict(up=up, padding=pad, resample_filter=f, demodulate=demod, **epi)

    def ours(x_, w_, s_, n_=None, b_=None):
        return modulated_conv2d(x_, w_, s_, n_, bias=b_, **kw)

    def ref(x_, w_, s_, n_=None, b_=None):
        with fastgan.use_backend("eager"):
            return modulated_conv2d(x_, w_, s_, n_, bias=b_, **kw)
    inputs = [x, w, s] + ([noise] if with_noise else [None]) + ([b] if epi else [])
    check_against_ref(ours, ref, inputs, torch.float32)
    with torch.no_grad():  # no autograd: both forms, forced
        for fused in (True, False):
            y = modulated_conv2d(x, w, s, noise, bias=b, fused_modconv=fused, **kw)
            assert_close(y, ref(*(t.double() if t is not None else None for t in inputs)), torch.float32,
                         f"fused_modconv={fused}")


def test_half_input_with_float32_parameters(device):
    x = torch.randn(2, 3, 5, 5, device=device)
    w, s = torch.randn(4, 3, 3, 3, device=device), torch.randn(2, 3, device=device) * 100
    y = modulated_conv2d(x.to(torch.bfloat16), w, s, padding=1)
    assert y.dtype == torch.bfloat16
    assert_close(y, _modulated_conv2d_ref(x.double(), w.double(), s.double(), None, (None, 1, 1, 1, 1, True, False),
                                          True), torch.bfloat16)


def test_path_length_penalty_with_no_weight_gradients(device):
    """StyleGAN2's path-length regulariser: the gradient of <G(w), noise> with respect to the
    styles (inside no_weight_gradients) and the penalty's gradient with respect to the
    parameters equal the float64 reference's."""
    f = setup_filter([1, 3, 3, 1], device=device)
    w1 = torch.randn(3, 2, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 3, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    a1 = torch.randn(2, 4, device=device, dtype=torch.float64, requires_grad=True)  # the "affine" layers
    a2 = torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True)
    ws0 = torch.randn(2, 4, device=device, dtype=torch.float64)
    x0 = torch.randn(2, 2, 4, 4, device=device, dtype=torch.float64)
    results = []
    for backend in ("interpret" if device == "cpu" else "triton", "eager"):
        ws = ws0.clone().requires_grad_()
        with fastgan.use_backend(backend):
            h = modulated_conv2d(x0, w1, ws @ a1.t() + 1, up=2, padding=1, resample_filter=f, act="lrelu")
            img = modulated_conv2d(h, w2, ws @ a2.t() + 1, padding=1)
            noise = torch.linspace(-1, 1, img.numel(), device=device, dtype=torch.float64).reshape(img.shape)
            with no_weight_gradients(backend != "eager"):
                (g,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
            penalty = g.square().sum(1).sqrt().sub(1).square().mean()
            results.append([g.detach()] + list(torch.autograd.grad(penalty, (w1, w2, a1, a2))))
    for ours, ref in zip(*results):
        assert_close(ours, ref, torch.float64, "path length")


def test_no_weight_gradients_skips_only_the_weight(device):
    x = torch.randn(1, 2, 4, 4, device=device)
    w = torch.randn(3, 2, 3, 3, device=device, requires_grad=True)
    s = torch.randn(1, 2, device=device, requires_grad=True)
    with no_weight_gradients():
        gs, gw = torch.autograd.grad(modulated_conv2d(x, w, s, padding=1).sum(), (s, w), allow_unused=True,
                                     materialize_grads=False)
    assert gs is not None and gw is None


def test_bad_input(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    w, s = torch.randn(4, 3, 3, 3, device=device), torch.randn(2, 3, device=device)
    for call, exc, match in [
        (lambda: modulated_conv2d(x, w[:, :2], s), ValueError, "weight must be"),
        (lambda: modulated_conv2d(x, w, s[:1]), ValueError, "styles must be"),
        (lambda: modulated_conv2d(x, w, s.double()), TypeError, "styles must have weight's"),
        (lambda: modulated_conv2d(x[0], w, s), ValueError, "x must be"),
        (lambda: modulated_conv2d(x, w, s, up=0), ValueError, "up must be"),
        (lambda: modulated_conv2d(x, w, s, act="gelu"), ValueError, "act"),
    ]:
        with pytest.raises(exc, match=match):
            call()


def test_mode_dispatch_off_cuda_and_forcing(device, monkeypatch, tmp_path):
    """The conv dispatcher picks between the two forms like between conv implementations: the first
    off CUDA, FASTGAN_CONV (a conv-only switch) does not apply, cached choices of any name load."""
    from fastgan.backend import conv_dispatch
    from fastgan.functional.modulated_conv import MODES

    x, w = torch.randn(1, 2, 4, 4, device=device), torch.randn(3, 2, 3, 3, device=device)
    monkeypatch.setenv("FASTGAN_CONV", "vendor")
    if device == "cpu":
        assert conv_dispatch.choose("modconv", x, w, (), lambda m: None, impls=MODES) == "scaled"
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path))
    entry = {"impl": "grouped", "t_scaled_ms": 0.3, "t_grouped_ms": 0.2}
    conv_dispatch._save_disk("modconv|k", entry)
    assert conv_dispatch._read_disk(conv_dispatch.cache_path()) == {"modconv|k": entry}
