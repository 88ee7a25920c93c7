"""fma: a * b + c with broadcasting against torch.addcmul in float64 (outputs, every gradient,
second and third order), layouts, opcheck and bad input."""
import pytest
import torch

import fastgan
from fastgan.functional.fma import fma

from .utils import assert_close, check_against_ref

# (a, b, c) shapes: StyleGAN's demodulation + noise, plain elementwise, fewer dims, scalar-like c
SHAPES = [((2, 3, 4, 5), (2, 3, 1, 1), (2, 1, 4, 5)),
          ((2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5)),
          ((3, 1, 5), (4, 1), (1,)),
          ((1, 3, 1, 1), (2, 1, 4, 5), (2, 3, 4, 5))]


@pytest.mark.parametrize("dtype,cl", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True),
                                      (torch.float16, False)], ids=["fp32", "fp32-cl", "bf16-cl", "fp16"])
@pytest.mark.parametrize("shapes", SHAPES, ids=["modconv", "same", "3d", "a_small"])
def test_matches_addcmul_with_gradients(shapes, dtype, cl, device):
    a, b, c = (torch.randn(s, device=device).to(dtype).requires_grad_() for s in shapes)
    if cl and a.dim() == 4:
        a = a.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    y = check_against_ref(fma, lambda a_, b_, c_: torch.addcmul(c_, a_, b_), [a, b, c], dtype)
    if cl and a.shape == y.shape:
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_every_order(device):
    a, b, c = (torch.randn(s, device=device, dtype=torch.float64, requires_grad=True) for s in SHAPES[0])
    assert torch.autograd.gradcheck(fma, (a, b, c), fast_mode=True)
    assert torch.autograd.gradgradcheck(fma, (a, b, c), fast_mode=True)
    outs = []
    for f in (fma, lambda a_, b_, c_: torch.addcmul(c_, a_, b_)):
        y = f(a, b, c)
        (ga,) = torch.autograd.grad((y * y).sum(), a, create_graph=True)
        (gb,) = torch.autograd.grad((ga * ga).sum(), b, create_graph=True)
        outs.append(torch.autograd.grad(gb.sum(), (a, c)))
    for ours, ref in zip(*outs):
        assert_close(ours, ref, torch.float64, "third order")


def test_fused_op_opcheck_and_eager(device):
    a, b, c = (torch.randn(s, device=device, dtype=torch.float64, requires_grad=True) for s in SHAPES[0])
    assert "Fma" in type(fma(a, b, c).grad_fn).__name__
    with fastgan.use_backend("eager"):
        assert "Fma" not in type(fma(a, b, c).grad_fn).__name__
    for args in ((a, b, c), (a, b, None)):
        result = torch.library.opcheck(torch.ops.fastgan.fma.default, args)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_bad_input(device):
    a = torch.randn(2, 3, device=device)
    for call, exc, match in [
        (lambda: fma(a, a.double(), a), TypeError, "b must have a's dtype"),
        (lambda: fma(a, a, a.to("meta")), ValueError, "c must be on"),
        (lambda: fma(a, a, 1.0), TypeError, "c must be a torch.Tensor"),
        (lambda: fma(a.long(), a, a), TypeError, "a must be a floating"),
        (lambda: fma(a, torch.randn(4, device=device), a), ValueError, "do not broadcast"),
    ]:
        with pytest.raises(exc, match=match):
            call()
