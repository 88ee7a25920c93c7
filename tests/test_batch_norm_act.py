"""BatchNormAct2d / batch_norm_act: fused training-mode kernels against nn.BatchNorm2d +
the activation reference in float64 (outputs, all gradients, running statistics)."""
import pytest
import torch
from torch import nn

import fastgan

from fastgan.functional import resolve_act
from fastgan.functional.batch_norm_act import batch_norm_act
from fastgan.nn import BatchNormAct2d

from .utils import assert_close, rel_err


def _pair(c, act, alpha=None, gain=None, clamp=None, device="cpu", momentum=0.1):
    ref = nn.BatchNorm2d(c, momentum=momentum).to(device)
    with torch.no_grad():
        ref.weight.normal_(1.0, 0.3)
        ref.bias.normal_(0.0, 0.3)
    fused = BatchNormAct2d.from_torch(ref, act=act, alpha=alpha, gain=gain, clamp=clamp)
    return ref, fused


@pytest.mark.parametrize("act", ["relu", "lrelu", "tanh"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_training_mode_matches_reference(act, layout, device):
    ref, fused = _pair(5, act, gain=1.3, device=device)
    spec = resolve_act(act, gain=1.3)
    x = torch.randn(3, 5, 7, 6, device=device) * 2 + 0.5
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    y = fused(x)
    ref64 = nn.BatchNorm2d(5).double().to(device)
    ref64.load_state_dict(ref.state_dict())
    x64 = x.detach().double().requires_grad_()
    y64 = spec.reference(ref64(x64))
    assert_close(y, y64, torch.float32, "output")
    assert y.stride() == x.stride()
    dy = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, [x, fused.weight, fused.bias], dy)
    dx64, dw64, db64 = torch.autograd.grad(y64, [x64, ref64.weight, ref64.bias], dy.double())
    assert_close(dx, dx64, torch.float32, "dx", tol=5e-5)  # dx subtracts two channel means: some cancellation
    assert_close(dw, dw64, torch.float32, "dweight")
    assert_close(db, db64, torch.float32, "dbias")
    assert_close(fused.running_mean, ref64.running_mean, torch.float32, "running_mean")
    assert_close(fused.running_var, ref64.running_var, torch.float32, "running_var")
    assert int(fused.num_batches_tracked) == 1


def test_no_channels_is_a_clear_error(device):
    for training in (True, False):
        with pytest.raises(ValueError, match="at least one channel"):
            batch_norm_act(torch.randn(2, 0, 3, 3, device=device), None, None, training=training)


@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (4, 1, 3, 3), (2, 7, 1, 3), (17, 3, 1, 1)])
def test_odd_shapes(shape, device):
    ref, fused = _pair(shape[1], "lrelu", alpha=0.1, clamp=1.5, device=device)
    spec = resolve_act("lrelu", alpha=0.1, clamp=1.5)
    x = torch.randn(*shape, device=device, requires_grad=True)
    y = fused(x)
    x64 = x.detach().double().requires_grad_()
    ref64 = nn.BatchNorm2d(shape[1]).double().to(device)
    ref64.load_state_dict(ref.state_dict())
    y64 = spec.reference(ref64(x64))
    assert_close(y, y64, torch.float32)
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx64,) = torch.autograd.grad(y64, x64, dy.double())
    assert_close(dx, dx64, torch.float32, "dx", tol=5e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_large_offset(layout, device):
    """Data at 1e4 (and up to 4e4) with unit spread: the statistics are those of float64 rounded
    once to float32, and the output is as accurate as (x - mean) * invstd * w + b with the
    float32-rounded mean can be (the floor torch's own float32 batch norm also sits on)."""
    ref64, fused = _pair(4, "linear", device=device)
    ref64.double()
    x = torch.randn(8, 4, 16, 16, device=device) + 1e4 * torch.arange(1, 5, device=device).view(1, 4, 1, 1)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    mean, var = fastgan.backend.kernels().bn_stats(x, 1)
    x64 = x.double()
    mean64, var64 = x64.mean((0, 2, 3)), x64.var((0, 2, 3), unbiased=False)
    half_ulp = (mean64.float().nextafter(torch.full_like(mean64.float(), float("inf"))) - mean64.float()).double() / 2
    assert ((mean.double() - mean64).abs() <= 1.01 * half_ulp).all(), (mean.double() - mean64, half_ulp)
    assert_close(var, var64, torch.float32, "var", tol=1e-6)
    y, y64 = fused(x), ref64(x64)
    w, b = ref64.weight.view(1, -1, 1, 1), ref64.bias.view(1, -1, 1, 1)
    floor = rel_err((x64 - mean64.float().double().view(1, -1, 1, 1)) * torch.rsqrt(var64 + 1e-5).view(1, -1, 1, 1)
                    * w + b, y64)
    assert rel_err(y, y64) <= 1.1 * floor + 1e-5, (rel_err(y, y64), floor)
    assert_close(fused.running_mean, ref64.running_mean, torch.float32, "running_mean")


def test_bfloat16_input_with_float32_parameters(device):
    ref, fused = _pair(6, "relu", gain=1.0, device=device)
    x = torch.randn(4, 6, 5, 5, device=device)
    y = fused(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert_close(y, torch.relu(ref(x.double().float())), torch.bfloat16)


def test_eval_mode_uses_running_stats_and_is_twice_differentiable(device):
    ref, fused = _pair(4, "tanh", device=device)
    for _ in range(3):
        x = torch.randn(5, 4, 3, 3, device=device)
        ref(x)
        fused(x)
    ref.eval()
    fused.eval()
    x = torch.randn(2, 4, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    ref64 = nn.BatchNorm2d(4).double().to(device).eval()
    ref64.load_state_dict(ref.state_dict())
    fused64 = fused.double()
    assert_close(fused64(x), torch.tanh(ref64(x)), torch.float64, tol=1e-6)  # running stats: float32 rounding
    assert torch.autograd.gradgradcheck(lambda x: fused64(x), (x,))


def test_gradcheck_training_mode_and_second_order_refused(device):
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x, w, b):
        return batch_norm_act(x, None, None, w, b, training=True, act="softplus")

    assert torch.autograd.gradcheck(fn, (x, w, b))
    y = fn(x, w, b)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    if g.requires_grad:
        with pytest.raises(RuntimeError):
            torch.autograd.grad(g.sum(), w)


def test_state_dict_is_batchnorm2d(device):
    ref, fused = _pair(3, "relu", device=device)
    assert list(fused.state_dict()) == list(ref.state_dict())
    back = nn.BatchNorm2d(3).to(device)
    back.load_state_dict(fused.state_dict())
    assert isinstance(fused, nn.BatchNorm2d)


def test_bad_input(device):
    m = BatchNormAct2d(3).to(device)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(torch.randn(1, 3, 1, 1, device=device))
    with pytest.raises(ValueError, match="4-d"):
        m(torch.randn(2, 3, 4, device=device))
    with pytest.raises(ValueError, match="weight must have shape"):
        batch_norm_act(torch.randn(2, 4, 3, 3, device=device), None, None, m.weight, None, training=True)
    with pytest.raises(ValueError, match="act"):
        BatchNormAct2d(3, act="gelu")
