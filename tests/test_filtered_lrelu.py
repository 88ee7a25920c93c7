"""filtered_lrelu: the fused kernel (three modes) against the float64 reference (outputs, x and b
gradients, the linearised map), several tiles per axis, gradients of any order, the non-separable
path, StyleGAN3's output-size rule, opcheck and bad input."""
import math

import pytest
import torch

import fastgan
from fastgan import backend
from fastgan.functional.filtered_lrelu import _filtered_lrelu_ref, _taps1d, filtered_lrelu

from .test_upfirdn2d import layout
from .utils import assert_close, check_against_ref

# (name, up, down, padding, fu taps, fd taps (int: 1-d, pair: 2-d, None), clamp, flip_filter, [N, C, H, W])
CASES = [
    ("up2down2", 2, 2, [5, 5, 5, 5], 8, 8, None, False, (1, 2, 7, 6)),
    ("no_filters", 1, 1, 0, None, None, 0.5, False, (2, 3, 5, 6)),
    ("up2_flip", 2, 1, [3, 2, 1, 4], 8, 4, 1.0, True, (1, 2, 5, 6)),
    ("down2_crop", 1, 2, [-1, 2, 2, 0], 4, 6, None, False, (1, 2, 9, 8)),
    ("up4down2", 4, 2, [7, 6, 5, 8], 12, 6, 0.7, False, (1, 1, 4, 3)),
    ("2d_filters", 2, 2, [2, 1, 2, 1], (4, 4), (3, 3), 2.0, False, (1, 2, 5, 5)),
]
VARIANTS = [(torch.float32, "nchw"), (torch.float32, "cl"), (torch.bfloat16, "nchw"), (torch.float16, "cl"),
            (torch.float32, "strided")]
MATRIX = [(case, *VARIANTS[(i + k) % len(VARIANTS)]) for i, case in enumerate(CASES) for k in (0, 2)]


def _filter(taps, device):
    """Random taps scaled to unit l1 norm, so that activations are O(1) and clamps bite partly."""
    if taps is None:
        return None
    f = torch.randn(taps if isinstance(taps, tuple) else (taps,), device=device)
    return f / f.abs().sum()


def _kwargs(case):
    _, up, down, pad, _, _, clamp, flip, _ = case
    return dict(up=up, down=down, padding=pad, gain=1.3, slope=0.2, clamp=clamp, flip_filter=flip)


def _ref(fu, fd, kw):
    from fastgan.kernels.geometry import FirGeom

    pad = FirGeom.of(kw["up"], 1, kw["padding"]).padding
    return lambda x, b: _filtered_lrelu_ref(x, fu, fd, b, kw["up"], kw["down"], pad, kw["gain"], kw["slope"],
                                            kw["clamp"], kw["flip_filter"])


@pytest.mark.parametrize("case,dtype,kind", MATRIX, ids=[f"{c[0]}-{str(d)[6:]}-{k}" for c, d, k in MATRIX])
def test_matches_reference_with_gradients(case, dtype, kind, device):
    fu, fd = _filter(case[4], device), _filter(case[5], device)
    kw = _kwargs(case)
    x = layout(torch.randn(case[8], device=device).to(dtype), kind).requires_grad_()
    b = torch.randn(case[8][1], device=device).to(dtype).requires_grad_()
    y = check_against_ref(lambda x_, b_: filtered_lrelu(x_, fu, fd, b_, **kw), _ref(fu, fd, kw), [x, b], dtype)
    # StyleGAN3's output size: (in * up + pad0 + pad1 - (fu - 1) - (fd - 1) + down - 1) // down
    ft = [1 if t is None else (t[0] if isinstance(t, tuple) else t) for t in case[4:6]]
    pad = kw["padding"] if isinstance(kw["padding"], list) else [kw["padding"]] * 4
    size = [(case[8][2 + a] * kw["up"] + pad[2 - 2 * a] + pad[3 - 2 * a] - (ft[0] - 1) - (ft[1] - 1) + kw["down"] - 1)
            // kw["down"] for a in range(2)]
    assert list(y.shape[2:]) == size
    if kind == "cl":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", ["fwd", "lin", "bwd"])
def test_many_tiles_per_axis(mode, device):
    """16-sample intermediate tiles: every axis is split into several overlapping tiles."""
    kernels = backend.kernels()
    kw = dict(up=2, down=2, padding=[4, 3, 5, 2], gain=1.3, slope=0.2, clamp=1.5, flip_filter=False)
    fu, fd = _filter(6, device), _filter(5, device)
    x = torch.randn(1, 2, 11, 13, device=device)
    b = torch.randn(2, device=device)
    ref = _ref(fu, fd, kw)
    gu, gd = _taps1d(fu, False, 4.0, x), _taps1d(fd, False, 1.0, x)
    pad = (5, 2, 4, 3)
    x64, b64 = x.double().requires_grad_(), b.double()
    y64 = ref(x64, b64)
    args = (2, 2, pad, 1.3, 0.2, 1.5)
    if mode == "fwd":
        out, want = kernels.filtered_lrelu_fwd(x, b, gu, gd, *args, y64.shape[2:], tile=16), y64
    elif mode == "bwd":
        dy = torch.randn_like(y64)
        out = kernels.filtered_lrelu_bwd(dy.float(), x, b, gu, gd, *args, tile=16)
        want = torch.autograd.grad(y64, x64, dy)[0]
    else:
        v = torch.randn_like(x64)
        out = kernels.filtered_lrelu_lin(v.float(), x, b, gu, gd, *args, y64.shape[2:], tile=16)
        u = torch.zeros_like(y64, requires_grad=True)  # J v as the u-gradient of <J^T u, v>
        (jtu,) = torch.autograd.grad(y64, x64, u, create_graph=True)
        want = torch.autograd.grad(jtu, u, v)[0]
    assert_close(out, want, torch.float32, mode)


def test_gradients_of_any_order(device):
    opts = dict(device=device, dtype=torch.float64)
    x = torch.randn(1, 1, 4, 3, **opts, requires_grad=True)
    b = torch.randn(1, **opts, requires_grad=True)
    fu, fd = _filter(4, device), _filter(3, device)
    kw = dict(up=2, down=2, padding=[2, 1, 1, 2], gain=1.3, slope=0.2, clamp=None, flip_filter=False)

    def fn(x_, b_):
        return filtered_lrelu(x_, fu, fd, b_, **kw)
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)
    third = []
    for f in (fn, _ref(fu, fd, kw)):  # a smooth outer function keeps every order non-zero
        (g1,) = torch.autograd.grad(torch.tanh(f(x, b)).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(torch.sin(g1).sum(), x, create_graph=True)
        third.append(torch.autograd.grad(g2.square().sum(), (x, b)))
    assert min(t.abs().max() for t in third[1]) > 1e-4  # (not a saturated, all-zero case)
    for ours, ref in zip(*third):
        assert_close(ours, ref, torch.float64, "third order")


def test_fused_ops_opcheck_and_eager(device):
    opts = dict(device=device, dtype=torch.float64)
    x = torch.randn(1, 2, 4, 5, **opts, requires_grad=True)
    b = torch.randn(2, **opts, requires_grad=True)
    gu, gd = torch.randn(4, **opts), torch.randn(3, **opts)
    args = (b, gu, gd, 2, 1, [2, 1, 1, 2], 1.3, 0.2, 0.9)
    y = torch.ops.fastgan.filtered_lrelu(x, *args)
    dy = torch.randn_like(y)
    cheap = ("test_schema", "test_autograd_registration", "test_faketensor")  # the AOT test once, on the first
    v = torch.randn_like(x).requires_grad_()
    for op, a, tests in ((torch.ops.fastgan.filtered_lrelu, (x, *args), None),
                         (torch.ops.fastgan.filtered_lrelu_backward, (dy.requires_grad_(), x.detach(), *args), cheap),
                         (torch.ops.fastgan.filtered_lrelu_linear, (v, x.detach(), *args), cheap)):
        result = torch.library.opcheck(op.default, a, **({} if tests is None else {"test_utils": tests}))
        assert all(v == "SUCCESS" for v in result.values()), (op, result)
    fu = torch.randn(4, device=device)
    assert "FilteredLrelu" in type(filtered_lrelu(x, fu, None, b, up=2).grad_fn).__name__
    with fastgan.use_backend("eager"):
        assert "FilteredLrelu" not in type(filtered_lrelu(x, fu, None, b, up=2).grad_fn).__name__


def test_bad_input_names_the_argument(device):
    x = torch.randn(1, 2, 6, 6, device=device)
    f = torch.ones(4, device=device)
    for call, exc, match in [
        (lambda: filtered_lrelu(x, torch.ones(2, 2, 2, device=device)), ValueError, "fu must be 1-d"),
        (lambda: filtered_lrelu(x, f, f.half()), TypeError, "fd must be float32"),
        (lambda: filtered_lrelu(x, b=torch.ones(3, device=device)), ValueError, "b must be 1-d of length"),
        (lambda: filtered_lrelu(x, b=torch.ones(2, device=device).double()), TypeError, "b must have x's dtype"),
        (lambda: filtered_lrelu(x, up=0), ValueError, "up must be an int >= 1"),
        (lambda: filtered_lrelu(x, down=1.5), ValueError, "down must be an int >= 1"),
        (lambda: filtered_lrelu(x, slope=-0.1), ValueError, "slope"),
        (lambda: filtered_lrelu(x, gain=0), ValueError, "gain"),
        (lambda: filtered_lrelu(x, clamp=-1), ValueError, "clamp"),
        (lambda: filtered_lrelu(x, f, f, padding=-2), ValueError, "padding .* empty"),
        (lambda: filtered_lrelu(x[0]), ValueError, "x must be 4-d"),
        (lambda: filtered_lrelu(x, padding=[1, 2, 3]), TypeError, "padding"),
    ]:
        with pytest.raises(exc, match=match):
            call()


def test_default_gain_is_sqrt2(device):
    x = torch.randn(1, 1, 4, 4, device=device)
    assert_close(filtered_lrelu(x), torch.nn.functional.leaky_relu(x.double(), 0.2) * math.sqrt(2), torch.float32)
