"""The fused Linear / BatchNorm1d / InstanceNorm2d modules (fastgan.nn and what accelerate binds
onto torch's modules): outputs, every gradient and a gradient penalty's parameter gradients
against the float64 torch reference, through the kernels."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.accelerate import is_fused
from fastgan.nn import BatchNormAct1d, InstanceNormAct2d, LinearAct

from .utils import assert_close

TOL = 5e-5  # float32 through normalisations and sums


def _compare(fused, ref, act, x, what):
    """Outputs and gradients of ``fused`` (float32) against act(ref(x)), ref a float64 copy."""
    x32 = x.clone().requires_grad_(True)
    x64 = x.double().requires_grad_(True)
    y, y64 = fused(x32), act(ref(x64))
    assert_close(y, y64, torch.float32, f"{what} output", TOL)
    dy = torch.randn_like(y)
    params, params64 = list(fused.parameters()), list(ref.parameters())
    g = torch.autograd.grad(y, [x32] + params, dy)
    g64 = torch.autograd.grad(y64, [x64] + params64, dy.double())
    for a, r, i in zip(g, g64, range(len(g))):
        assert_close(a, r, torch.float32, f"{what} grad {i}", TOL)


@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_linear_act_matches_linear_plus_activation(act, device):
    torch_act = (lambda t: F.leaky_relu(t, 0.2)) if act == "lrelu" else torch.tanh
    lin = nn.Linear(7, 5).to(device)
    fused = LinearAct(7, 5, act=act, alpha=0.2 if act == "lrelu" else None, gain=1.0).to(device)
    fused.load_state_dict(lin.state_dict())
    ref = copy.deepcopy(lin).double()
    _compare(fused, ref, torch_act, torch.randn(4, 3, 7, device=device), f"linear {act}")


@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3)])
def test_batch_norm_1d_act_matches_torch(shape, device):
    bn = nn.BatchNorm1d(5).to(device)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    fused = BatchNormAct1d.from_torch(bn, act="lrelu", alpha=0.2, gain=1.0)
    ref = copy.deepcopy(bn).double()
    lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    _compare(fused, ref, lrelu, torch.randn(shape, device=device), "bn1d")
    assert_close(fused.running_var, ref.running_var, torch.float32, "running_var", TOL)
    fused.eval()
    ref.eval()
    _compare(fused, ref, lrelu, torch.randn(shape, device=device), "bn1d eval")


@pytest.mark.parametrize("affine,track", [(False, False), (True, True)])
def test_instance_norm_act_matches_torch(affine, track, device):
    inorm = nn.InstanceNorm2d(3, affine=affine, track_running_stats=track).to(device)
    if affine:
        with torch.no_grad():
            inorm.weight.uniform_(0.5, 1.5)
            inorm.bias.uniform_(-0.5, 0.5)
    fused = InstanceNormAct2d.from_torch(inorm, act="relu", gain=1.0)
    ref = copy.deepcopy(inorm).double()
    x = torch.randn(2, 3, 5, 4, device=device)
    _compare(fused, ref, F.relu, x, "instance norm")
    if track:
        assert_close(fused.running_mean, ref.running_mean, torch.float32, "running_mean", TOL)
        assert_close(fused.running_var, ref.running_var, torch.float32, "running_var", TOL)
    assert fused(x[0]).shape == x[0].shape  # unbatched input, as torch's


def test_penalty_through_instance_norm_and_linear_is_exact(device):
    """A critic conv -> InstanceNorm -> lrelu -> flatten -> Linear -> lrelu -> Linear, accelerated:
    the WGAN-GP penalty's parameter gradients equal torch's, via autograd.grad and .backward()."""
    D = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.InstanceNorm2d(3, affine=True),
                      nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.LeakyReLU(0.2),
                      nn.Linear(8, 1, bias=False)).to(device)  # biases the input gradient does not see: none
    ref = copy.deepcopy(D).double()
    fused, report = fastgan.accelerate(D, inplace=False, report=True)
    assert is_fused(fused[1]) and is_fused(fused[4])
    real, fake = torch.randn(3, 2, 4, 4, device=device), torch.randn(3, 2, 4, 4, device=device)
    eps = torch.rand(3, device=device)
    p64 = fastgan.functional.gradient_penalty(ref, real.double(), fake.double(), eps=eps.double())
    g64 = [torch.zeros_like(q) if g is None else g  # lrelu' is flat: the bias does not reach the input gradient
           for q, g in zip(ref.parameters(), torch.autograd.grad(p64, list(ref.parameters()), allow_unused=True))]
    p = fastgan.functional.gradient_penalty(fused, real, fake, eps=eps)
    assert_close(p, p64, torch.float32, "penalty", TOL)
    def check(a, r, what):
        if r.norm() == 0:
            assert a is None or a.abs().max() == 0, what
        else:
            assert_close(a, r, torch.float32, what, TOL)

    for a, r in zip(torch.autograd.grad(p, list(fused.parameters()), allow_unused=True), g64):
        check(a, r, "penalty grad (autograd.grad)")
    fastgan.functional.gradient_penalty(fused, real, fake, eps=eps).backward()
    for prm, r in zip(fused.parameters(), g64):
        check(prm.grad, r, "penalty grad (.backward)")
