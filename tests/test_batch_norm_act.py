"""BatchNormAct2d / batch_norm_act: fused training-mode kernels against nn.BatchNorm2d +
the activation reference in float64 (outputs, all gradients, running statistics)."""
import copy

import pytest
import torch
import torch.nn.functional as F
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


@pytest.mark.parametrize("momentum", [0.3, None])
def test_running_statistics_follow_torch_over_steps(momentum, device):
    """The statistics kernel's launch updates running_mean/var and num_batches_tracked in place:
    over three training steps (momentum, or torch's cumulative average with momentum=None) and
    with more channels than one finalize program covers, as nn.BatchNorm2d does in float64."""
    c = 70
    ref = nn.BatchNorm2d(c, momentum=momentum).double().to(device)
    fused = BatchNormAct2d.from_torch(nn.BatchNorm2d(c, momentum=momentum).to(device), act="linear", gain=1.0)
    for step in range(3):
        x = torch.randn(2, c, 3, 3, device=device) * (step + 1) + step
        fused(x)
        ref(x.double())
        assert_close(fused.running_mean, ref.running_mean, torch.float32, f"running_mean, step {step}")
        assert_close(fused.running_var, ref.running_var, torch.float32, f"running_var, step {step}")
        assert int(fused.num_batches_tracked) == step + 1
    fused.eval()
    x = torch.randn(2, c, 3, 3, device=device)
    ref.eval()
    assert_close(fused(x), ref(x.double()), torch.float32, "eval output")
    assert int(fused.num_batches_tracked) == 3


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_many_tiles_per_channel(layout, device, monkeypatch):
    """Small tiles: each channel's statistics merge 64-128 tile partials in several chunks of the
    per-channel pass (Chan's formula across chunks), and the backward sums span chunks too."""
    if fastgan.backend_for(torch.empty(1, device=device)) == "eager":
        pytest.skip("eager backend runs no kernel")
    ba = __import__("fastgan.kernels.bias_act", fromlist=["x"])
    monkeypatch.setattr(ba, "TILE_ELEMENTS", 16 if ba.is_interpreted() else 256)
    c = 32
    assert ba.reduce_blocks(c, 64)[1] == 16  # 64-128 partials per channel: several chunks
    x = torch.randn(64, c, 4, 4, device=device) * 3 + torch.linspace(-5, 5, c, device=device).view(1, c, 1, 1)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w, b = torch.rand(c, device=device) + 0.5, torch.randn(c, device=device)
    stats = fastgan.backend.kernels().bn_stats(x, 1, w, 1e-5)
    x64 = x.double()
    var64 = x64.var((0, 2, 3), unbiased=False)
    for row, ref in zip(stats, (x64.mean((0, 2, 3)), var64, w.double() * torch.rsqrt(var64 + 1e-5),
                                x64.var((0, 2, 3), unbiased=True))):
        assert_close(row, ref, torch.float32, "stats")
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    y = batch_norm_act(xs, None, None, ws, bs, training=True, act="lrelu")
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr = resolve_act("lrelu").reference(F.batch_norm(xr, None, None, wr, br, True))
    assert_close(y, yr, torch.float32, "y")
    dy = torch.randn_like(y)
    for name, got, ref in zip(("dx", "dw", "db"), torch.autograd.grad(y, [xs, ws, bs], dy),
                              torch.autograd.grad(yr, [xr, wr, br], dy.double())):
        assert_close(got, ref, torch.float32, name, tol=5e-5)


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
    mean, var = fastgan.backend.kernels().bn_stats(x, 1)[:2]
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


def test_gradcheck_and_gradgradcheck_training_mode(device):
    """Training mode is differentiable twice (a penalty through a batch-normalised critic is exact),
    the batch statistics' dependence on x included; a third order raises."""
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x, w, b):
        return batch_norm_act(x, None, None, w, b, training=True, act="softplus")

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)
    y = fn(x, w, b)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second order"):  # create_graph on the second order: a third
        torch.autograd.grad(g.square().sum(), x, create_graph=True)


@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_penalty_through_training_batch_norm_matches_torch(act, device):
    """A penalty through conv + training-mode batch norm + act: the parameter gradients of the fused
    batch norm equal torch's (float64 reference), with autograd.grad and with .backward()."""
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).to(device)  # a bias before batch norm has no effect
    bn = nn.BatchNorm2d(3).to(device)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    fused = BatchNormAct2d.from_torch(bn, act=act, alpha=0.2 if act == "lrelu" else None, gain=1.0)
    torch_act = (lambda t: F.leaky_relu(t, 0.2)) if act == "lrelu" else torch.tanh
    conv64, bn64 = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    x = torch.randn(4, 2, 5, 5, device=device)

    def penalty(conv, layer, x):
        xr = x.clone().requires_grad_(True)
        out = layer(conv(xr)).square().mean(dim=(1, 2, 3))
        (g,) = torch.autograd.grad(out.sum(), xr, create_graph=True)
        return g.square().sum()

    names = ("conv.weight", "bn.weight", "bn.bias")
    ref = torch.autograd.grad(penalty(conv64, lambda t: torch_act(bn64(t)), x.double()),
                              [conv64.weight, bn64.weight, bn64.bias])
    params = [conv.weight, fused.weight, fused.bias]
    got = torch.autograd.grad(penalty(conv, fused, x), params)
    for a, r, name in zip(got, ref, names):
        assert_close(a, r, torch.float32, f"autograd.grad {name}", tol=5e-5)
    penalty(conv, fused, x).backward()
    for p, r, name in zip(params, ref, names):
        assert_close(p.grad, r, torch.float32, f".backward() {name}", tol=5e-5)


_CONV_CASES = {  # name: (transposed, stride, groups, conv bias, channels_last, input [N, C, H, W])
    "conv": (False, 1, 1, False, False, (2, 4, 34, 34)),        # 2312 output pixels: 3 row tiles
    "conv_grouped_bias": (False, 2, 2, True, False, (3, 4, 40, 40)),
    "transposed": (True, 2, 1, False, False, (2, 4, 17, 17)),    # 4 phases of 289 pixels each
    "transposed_channels_last": (True, 2, 2, True, True, (2, 4, 16, 17)),
}


@pytest.mark.parametrize("case", sorted(_CONV_CASES))
def test_conv_epilogue_statistics(case, device):
    """conv2d_act(..., bn_partials=True) computes the batch statistics' partials in the conv's
    epilogue; batch_norm_act then merges them (no statistics pass: counted) and matches
    conv + nn.BatchNorm2d + act in float64: output, running statistics, counter, every first
    derivative and a penalty's second derivative."""
    if fastgan.backend_for(torch.empty(1, device=device)) == "eager":
        pytest.skip("eager backend runs no kernel")
    from fastgan.benchmarks.launches import count_launches
    from fastgan.functional import conv2d_act, conv_transpose2d_act
    from collections import Counter
    transposed, stride, groups, has_bias, cl, shape = _CONV_CASES[case]
    cout = 6
    x = torch.randn(*shape, dtype=torch.float64, device=device)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w_shape = (shape[1], cout // groups, 4, 4) if transposed else (cout, shape[1] // groups, 3, 3)
    w = torch.randn(w_shape, dtype=torch.float64, device=device, requires_grad=True)
    cb = torch.randn(cout, dtype=torch.float64, device=device, requires_grad=True) if has_bias else None
    bn_w = (torch.rand(cout, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    bn_b = torch.randn(cout, dtype=torch.float64, device=device, requires_grad=True)
    rm, rv = torch.zeros(cout, dtype=torch.float64, device=device), torch.ones(cout, dtype=torch.float64, device=device)
    nbt = torch.zeros((), dtype=torch.long, device=device)
    ref = nn.BatchNorm2d(cout, momentum=0.2).double().to(device)

    def conv(fn_x, fused, **kw):
        if transposed:
            f = conv_transpose2d_act if fused else F.conv_transpose2d
            return f(fn_x, w, cb, stride, 1, 0, groups, **kw)
        f = conv2d_act if fused else F.conv2d
        return f(fn_x, w, cb, stride, 1, 1, groups, **kw)

    counts = Counter()
    with count_launches(counts):
        y = conv(x, True, bn_partials=True)
        out = batch_norm_act(y, rm, rv, bn_w, bn_b, True, 0.2, 1e-5, act="lrelu", gain=1.0, num_batches_tracked=nbt)
    assert counts["triton._bn_stats_kernel"] == 0 and counts["triton._bn_finalize_kernel"] == 1, dict(counts)
    want = F.leaky_relu(F.batch_norm(conv(x, False), ref.running_mean, ref.running_var, bn_w, bn_b, True, 0.2, 1e-5),
                        0.2)
    assert_close(out, want, torch.float64, "output")
    assert_close(rm, ref.running_mean, torch.float64, "running_mean")
    assert_close(rv, ref.running_var, torch.float64, "running_var")
    assert int(nbt) == 1
    params = [t for t in (x, w, cb, bn_w, bn_b) if t is not None]
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, params, g, create_graph=True)
    exp = torch.autograd.grad(want, params, g, create_graph=True)
    names = ("x", "w") + (("conv bias",) if cb is not None else ()) + ("bn weight", "bn bias")
    for name, a, b in zip(names, got, exp):
        if name == "conv bias":  # the batch norm removes a per-channel shift: 0 up to rounding
            assert a.abs().max() < 1e-10 * got[1].abs().max() and b.abs().max() < 1e-10 * exp[1].abs().max()
        else:
            assert_close(a, b, torch.float64, f"d{name}")
    (pw,) = torch.autograd.grad(got[0].square().sum(), [w])  # a gradient penalty's derivative
    (ew,) = torch.autograd.grad(exp[0].square().sum(), [w])
    assert_close(pw, ew, torch.float64, "penalty dw")


def test_conv_epilogue_statistics_not_used_after_an_in_place_change(device):
    """Partials describe the conv output as written: after an in-place change the batch norm
    computes its own statistics (and matches torch on the changed tensor)."""
    if fastgan.backend_for(torch.empty(1, device=device)) == "eager":
        pytest.skip("eager backend runs no kernel")
    from fastgan.functional import conv2d_act
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, device=device)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    y = conv2d_act(x, w, None, 1, 1, bn_partials=True)
    y.mul_(3.0).add_(1.0)
    out = batch_norm_act(y, None, None, None, None, True, act="linear", gain=1.0)
    assert_close(out, F.batch_norm(y, None, None, None, None, True), torch.float64, "output")


@pytest.mark.parametrize("case", ["conv_tiles_per_image", "transposed", "no_dividing_tile"])
def test_conv_epilogue_instance_statistics(case, device):
    """conv2d_act(..., bn_partials="instance"): the epilogue's tiles stay within one image and
    write per-(image, channel) partials; instance_norm_act merges them (no statistics pass,
    counted) and matches conv + F.instance_norm + act in float64, first and second order. An
    image whose pixels no tile of 16 rows or more divides falls back to the statistics pass."""
    if fastgan.backend_for(torch.empty(1, device=device)) == "eager":
        pytest.skip("eager backend runs no kernel")
    from collections import Counter
    from fastgan.benchmarks.launches import count_launches
    from fastgan.functional import conv2d_act, conv_transpose2d_act
    from fastgan.functional.batch_norm_act import instance_norm_act
    transposed = case == "transposed"
    side = {"conv_tiles_per_image": 48, "transposed": 16, "no_dividing_tile": 7}[case]  # 48^2 = 9 tiles of 256
    x = torch.randn(2, 3, side, side, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn((3, 4, 4, 4) if transposed else (4, 3, 3, 3), dtype=torch.float64, device=device,
                    requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    iw = (torch.rand(4, dtype=torch.float64, device=device) + 0.5).requires_grad_()

    def conv(inp, fused, **kw):
        if transposed:
            return (conv_transpose2d_act if fused else F.conv_transpose2d)(inp, w, b, 2, 1, **kw)
        return (conv2d_act if fused else F.conv2d)(inp, w, b, 1, 1, **kw)

    counts = Counter()
    with count_launches(counts):
        out = instance_norm_act(conv(x, True, bn_partials="instance"), weight=iw, act="lrelu", gain=1.0)
    fused_stats = case != "no_dividing_tile"
    assert counts["triton._bn_stats_kernel"] == (0 if fused_stats else 1), dict(counts)
    want = F.leaky_relu(F.instance_norm(conv(x, False), weight=iw), 0.2)
    assert_close(out, want, torch.float64, "output")
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, w, iw], g, create_graph=True)
    exp = torch.autograd.grad(want, [x, w, iw], g, create_graph=True)
    for name, a, e in zip(("x", "w", "weight"), got, exp):
        assert_close(a, e, torch.float64, f"d{name}")
    (pw,) = torch.autograd.grad(got[0].square().sum(), [w])
    (ew,) = torch.autograd.grad(exp[0].square().sum(), [w])
    assert_close(pw, ew, torch.float64, "penalty dw")
