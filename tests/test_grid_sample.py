"""grid_sample (bilinear, zeros, align_corners=False): the reference against torch's, the kernels
against the reference (outputs, input and grid gradients), second order between input and output
(an R1 penalty through the sampling), the refused orders, opcheck and bad input."""
import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.functional.grid_sample import _grid_sample_ref, grid_sample

from .utils import assert_close, check_against_ref


def _grid(n, ho, wo, device, spread=1.3):
    """Sampling positions partly outside [-1, 1] (zero padding) and off the pixel lattice."""
    return (torch.rand(n, ho, wo, 2, device=device) * 2 - 1) * spread


def _torch(input, grid):
    return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_reference_is_torchs_grid_sample(device):
    x = torch.randn(2, 3, 5, 6, device=device, dtype=torch.float64, requires_grad=True)
    g = _grid(2, 4, 7, device).double().requires_grad_()
    check_against_ref(_grid_sample_ref, _torch, [x, g], torch.float64)


@pytest.mark.parametrize("dtype,cl", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True),
                                      (torch.float16, False), (torch.float64, False)],
                         ids=["fp32", "fp32-cl", "bf16-cl", "fp16", "fp64"])
def test_matches_reference_with_gradients(dtype, cl, device):
    x = torch.randn(2, 3, 5, 7, device=device).to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    g = _grid(2, 6, 3, device).to(dtype)
    y = check_against_ref(grid_sample, _grid_sample_ref, [x.requires_grad_(), g.requires_grad_()], dtype)
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def test_strided_input_and_grid(device):
    x = torch.randn(1, 4, 6, 10, device=device)[:, ::2, :, ::2].requires_grad_()
    g = _grid(1, 3, 8, device)[:, :, ::2].requires_grad_()
    assert not x.is_contiguous() and not g.is_contiguous()
    check_against_ref(grid_sample, _grid_sample_ref, [x, g], torch.float32)


def test_second_order_between_input_and_output(device):
    """gradgradcheck with respect to the input, and an R1 penalty through the sampling whose
    parameter gradient matches the reference's."""
    grid = _grid(1, 4, 3, device).double()
    x = torch.randn(1, 2, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x_: grid_sample(x_, grid), (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda x_: grid_sample(x_, grid), (x,), fast_mode=True)
    w = torch.randn(2, 4, 3, device=device, dtype=torch.float64, requires_grad=True)
    grads = []
    for sample in (grid_sample, _grid_sample_ref):
        y = sample(x, grid)
        logits = (torch.tanh(y * w)).sum()
        (gx,) = torch.autograd.grad(logits, x, create_graph=True)
        grads.append(torch.autograd.grad(gx.square().sum(), w)[0])
    assert_close(grads[0], grads[1], torch.float64, "R1 parameter gradient")


def test_refused_orders_raise(device):
    x = torch.randn(1, 2, 3, 4, device=device, requires_grad=True)
    grid = _grid(1, 2, 2, device).requires_grad_()
    y = grid_sample(x, grid)
    gx, gg = torch.autograd.grad(y.square().sum(), (x, grid), create_graph=True)
    with pytest.raises(RuntimeError, match="with respect to the grid"):
        torch.autograd.grad(gx.sum(), grid)
    y = grid_sample(x, grid)
    gx, gg = torch.autograd.grad(y.square().sum(), (x, grid), create_graph=True)
    with pytest.raises(RuntimeError, match="through the grid gradient"):
        torch.autograd.grad(gg.sum(), x)


def test_fused_opcheck_and_eager(device):
    x = torch.randn(1, 2, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    grid = _grid(1, 2, 3, device).double().requires_grad_()
    assert "GridSample" in type(grid_sample(x, grid).grad_fn).__name__
    with fastgan.use_backend("eager"):
        assert "GridSample" not in type(grid_sample(x, grid).grad_fn).__name__
    for op, args in ((torch.ops.fastgan.grid_sample.default, (x, grid)),
                     (torch.ops.fastgan.grid_sample_backward.default,
                      (torch.randn(1, 2, 2, 3, device=device, dtype=torch.float64), x.detach(), grid.detach(), True,
                       True))):
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_bad_input(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    g = _grid(2, 3, 3, device)
    for call, exc, match in [
        (lambda: grid_sample(x, g[:1]), ValueError, r"grid must be \[N, H_out, W_out, 2\] with N = input.shape\[0\]"),
        (lambda: grid_sample(x, torch.zeros(2, 3, 3, 3, device=device)), ValueError, "grid must be"),
        (lambda: grid_sample(x, g[..., 0]), ValueError, "grid must be"),
        (lambda: grid_sample(x, g.double()), TypeError, "grid must have input's dtype"),
        (lambda: grid_sample(x[0], g), ValueError, "input must be 4-d"),
        (lambda: grid_sample(x.long(), g), TypeError, "input must be a floating"),
        (lambda: grid_sample(x, g.to("meta")), ValueError, "grid must be on"),
    ]:
        with pytest.raises(exc, match=match):
            call()
