"""conv2d_resample: the fused reordering (transposed conv + FIR, FIR + strided conv) against the
float64 reference (outputs, x and w gradients), StyleGAN's padding conventions, second order
through a penalty with no_weight_gradients, and bad input."""
import pytest
import torch
import torch.nn.functional as F

from fastgan import backend_for
from fastgan.functional import conv as conv_module
from fastgan.functional.conv2d_resample import _conv2d_resample_ref, _padding, conv2d_resample
from fastgan.functional.gradfix import no_weight_gradients
from fastgan.functional.upfirdn2d import downsample2d, filter_size, setup_filter, upsample2d

from .test_upfirdn2d import layout
from .utils import assert_close, check_against_ref

# (name, kernel, up, down, padding, groups, flip_weight, flip_filter, filter taps)
CASES = [
    ("up2_k3", 3, 2, 1, 1, 1, True, False, [1, 3, 3, 1]),
    ("down2_k3", 3, 1, 2, 1, 1, True, False, [1, 3, 3, 1]),
    ("up2_k1_flip", 1, 2, 1, 0, 1, False, True, [1, 3, 3, 1]),
    ("down2_k1_g2", 1, 1, 2, 0, 2, True, False, [1, 3, 3, 1]),
    ("asym_pad_g2", 3, 1, 1, [1, 0, 2, -1], 2, False, False, None),
    ("up2down2_g2", 3, 2, 2, [1, 2, 0, 1], 2, False, True, [1, 2, 1]),
    ("up2_k4_sep8", 4, 2, 1, [2, 1, 1, 2], 1, True, False, list(range(1, 9))),
    ("up3_k2", 2, 3, 1, 0, 1, True, False, [1, 2, 3, 2, 1]),
]
VARIANTS = [(torch.float32, "nchw"), (torch.float32, "cl"), (torch.bfloat16, "cl"), (torch.float16, "nchw")]
MATRIX = [(case, *VARIANTS[i % len(VARIANTS)]) for i, case in enumerate(CASES)]


def _ref(f, up, down, padding, groups, fw, ff):
    def ref(x, w):
        pad = _padding(padding, filter_size(f), up, down)
        return _conv2d_resample_ref(x, w, f, up, down, pad, groups, fw, ff)
    return ref


@pytest.mark.parametrize("case,dtype,kind", MATRIX, ids=[f"{c[0]}-{str(d)[6:]}-{k}" for c, d, k in MATRIX])
def test_matches_reference_with_gradients(case, dtype, kind, device):
    _, k, up, down, pad, groups, fw, ff, taps = case
    f = None if taps is None else setup_filter(taps, device=device)
    x = layout(torch.randn(1, 4, 5, 4, device=device).to(dtype), kind).requires_grad_()
    w = (torch.randn(4, 4 // groups, k, k, device=device) / k).to(dtype).requires_grad_()
    check_against_ref(lambda x_, w_: conv2d_resample(x_, w_, f, up, down, pad, groups, fw, ff),
                      _ref(f, up, down, pad, groups, fw, ff), [x, w], dtype)


def test_conventions(device):
    """No resampling is F.conv2d (flip_weight=False: a true convolution); a 1x1 identity weight
    turns it into upsample2d / downsample2d, whose centring it shares."""
    x = torch.randn(1, 3, 6, 7, device=device, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, device=device, dtype=torch.float64)
    ref = _ref(None, 1, 1, 1, 1, True, False)
    assert_close(ref(x, w), F.conv2d(x, w, padding=1), torch.float64, "correlation")
    assert_close(_ref(None, 1, 1, 1, 1, False, False)(x, w), F.conv2d(x, w.flip([2, 3]), padding=1), torch.float64,
                 "convolution")
    f = setup_filter([1, 3, 3, 1], device=device)
    eye = torch.eye(3, device=device, dtype=torch.float64)[:, :, None, None]
    assert_close(_ref(f, 2, 1, 0, 1, True, False)(x, eye), upsample2d(x, f, 2), torch.float64, "upsample2d")
    assert_close(_ref(f, 1, 2, 0, 1, True, False)(x, eye), downsample2d(x, f, 2), torch.float64, "downsample2d")


def test_penalty_second_order_with_no_weight_gradients(device, monkeypatch):
    """An R1-style penalty through an up and a down layer: parameter gradients equal the float64
    reference's, with the weight gradients of the inner pass skipped."""
    f = setup_filter([1, 3, 3, 1], device=device)
    w1 = torch.randn(3, 2, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(1, 3, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(1, 2, 4, 4, device=device, dtype=torch.float64)
    results = []
    for conv in (conv2d_resample, None):
        def layer(x, w, up, down):
            if conv is None:
                return _ref(f, up, down, 1, 1, True, False)(x, w)
            return conv(x, w, f, up, down, 1)
        x = x0.clone().requires_grad_()
        logits = layer(torch.tanh(layer(x, w1, 2, 1)), w2, 1, 2).sum()
        with no_weight_gradients(conv is not None):
            (gx,) = torch.autograd.grad(logits, x, create_graph=True)
        results.append(torch.autograd.grad(logits + gx.square().sum(), (w1, w2)))
    for ours, ref in zip(*results):
        assert_close(ours, ref, torch.float64, "parameter gradient")
    if backend_for(x0) == "eager":
        return
    calls = []
    wgrad = conv_module.CONV_WEIGHT_GRAD
    monkeypatch.setattr(conv_module, "CONV_WEIGHT_GRAD", lambda *a: calls.append(1) or wgrad(*a))
    x = x0.clone().requires_grad_()
    with no_weight_gradients():  # the up layer's weight is computed from w1 (flipped, transposed)
        (gx,) = torch.autograd.grad(conv2d_resample(x, w1, f, 2).sum(), x)
    assert gx is not None and not calls, "the inner pass computed a weight gradient"


def test_bad_input(device):
    x = torch.randn(1, 4, 6, 6, device=device)
    w = torch.randn(2, 4, 3, 3, device=device)
    f = setup_filter([1, 3, 3, 1], device=device)
    for call, exc, match in [
        (lambda: conv2d_resample(x, w, f, up=0), ValueError, "up must be an int >= 1"),
        (lambda: conv2d_resample(x, w, f, down=-1), ValueError, "down must be"),
        (lambda: conv2d_resample(x, w, f, groups=3), ValueError, "does not fit x"),
        (lambda: conv2d_resample(x, w[:, :2], f), ValueError, "does not fit x"),
        (lambda: conv2d_resample(x, w.double(), f), TypeError, "w must have x's dtype"),
        (lambda: conv2d_resample(x, w[0], f), ValueError, "w must be a 4-d"),
        (lambda: conv2d_resample(x, w, torch.ones(2, 2, 2, device=device), up=2), ValueError, "f must be 1-d"),
        (lambda: conv2d_resample(x, w, f, down=2, padding=-4), ValueError, "padding .* leaves no output"),
        (lambda: conv2d_resample(x, w, f, flip_weight=None), TypeError, "flip_weight"),
    ]:
        with pytest.raises(exc, match=match):
            call()
