"""Relative precision of every activation and its first and second derivatives, in the kernels,
on a log-spaced grid of |z| from 1e-30 to 1e4, both signs (issue 13: tanh returned 0 at 1e-8,
elu was 4.6% off at -1e-6, and derivatives lost every digit in the tails).

The reference is each derivative written out exactly and evaluated in 50-digit arithmetic
(mpmath, which torch's sympy dependency brings), not torch's float64 autograd: ``1 - tanh(z)^2`` or
``s (1 - s)`` in float64 are themselves 0 at |z| = 40. The bound is the float32 kernels' own:
a few ulps of the value, or of the change a few-ulp perturbation of z makes where the value is a
difference of O(1) terms (near a root of swish' or swish''). Values below float32's normal range
are compared absolutely.
"""
import math

import pytest
import torch

mpmath = pytest.importorskip("mpmath")
from fastgan.backend import kernels  # noqa: E402
from fastgan.functional.activations import ACTIVATIONS  # noqa: E402

mp = mpmath.mp
mp.dps = 50
ULP = 2.0 ** -24
SELU_SCALE = mpmath.mpf("1.0507009873554804934193349852946")
SELU_ALPHA = mpmath.mpf("1.6732632423543772848170429916717")
ALPHA = mpmath.mpf("0.2")  # the lrelu slope used here


def _sig(z):
    return 1 / (1 + mpmath.exp(-z))


# act -> (f, f', f'') in exact arithmetic
EXACT = {
    "linear": (lambda z: z, lambda z: 1, lambda z: 0),
    "relu": (lambda z: max(z, 0), lambda z: 1 if z > 0 else 0, lambda z: 0),
    "lrelu": (lambda z: z if z > 0 else ALPHA * z, lambda z: 1 if z > 0 else ALPHA, lambda z: 0),
    "tanh": (mpmath.tanh, lambda z: mpmath.sech(z) ** 2, lambda z: -2 * mpmath.tanh(z) * mpmath.sech(z) ** 2),
    "sigmoid": (_sig, lambda z: _sig(z) * (1 - _sig(z)),
                lambda z: _sig(z) * (1 - _sig(z)) * (1 - 2 * _sig(z))),
    "elu": (lambda z: z if z > 0 else mpmath.expm1(z), lambda z: 1 if z > 0 else mpmath.exp(z),
            lambda z: 0 if z > 0 else mpmath.exp(z)),
    "selu": (lambda z: SELU_SCALE * (z if z > 0 else SELU_ALPHA * mpmath.expm1(z)),
             lambda z: SELU_SCALE * (1 if z > 0 else SELU_ALPHA * mpmath.exp(z)),
             lambda z: 0 if z > 0 else SELU_SCALE * SELU_ALPHA * mpmath.exp(z)),
    "softplus": (lambda z: mpmath.log1p(mpmath.exp(z)), _sig, lambda z: _sig(z) * (1 - _sig(z))),
    "swish": (lambda z: z * _sig(z), lambda z: _sig(z) + z * _sig(z) * (1 - _sig(z)),
              lambda z: _sig(z) * (1 - _sig(z)) * (2 + z * (1 - 2 * _sig(z)))),
}


def _grid() -> torch.Tensor:
    mags = torch.logspace(-30, 4, 341, dtype=torch.float64)
    return torch.cat([-mags.flip(0), mags]).float()


def _reference(fn, z: torch.Tensor):
    """(value, scale) per point: the exact value, and |value| + |z f'(z)| from a relative central
    difference in exact arithmetic (the change a relative perturbation of z makes)."""
    values, scales = [], []
    h = mpmath.mpf("1e-12")
    for zf in z.tolist():
        zm = mpmath.mpf(zf)
        v = mpmath.mpf(fn(zm))
        slope = (mpmath.mpf(fn(zm * (1 + h))) - mpmath.mpf(fn(zm * (1 - h)))) / (2 * h)
        values.append(float(v))
        scales.append(float(abs(v) + abs(slope)))
    return torch.tensor(values, dtype=torch.float64), torch.tensor(scales, dtype=torch.float64)


def test_every_activation_has_an_exact_reference():
    assert set(EXACT) == set(ACTIVATIONS)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_activation_and_derivatives_are_accurate_near_zero_and_in_the_tails(act, device):
    K = kernels()
    z = _grid().to(device)
    x = z.reshape(1, -1)
    ones = torch.ones_like(x)
    alpha = 0.2 if act == "lrelu" else 0.0
    got = {
        "act": K.bias_act_fwd(x, None, 1, act, alpha, 1.0, None),
        "act'": K.bias_act_bwd(ones, x, None, 1, act, alpha, 1.0, None, order=1)[0],
        "act''": K.bias_act_bwd(ones, x, None, 1, act, alpha, 1.0, None, order=2, dy=ones)[0],
    }
    for (name, out), fn in zip(got.items(), EXACT[act]):
        ref, scale = _reference(fn, z.cpu())
        err = (out.reshape(-1).double().cpu() - ref).abs()
        bound = 8 * ULP * scale + 2.0 ** -140  # below the normal range (2^-126): absolute
        bad = err > bound
        assert not bad.any(), (
            f"{act} {name}: {int(bad.sum())} point(s) beyond 8 ulp, worst at z = "
            f"{z.cpu()[(err / bound).argmax()].item():.6g}: got {out.reshape(-1)[(err / bound).argmax()].item():.9g}, "
            f"exact {ref[(err / bound).argmax()].item():.9g}")


def test_tanh_of_the_pytorch_dcgan_output_scale():
    """The PyTorch examples' DCGAN generator ends in tanh of about 5e-4 at initialisation: the
    fused output is as close to torch's float32 tanh as float32 allows (issue 13: 1.1e-4 off)."""
    z = (torch.randn(4, 3, 8, 8) * 5e-4).float()
    y = kernels().bias_act_fwd(z, None, 1, "tanh", 0.0, 1.0, None)
    ref = torch.tanh(z.double())
    assert ((y.double() - ref).abs() / ref.abs()).max().item() < 4 * ULP
    assert math.isclose(kernels().bias_act_fwd(torch.tensor([[1e-8]]), None, 1, "tanh", 0.0, 1.0, None).item(),
                        1e-8, rel_tol=1e-7)
