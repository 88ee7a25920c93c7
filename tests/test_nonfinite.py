"""NaN and +-inf: every fused op gives what its eager reference gives, through the Triton
interpreter: NaN where the reference has NaN, the same infinities, the finite values within
float32 tolerance. The reference is the op's eager reference on float64 copies of the inputs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.functional import ACTIVATIONS, LOSS_KINDS, bias_act, conv2d_act, conv_transpose2d_act, d_loss, g_loss
from fastgan.functional import resolve_act
from fastgan.functional.bias_act import _bias_act_ref
from fastgan.functional.losses import _d_loss_ref, _g_loss_ref
from fastgan.functional.penalty import GRAD_PENALTY, INTERPOLATE, _interpolate_ref, _penalty_ref, _weight
from fastgan.nn import BatchNormAct2d

ACTS = sorted(ACTIVATIONS)
NAN, INF = float("nan"), float("inf")
# the interpreter evaluates kernels with numpy, which warns about inf * 0 and exp overflow
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                        "ignore:overflow encountered:RuntimeWarning")


def assert_same(out, ref, what):
    """NaN exactly where ``ref`` has NaN, the same infinities, finite values within float32 tolerance."""
    out, ref = out.detach().double(), ref.detach().double()
    assert out.shape == ref.shape, what
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=True,
                               msg=lambda m: f"{what}:\n{m}\nout={out.flatten().tolist()}\n"
                                             f"ref={ref.flatten().tolist()}")


def _special(*shape):
    """Random values with NaN, +inf, -inf and huge finite values in the first elements."""
    x = torch.randn(*shape) * 3
    x.view(-1)[:6] = torch.tensor([NAN, INF, -INF, 1e30, -1e30, 0.0])
    return x


def _grads(y, inputs, dy, create_graph=False):
    return torch.autograd.grad(y, inputs, dy, create_graph=create_graph)


@pytest.mark.parametrize("clamp", [None, 0.8], ids=["noclamp", "clamp"])
@pytest.mark.parametrize("act", ACTS)
def test_bias_act(act, clamp):
    """Forward, dx and db, and the second order where the activation has one: x holds NaN and
    +-inf, the bias has a NaN and an inf channel."""
    x = _special(2, 4, 3, 5).requires_grad_()
    b = torch.tensor([0.3, NAN, INF, -0.2]).requires_grad_()
    x64, b64 = (t.detach().double().requires_grad_() for t in (x, b))
    spec = resolve_act(act, clamp=clamp)
    y = bias_act(x, b, act=act, clamp=clamp)
    y64 = _bias_act_ref(x64, b64, 1, spec)
    assert_same(y, y64, f"{act} y")
    dy = torch.randn_like(y)
    dx, db = _grads(y, [x, b], dy, create_graph=True)
    dx64, db64 = _grads(y64, [x64, b64], dy.double(), create_graph=True)
    assert_same(dx, dx64, f"{act} dx")
    assert_same(db, db64, f"{act} db")
    if spec.has_2nd_grad:
        v = torch.randn_like(dx)
        for name, out, ref in zip(("d2x", "d2b"), _grads(dx, [x, b], v), _grads(dx64, [x64, b64], v.double())):
            assert_same(out, ref, f"{act} {name}")


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
@pytest.mark.parametrize("act", ACTS)
def test_conv_epilogue(act, transposed, monkeypatch):
    """The fused conv's epilogue: an all-NaN image (the reference: NaN everywhere), an image with
    one +inf pixel (inf and NaN after the convolution mixes signs), output and gradients."""
    monkeypatch.setenv("FASTGAN_CONV", "triton")
    x = torch.randn(3, 2, 5, 5)
    x[0] = NAN
    x[1, 0, 2, 2] = INF
    w = torch.randn(*((2, 3) if transposed else (3, 2)), 3, 3) / 3
    b = torch.randn(3)
    fn, ref_conv = (conv_transpose2d_act, F.conv_transpose2d) if transposed else (conv2d_act, F.conv2d)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    y = fn(xs, ws, bs, act=act, clamp=0.8)
    y64 = resolve_act(act, clamp=0.8).reference(ref_conv(x64, w64, None) + b64.view(1, -1, 1, 1))
    assert_same(y, y64, f"{act} y")
    dy = torch.randn_like(y)
    grads, grads64 = _grads(y, [xs, ws, bs], dy), _grads(y64, [x64, w64, b64], dy.double())
    for name, out, ref in zip(("dx", "dw", "db"), grads, grads64):
        assert_same(out, ref, f"{act} {name}")


@pytest.mark.parametrize("act,clamp", [("relu", None), ("lrelu", None), ("elu", None), ("selu", None),
                                       ("tanh", 0.8), ("relu", 0.8)])
def test_batch_norm_act(act, clamp):
    """A NaN pixel makes its channel NaN (output and running mean), an inf pixel too (var = NaN)."""
    ref = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        ref.weight.normal_(1.0, 0.3)
        ref.bias.normal_(0.0, 0.3)
    fused = BatchNormAct2d.from_torch(ref, act=act, clamp=clamp).float()
    x = torch.randn(2, 3, 4, 5)
    x[1, 0, 2, 3] = NAN
    x[0, 2, 1, 1] = INF
    x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y = fused(x)
    y64 = resolve_act(act, clamp=clamp).reference(ref(x64))
    assert_same(y, y64, "y")
    assert_same(fused.running_mean, ref.running_mean, "running_mean")
    assert_same(fused.running_var, ref.running_var, "running_var")
    dy = torch.randn_like(y)
    out = _grads(y, [x, fused.weight, fused.bias], dy)
    for name, o, r in zip(("dx", "dw", "db"), out, _grads(y64, [x64, ref.weight, ref.bias], dy.double())):
        assert_same(o, r, name)


@pytest.mark.parametrize("special", [INF, -INF, NAN], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_losses(kind, special):
    """d_loss and g_loss with one non-finite logit: the loss and dL/dlogit of every logit.
    (The hinge D loss of [inf, .5], [-2, .1] is finite, and so is its gradient.)"""
    real = torch.tensor([special, 0.5, -3.0])
    fake = torch.tensor([-2.0, special, 0.1, 4.0])
    r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
    r64, f64 = real.double().requires_grad_(), fake.double().requires_grad_()
    loss, loss64 = d_loss(r, f, kind), _d_loss_ref(r64, f64, kind)
    assert_same(loss, loss64, f"{kind} d_loss")
    for name, out, ref in zip(("d_real", "d_fake"), _grads(loss, [r, f], None), _grads(loss64, [r64, f64], None)):
        assert_same(out, ref, f"{kind} {name}")
    loss, loss64 = g_loss(f, kind), _g_loss_ref(f64, kind)
    assert_same(loss, loss64, f"{kind} g_loss")
    assert_same(_grads(loss, [f], None)[0], _grads(loss64, [f64], None)[0], f"{kind} g_loss d_fake")


@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_penalty(kind):
    """The penalty of input gradients with an inf sample, a NaN sample, a zero sample and finite
    ones (value and gradient), and the interpolation of an inf pixel."""
    grad = torch.randn(5, 2, 3, 3)
    grad[0, 1, 2, 2] = INF
    grad[1, 0, 0, 0] = NAN
    grad[2] = 0.0
    g, g64 = grad.clone().requires_grad_(), grad.double().requires_grad_()
    p = GRAD_PENALTY(g, kind, _weight(kind, 10.0, 5), 1.0)[0]
    p64 = _penalty_ref(g64, kind, 10.0, 1.0)
    assert_same(p, p64, f"{kind} penalty")
    assert_same(_grads(p, [g], None)[0], _grads(p64, [g64], None)[0], f"{kind} dgrad")
    real, fake, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0.0, 0.3, 1.0])
    real[:, 0, 1, 1] = INF
    fake[:, 1, 2, 2] = NAN
    assert_same(INTERPOLATE(real, fake, eps), _interpolate_ref(real.double(), fake.double(), eps.double()),
                "interpolate")
