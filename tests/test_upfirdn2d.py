"""upfirdn2d and its wrappers (setup_filter, filter2d, upsample2d, downsample2d): the kernel against
the float64 reference (outputs and gradients, every order is the same op), the reference against
the documented formula, StyleGAN's argument conventions, and bad input."""
import pytest
import torch

import fastgan
from fastgan.functional.upfirdn2d import (_upfirdn2d_ref, downsample2d, filter2d, setup_filter, upfirdn2d,
                                          upsample2d)
from fastgan.kernels.geometry import FirGeom

from .utils import assert_close, check_against_ref

# (name, up, down, padding, filter shape or None, flip_filter, gain); StyleGAN's [x, y] order
CASES = [
    ("fir3", 1, 1, 1, (3,), False, 1.0),
    ("up2_2d", 2, 1, [2, 1], (4, 4), False, 4.0),
    ("up23_crop", [2, 3], 1, [-1, 2, 3, -2], (4,), True, 2.0),
    ("down2_2d", 1, 2, [2, 1, 1, 2], (5, 3), False, 1.0),
    ("down23_sep8", 1, [2, 3], [3, 4, 2, 2], (8,), True, 1.0),
    ("up3down2", 3, 2, [3, 1, 2, 2], (6, 5), False, 0.7),
    ("pad_crop_only", 1, 1, [2, -1, 0, 3], None, False, 1.5),
]
VARIANTS = [(torch.float32, "nchw"), (torch.float32, "cl"), (torch.float32, "strided"), (torch.bfloat16, "cl"),
            (torch.float16, "nchw")]


def layout(t, kind):
    if kind == "cl":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        return torch.cat([t, t], dim=3)[:, :, :, ::2]
    return t.contiguous()


def _filter(shape, device):
    return None if shape is None else torch.randn(*shape, device=device)


def _naive(x, f, up, down, padding, flip, gain):
    """The documented formula, one output at a time: y[o] = sum_k t[k] u[o * down + k - pad0]."""
    geom = FirGeom.of(up, down, padding)
    t = torch.full((1, 1), gain, dtype=x.dtype) if f is None else f.double() * gain ** (f.dim() / 2)
    t = t if flip else t.flip(list(range(t.dim())))
    t = torch.outer(t, t) if t.dim() == 1 else t
    (uh, uw), (dh, dw), (pt, _, pl, _) = geom.up, geom.down, geom.padding
    oh, ow = geom.output_hw(x.shape[2:], t.shape)
    y = x.new_zeros(x.shape[0], x.shape[1], oh, ow)
    for oy in range(oh):
        for ox in range(ow):
            for ky in range(t.shape[0]):
                for kx in range(t.shape[1]):
                    j, i = oy * dh + ky - pt, ox * dw + kx - pl
                    if j % uh == 0 and i % uw == 0 and 0 <= j // uh < x.shape[2] and 0 <= i // uw < x.shape[3]:
                        y[:, :, oy, ox] += t[ky, kx] * x[:, :, j // uh, i // uw]
    return y


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_reference_is_the_documented_formula(case):
    _, up, down, pad, fshape, flip, gain = case
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    f = _filter(fshape, "cpu")
    y = _upfirdn2d_ref(x, f, FirGeom.of(up, down, pad), flip, gain)
    assert_close(y, _naive(x, f, up, down, pad, flip, gain), torch.float64, "reference")


def _ref(f, up, down, pad, flip, gain):
    return lambda x: _upfirdn2d_ref(x, f, FirGeom.of(up, down, pad), flip, gain)


# every case in two variants, every variant in several cases
MATRIX = [(case, *VARIANTS[(i + k) % len(VARIANTS)]) for i, case in enumerate(CASES) for k in (0, 2)]


@pytest.mark.parametrize("case,dtype,kind", MATRIX,
                         ids=[f"{c[0]}-{str(d)[6:]}-{k}" for c, d, k in MATRIX])
def test_matches_reference_with_gradients(case, dtype, kind, device):
    _, up, down, pad, fshape, flip, gain = case
    x = layout(torch.randn(2, 3, 7, 6, device=device).to(dtype), kind)
    f = _filter(fshape, device)
    y = check_against_ref(lambda x_: upfirdn2d(x_, f, up, down, pad, flip, gain), _ref(f, up, down, pad, flip, gain),
                          [x.requires_grad_()], dtype)
    assert y.is_contiguous(memory_format=torch.channels_last if kind == "cl" else torch.contiguous_format)


def test_every_order_is_the_same_op(device):
    """gradcheck + gradgradcheck in float64, and a third-order derivative against the reference."""
    x = torch.randn(1, 2, 5, 4, device=device, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, 2, device=device)

    def fn(x_):
        return upfirdn2d(x_, f, up=[2, 1], down=[1, 2], padding=[1, -1, 2, 0], gain=1.3).square()
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)
    ref = _ref(f, [2, 1], [1, 2], [1, -1, 2, 0], False, 1.3)
    outs = []
    for g in (lambda x_: fn(x_).pow(2), lambda x_: ref(x_).square().pow(2)):
        (d1,) = torch.autograd.grad(g(x).sum(), x, create_graph=True)
        (d2,) = torch.autograd.grad(d1.square().sum(), x, create_graph=True)
        (d3,) = torch.autograd.grad(d2.sum(), x)
        outs.append(d3)
    assert_close(outs[0], outs[1], torch.float64, "third order")


def test_the_op_is_the_fused_one(device):
    x = torch.randn(1, 1, 4, 4, device=device, requires_grad=True)
    y = upfirdn2d(x, torch.ones(2, device=device), up=2)
    assert "Upfirdn2d" in type(y.grad_fn).__name__
    with fastgan.use_backend("eager"):
        y_ref = upfirdn2d(x, torch.ones(2, device=device), up=2)
    assert "Upfirdn2d" not in type(y_ref.grad_fn).__name__
    assert_close(y, y_ref, torch.float32)


def test_opcheck(device):
    x = torch.randn(1, 2, 4, 5, device=device, dtype=torch.float64, requires_grad=True)
    taps = torch.randn(3, 2, device=device, dtype=torch.float64)
    x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    result = torch.library.opcheck(torch.ops.fastgan.upfirdn2d.default, (x, taps, [2, 1], [1, 2], [1, 0, -1, 2]))
    assert all(v == "SUCCESS" for v in result.values()), result


# ----------------------------------------------------------------------------- StyleGAN's wrappers

def test_setup_filter_conventions():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    assert_close(f.sum(), torch.tensor(1.0), torch.float32, "normalized")
    assert setup_filter(list(range(1, 9))).shape == (8,)  # 8 taps or more stay separable
    assert setup_filter([1, 2], separable=True).shape == (2,)
    assert torch.equal(setup_filter([1, 2], normalize=False, flip_filter=True, separable=True), torch.tensor([2., 1.]))
    assert_close(setup_filter([1, 2, 3], gain=4, separable=True).sum(), torch.tensor(2.0), torch.float32, "gain")
    assert torch.equal(setup_filter(None), torch.ones(1, 1))


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1, 2, 3, 4, 4, 3, 2, 1]], ids=["4", "3", "8sep"])
def test_wrappers_keep_the_size_and_dc(taps, device):
    f = setup_filter(taps, device=device)
    x = torch.full((1, 2, 12, 16), 0.5, device=device)
    assert filter2d(x, f).shape == x.shape
    assert upsample2d(x, f, up=[2, 3]).shape == (1, 2, 36, 32)
    assert downsample2d(x, f, down=[2, 4]).shape == (1, 2, 3, 8)  # [x, y]
    # a normalized filter (with equal phase sums) keeps a constant image constant inside
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    for y in (upsample2d(x, f, up=2), filter2d(x, f, padding=-4)):
        assert_close(y[inner], torch.full_like(y[inner], 0.5), torch.float32, "DC")


@pytest.mark.parametrize("wrapper", ["filter2d", "upsample2d", "downsample2d"])
def test_wrappers_against_the_reference(wrapper, device):
    f = setup_filter([1, 3, 3, 1], device=device)
    x = torch.randn(1, 2, 5, 7, device=device, requires_grad=True)
    # (the padding each wrapper adds for a 4-tap filter, in (top, bottom, left, right), plus [1, 2] on top)
    geom = {"filter2d": FirGeom((1, 1), (1, 1), (2 + 2, 1 + 2, 2 + 1, 1 + 1)),
            "upsample2d": FirGeom((2, 2), (1, 1), (2 + 2, 1 + 2, 2 + 1, 1 + 1)),
            "downsample2d": FirGeom((1, 1), (2, 2), (1 + 2, 1 + 2, 1 + 1, 1 + 1))}[wrapper]
    gain = 1.5 * (4 if wrapper == "upsample2d" else 1)
    check_against_ref(lambda x_: globals()[wrapper](x_, f, padding=[1, 2], gain=1.5),
                      lambda x_: _upfirdn2d_ref(x_, f, geom, False, gain), [x], torch.float32)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_names_the_argument(device):
    x = torch.randn(1, 2, 6, 6, device=device)
    f = torch.ones(3, device=device)
    cases = [
        (lambda: upfirdn2d(x, torch.ones(2, 2, 2, device=device)), ValueError, "f must be 1-d"),
        (lambda: upfirdn2d(x, torch.ones(3, device=device, dtype=torch.float16)), TypeError, "f must be float32"),
        (lambda: upfirdn2d(x, torch.ones(3, device=device, dtype=torch.int64)), TypeError, "f must be float32"),
        (lambda: upfirdn2d(x, torch.ones(0, device=device)), ValueError, "f must have"),
        (lambda: upfirdn2d(x, [1.0, 2.0]), TypeError, "f must be a torch.Tensor"),
        (lambda: upfirdn2d(x, f.to("meta")), ValueError, "f must be on"),
        (lambda: upfirdn2d(x, f.clone().requires_grad_()), ValueError, "f requires grad"),
        (lambda: upfirdn2d(x, f, padding=-2), ValueError, "padding .* crops"),
        (lambda: upfirdn2d(x, f, padding=[0, 0, -4, 0]), ValueError, "padding .* crops"),
        (lambda: upfirdn2d(x, f, padding=[1, 2, 3]), TypeError, "padding"),
        (lambda: upfirdn2d(x, f, up=0), ValueError, "up must be positive"),
        (lambda: upfirdn2d(x, f, down=[1, 0]), ValueError, "down must be positive"),
        (lambda: upfirdn2d(x, f, up=1.5), TypeError, "up must be"),
        (lambda: upfirdn2d(x[0], f), ValueError, "x must be 4-d"),
        (lambda: upfirdn2d(x.long(), f), TypeError, "x must be a floating"),
        (lambda: upfirdn2d(x, f, flip_filter=1), TypeError, "flip_filter"),
        (lambda: upfirdn2d(x, f, gain=float("nan")), ValueError, "gain"),
        (lambda: downsample2d(x, f, down=0), ValueError, "down must be positive"),
        (lambda: upsample2d(x, f, padding=-8), ValueError, "padding .* crops"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
