"""conv2d_act / conv_transpose2d_act: kernels, autograd (1st and 2nd order), dispatcher, modules.

On the CPU every Triton kernel runs in the interpreter (conftest), so shapes are tiny.
Reference: F.conv2d / F.conv_transpose2d without bias + the bias_act reference, computed
with autograd on float64 copies of the same inputs.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan import backend
from fastgan.backend import conv_dispatch
from fastgan.functional import conv2d_act, conv_transpose2d_act, resolve_act
from fastgan.functional.conv import _act_from_y
from fastgan.functional.gradfix import no_weight_gradients
from fastgan.nn import Conv2dAct, ConvTranspose2dAct

from .utils import TOL, TOL_TF32, assert_close, compile_for_sm90, poison_, rel_err


def _tol(dtype, device):
    if dtype == torch.float32 and device == "cuda" and torch.backends.cudnn.allow_tf32:
        return TOL_TF32
    return TOL[dtype]


# (name, Cin, Cout, k, stride, padding, dilation, groups, N, H, W, act kwargs)
CONV_CASES = [
    ("k1", 3, 4, 1, 1, 0, 1, 1, 1, 5, 7, dict(act="lrelu")),
    ("k3s1p1", 3, 8, 3, 1, 1, 1, 1, 2, 7, 6, dict(act="tanh")),
    ("k4s2p1", 3, 4, 4, 2, 1, 1, 1, 1, 9, 8, dict(act="lrelu", alpha=0.1, gain=1.0)),
    ("k5s2p2_c1", 1, 3, 5, 2, 2, 1, 1, 2, 9, 9, dict(act="softplus")),
    ("k3d2g2", 4, 6, 3, 1, 2, 2, 2, 1, 7, 9, dict(act="sigmoid", clamp=0.7)),
    ("k3s2g3", 6, 3, 3, 2, 0, 1, 3, 1, 8, 7, dict(act="relu")),
    ("k4s1p0", 2, 2, 4, 1, 0, 1, 1, 2, 5, 5, dict(act="swish")),
    ("dw3", 4, 4, 3, 1, 1, 1, 4, 1, 6, 5, dict(act="linear", gain=0.5, clamp=1.0)),
]

# (name, Cin, Cout, k, stride, padding, output_padding, dilation, groups, N, H, W, act kwargs)
TCONV_CASES = [
    ("k4s2p1", 3, 4, 4, 2, 1, 0, 1, 1, 1, 5, 4, dict(act="relu")),
    ("k3s2p1op1", 3, 3, 3, 2, 1, 1, 1, 1, 1, 4, 5, dict(act="tanh")),
    ("k1_c1", 1, 3, 1, 1, 0, 0, 1, 1, 2, 5, 5, dict(act="lrelu")),
    ("k5s2p2op1g2", 4, 6, 5, 2, 2, 1, 1, 2, 2, 3, 4, dict(act="elu")),
    ("k3d2", 2, 4, 3, 1, 1, 0, 2, 1, 1, 5, 6, dict(act="lrelu", clamp=0.5)),
    ("k4s2g3", 3, 3, 4, 2, 0, 0, 1, 3, 1, 3, 3, dict(act="selu")),
    ("k3s3op2", 2, 2, 3, 3, 1, 2, 1, 1, 1, 3, 4, dict(act="swish")),
    ("k1s2op1", 3, 2, 1, 2, 0, 1, 1, 1, 1, 4, 3, dict(act="sigmoid")),  # phases with no taps
    ("op_lt_dil", 2, 3, 3, 1, 0, 1, 2, 1, 1, 4, 4, dict(act="linear")),  # output_padding >= stride
]

# (impl, dtype, layout): the forced dispatcher path, dtype and the layout of x
VARIANTS = [
    ("triton", torch.float32, "nchw"),
    ("triton", torch.float32, "cl"),
    ("triton", torch.bfloat16, "cl"),
    ("triton", torch.float16, "nchw"),
    ("vendor", torch.float32, "cl"),
]


def _layout(t, layout):
    if layout == "cl":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view
        big = torch.cat([t, t], dim=3)
        return big[:, :, :, ::2]
    return t.contiguous()


def _inputs(cin, w0, w1, k, n, h, w, dtype, device, layout):
    """x [n, cin, h, w] in ``layout`` and a weight [w0, w1, k, k] scaled to unit output variance."""
    x = torch.randn(n, cin, h, w, device=device).to(dtype)
    wt = (torch.randn(w0, w1, k, k, device=device) / math.sqrt(w1 * k * k)).to(dtype)
    return _layout(x, layout), wt


def _check_fwd_bwd(fn, conv_ref, spec, x, w, b, dtype, device, impl):
    """Forward and the x, w, b gradients of fn against the reference on float64 copies.

    For half dtypes the backward evaluates act' at a rounded value: near a kink (lrelu at 0, a
    clamp boundary) rounding legitimately flips the slope of an element. The gradient reference
    therefore rounds, with a straight-through estimator, what the implementation keeps: the
    conv output z (the bias added after rounding), or for relu / lrelu without clamp on the fused
    path, which read act' from the output y, the whole pre-activation z + b (as eager torch,
    whose conv adds the bias before rounding).
    """
    tol = _tol(dtype, device)
    xs, ws, bs = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    y = fn(xs, ws, bs)
    xr, wr, br = (t.detach().to(torch.float64).requires_grad_(True) for t in (x, w, b))
    zr = conv_ref(xr, wr)
    yr = spec.reference(zr + br.view(1, -1, 1, 1))
    assert y.dtype == dtype and y.shape == yr.shape
    assert_close(y, yr, dtype, "y", tol)
    if dtype in (torch.float16, torch.bfloat16):
        def rounded(t):
            return t + (t.detach().to(dtype).to(torch.float64) - t.detach())
        from_y = impl == "triton" and _act_from_y(spec)
        pre = rounded(zr + br.view(1, -1, 1, 1)) if from_y else rounded(zr) + br.view(1, -1, 1, 1)
        yr = spec.reference(pre)
    g = torch.randn_like(yr)
    y.backward(g.to(dtype))
    yr.backward(g)
    for name, t, r in (("dx", xs, xr), ("dw", ws, wr), ("db", bs, br)):
        assert_close(t.grad, r.grad, dtype, name, tol)
    return y


@pytest.mark.parametrize("impl,dtype,layout", VARIANTS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c[0])
def test_conv2d_act_matches_reference(case, impl, dtype, layout, device, monkeypatch):
    monkeypatch.setenv("FASTGAN_CONV", impl)
    _, cin, cout, k, s, p, d, g, n, h, w, akw = case
    x, wt = _inputs(cin, cout, cin // g, k, n, h, w, dtype, device, layout)
    b = torch.randn(cout, device=device).to(dtype)
    spec = resolve_act(**akw)
    y = _check_fwd_bwd(lambda x_, w_, b_: conv2d_act(x_, w_, b_, s, p, d, g, **akw),
                       lambda x_, w_: F.conv2d(x_, w_, None, s, p, d, g), spec, x, wt, b, dtype, device, impl)
    ref_layout = F.conv2d(x.detach(), wt, None, s, p, d, g)
    assert y.is_contiguous(memory_format=torch.channels_last) == ref_layout.is_contiguous(
        memory_format=torch.channels_last)


@pytest.mark.parametrize("impl,dtype,layout", VARIANTS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("case", TCONV_CASES, ids=lambda c: c[0])
def test_conv_transpose2d_act_matches_reference(case, impl, dtype, layout, device, monkeypatch):
    monkeypatch.setenv("FASTGAN_CONV", impl)
    _, cin, cout, k, s, p, op, d, g, n, h, w, akw = case
    x, wt = _inputs(cin, cin, cout // g, k, n, h, w, dtype, device, layout)
    b = torch.randn(cout, device=device).to(dtype)
    spec = resolve_act(**akw)
    _check_fwd_bwd(lambda x_, w_, b_: conv_transpose2d_act(x_, w_, b_, s, p, op, g, d, **akw),
                   lambda x_, w_: F.conv_transpose2d(x_, w_, None, s, p, op, g, d), spec, x, wt, b, dtype,
                   device, impl)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
def test_no_bias_strided_input_and_unbatched(transposed, device, monkeypatch):
    monkeypatch.setenv("FASTGAN_CONV", "triton")
    x = _layout(torch.randn(2, 3, 6, 5, device=device), "strided")
    assert not x.is_contiguous()
    if transposed:
        w = torch.randn(3, 4, 3, 3, device=device)
        op, conv = conv_transpose2d_act, lambda x_, w_: F.conv_transpose2d(x_, w_, None, 2, 1, 1)
        args = (2, 1, 1)
    else:
        w = torch.randn(4, 3, 3, 3, device=device)
        op, conv = conv2d_act, lambda x_, w_: F.conv2d(x_, w_, None, 1, 1)
        args = (1, 1)
    tol = _tol(torch.float32, device)
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    xr, wr = x.double().requires_grad_(True), w.double().requires_grad_(True)
    y = op(xs, ws, None, *args, act="lrelu")
    yr = F.leaky_relu(conv(xr, wr), 0.2) * math.sqrt(2)
    assert_close(y, yr, torch.float32, "y", tol)
    g = torch.randn_like(yr)
    y.backward(g.float())
    yr.backward(g)
    assert_close(xs.grad, xr.grad, torch.float32, "dx", tol)
    assert_close(ws.grad, wr.grad, torch.float32, "dw", tol)
    # an unbatched [C, H, W] input gives an unbatched output
    y1 = op(x[0], w, None, *args, act="lrelu")
    assert y1.shape == yr.shape[1:]
    assert_close(y1, yr[0], torch.float32, "unbatched y", tol)


# ----------------------------------------------------------------------------- every element written

@pytest.mark.parametrize("tap_loop", [False, True], ids=["flat", "taploop"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_kernels_write_every_element(layout, tap_loop, device):
    kernels = backend.kernels()
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    spec = resolve_act("tanh")
    # conv: odd sizes, groups, stride
    x = _layout(torch.randn(2, 4, 7, 9, device=device), layout)
    w = torch.randn(6, 2, 3, 3, device=device)
    b = torch.randn(6, device=device)
    zr = F.conv2d(x.double(), w.double(), None, 2, 1, 1, 2)
    y = poison_(torch.empty(zr.shape, device=device, memory_format=fmt))
    z = poison_(torch.empty(zr.shape, device=device, memory_format=fmt))
    kernels.conv2d_act_fwd(x, w, b, 2, 1, 1, 2, "tanh", 0.0, 1.0, None, store_z=True, y=y, z=z,
                           tap_loop=tap_loop)
    assert_close(z, zr, torch.float32, "z", _tol(torch.float32, device))
    assert_close(y, spec.reference(zr + b.double().view(1, -1, 1, 1)), torch.float32, "y",
                 _tol(torch.float32, device))
    # transposed: stride 3 with a 1x1 kernel leaves phases without any tap (y = act(b) there)
    for k, s, p, op in ((1, 3, 0, 2), (4, 2, 1, 1)):
        x = _layout(torch.randn(1, 4, 3, 5, device=device), layout)
        w = torch.randn(4, 3, k, k, device=device)
        b = torch.randn(6, device=device)
        zr = F.conv_transpose2d(x.double(), w.double(), None, s, p, op, 2)
        y = poison_(torch.empty(zr.shape, device=device, memory_format=fmt))
        z = poison_(torch.empty(zr.shape, device=device, memory_format=fmt))
        kernels.conv_transpose2d_act_fwd(x, w, b, s, p, op, 2, 1, "tanh", 0.0, 1.0, None, store_z=True,
                                         y=y, z=z, tap_loop=tap_loop)
        assert_close(z, zr, torch.float32, f"z k{k}s{s}", _tol(torch.float32, device))
        assert_close(y, spec.reference(zr + b.double().view(1, -1, 1, 1)), torch.float32, f"y k{k}s{s}",
                     _tol(torch.float32, device))


@pytest.mark.parametrize("tap_loop", [False, True], ids=["flat", "taploop"])
def test_kernels_many_k_chunks(tap_loop, device):
    """Cin/groups above the largest BLOCK_K: several K steps per tap (and per flattened range)."""
    kernels = backend.kernels()
    x = _layout(torch.randn(1, 130, 4, 3, device=device), "cl")
    w = torch.randn(5, 130, 2, 2, device=device) / 20
    y, _ = kernels.conv2d_act_fwd(x, w, None, 1, 1, 1, 1, "linear", 0.0, 1.0, None, tap_loop=tap_loop)
    assert_close(y, F.conv2d(x.double(), w.double(), None, 1, 1), torch.float32, "conv y",
                 _tol(torch.float32, device))
    wt = torch.randn(130, 3, 3, 3, device=device) / 20
    y, _ = kernels.conv_transpose2d_act_fwd(x, wt, None, 2, 1, 1, 1, 1, "linear", 0.0, 1.0, None,
                                            tap_loop=tap_loop)
    assert_close(y, F.conv_transpose2d(x.double(), wt.double(), None, 2, 1, 1), torch.float32, "tconv y",
                 _tol(torch.float32, device))


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
def test_channels_last_weight(transposed, device):
    """A channels_last weight (what the GPU launcher reads) gives channels_last output, as torch."""
    x = torch.randn(1, 4, 5, 6, device=device)
    if transposed:
        w = torch.randn(4, 3, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
        y = conv_transpose2d_act(x, w, None, 2, 1, 1, act="tanh")
        ref = torch.tanh(F.conv_transpose2d(x.double(), w.double(), None, 2, 1, 1))
        fmt_ref = F.conv_transpose2d(x, w, None, 2, 1, 1)
    else:
        w = torch.randn(6, 4, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
        y = conv2d_act(x, w, None, 1, 1, act="tanh")
        ref = torch.tanh(F.conv2d(x.double(), w.double(), None, 1, 1))
        fmt_ref = F.conv2d(x, w, None, 1, 1)
    assert_close(y, ref, torch.float32, "y", _tol(torch.float32, device))
    assert y.stride() == fmt_ref.stride()


_COMPILE_CHECK = r"""
import importlib, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
kernel = importlib.import_module("fastgan.kernels.conv")._conv_act_kernel
names = kernel.arg_names
variants = [  # (dtype, transposed, tap_loop, act id, specialise the 1-valued ints, split-K, batch-norm partials)
    ("bf16", False, True, 2, False, 1, False), ("bf16", True, False, 3, False, 1, False),
    ("fp32", True, True, 2, True, 1, False), ("fp16", False, False, 2, True, 1, False),
    ("fp64", True, False, 3, False, 1, False), ("fp32", False, False, 8, False, 1, False),
    ("bf16", False, False, 0, False, 8, False), ("bf16", False, True, 0, False, 1, True),
    ("fp32", True, False, 0, False, 1, True)]
for dt, transposed, tap, act, ones, split, bn in variants:
    consts = dict(TRANSPOSED=transposed, TAP_LOOP=tap, ACT=act, HAS_BIAS=True, HAS_CLAMP=not bn,
                  STORE_Z=not bn, IS_F64=dt == "fp64", TF32=dt != "fp64", ROUND_TF32=dt == "fp32", UPCAST=False,
                  RTNE_BF16=False, SPLIT_K=split, BN_STATS=bn,
                  BLOCK_M=32 if dt == "fp64" else 128, BLOCK_N=16 if dt == "fp64" else 64,
                  BLOCK_K=16 if dt == "fp64" else 32)
    if ones:  # what the JIT does with integer arguments equal to 1
        consts.update(STR_H=1, STR_W=1, DIL_H=1, DIL_W=1, STEP_H=1, STEP_W=1, KH=1, KW=1, CIG=1, sx_w=1)
    acc = "fp64" if dt == "fp64" else "fp32"
    sig = {n: "constexpr" if n in consts else ("*" + acc) if n in ("p_ptr", "cnt_ptr", "mean_ptr", "m2_ptr")
           else ("*" + dt) if n.endswith("_ptr") else
           "fp32" if n in ("alpha", "gain", "clamp", "alpha_lo", "gain_lo", "clamp_lo") else "i32" for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 3})
epi = importlib.import_module("fastgan.kernels.conv")._split_k_epilogue_kernel
consts = dict(SPLIT_K=8, ACT=2, HAS_BIAS=True, HAS_CLAMP=False, STORE_Z=True, IS_F64=False, RTNE_BF16=False, BLOCK=1024)
sig = {n: "constexpr" if n in consts else "*fp32" if n == "p_ptr" else "*bf16" if n.endswith("_ptr") else
       "fp32" if n in ("alpha", "gain", "clamp", "alpha_lo", "gain_lo", "clamp_lo") else "i32" for n in epi.arg_names}
triton.compile(ASTSource(fn=epi, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
               options={"num_warps": 4})
print("compiled", len(variants) + 1)
"""


def test_kernel_compiles_for_gpu(tmp_path):
    """The interpreter does not check what only compilation checks (loop-carried types, dot
    shapes and dtypes): compile the kernel for sm_90 in a fresh process without a GPU."""
    assert "compiled" in compile_for_sm90(_COMPILE_CHECK, tmp_path)


# ----------------------------------------------------------------------------- gradcheck / gradgradcheck

@pytest.mark.parametrize("act", ["lrelu", "tanh"])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
def test_gradcheck_gradgradcheck(transposed, act, device, monkeypatch):
    monkeypatch.setenv("FASTGAN_CONV", "triton")
    opts = dict(device=device, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 2, 5, 5, **opts)
    if transposed:
        w = torch.randn(2, 2, 3, 3, **opts)
        fn = lambda x_, w_, b_: conv_transpose2d_act(x_, w_, b_, 2, 1, 1, act=act)  # noqa: E731
    else:
        w = torch.randn(2, 2, 3, 3, **opts)
        fn = lambda x_, w_, b_: conv2d_act(x_, w_, b_, 2, 1, act=act)  # noqa: E731
    b = torch.randn(2, **opts)
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


def test_gradgradcheck_full_tiny(device, monkeypatch):
    """One full (not fast-mode) gradgradcheck: every entry of the 2nd-order Jacobian, tanh."""
    monkeypatch.setenv("FASTGAN_CONV", "triton")
    opts = dict(device=device, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 1, 3, 3, **opts)
    w = torch.randn(2, 1, 2, 2, **opts)
    b = torch.randn(2, **opts)
    fn = lambda x_, w_, b_: conv2d_act(x_, w_, b_, 1, 0, act="tanh")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


# ----------------------------------------------------------------------------- R1 penalty through a stack

def _stacks(act, device):
    torch.manual_seed(0)
    gain = math.sqrt(2) if act == "lrelu" else 1.0
    cfg = [(3, 4, 4, 2, 1), (4, 4, 3, 1, 1), (4, 2, 3, 2, 0)]
    ref = [nn.Conv2d(ci, co, k, s, p).to(device, torch.float64) for ci, co, k, s, p in cfg]
    ours = [Conv2dAct.from_torch(m, act=act) for m in ref[:-1]] + [Conv2dAct.from_torch(ref[-1])]

    def ref_fwd(x):
        for m in ref[:-1]:
            x = m(x)
            x = F.leaky_relu(x, 0.2) * gain if act == "lrelu" else torch.tanh(x)
        return ref[-1](x)

    def our_fwd(x):
        for m in ours:
            x = m(x)
        return x
    return ref, ours, ref_fwd, our_fwd


@pytest.mark.parametrize("impl", ["triton", "vendor"])
@pytest.mark.parametrize("skip_w", [False, True], ids=["plain", "no_weight_gradients"])
@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_r1_penalty_stack(act, skip_w, impl, device, monkeypatch):
    """R1-style penalty: grad of D(x) w.r.t. x (create_graph), then its norm's gradient w.r.t.
    every parameter, against the same stack built from nn.Conv2d + torch activations."""
    monkeypatch.setenv("FASTGAN_CONV", impl)
    ref, ours, ref_fwd, our_fwd = _stacks(act, device)
    x0 = torch.randn(2, 3, 9, 9, device=device, dtype=torch.float64)
    grads = []
    for fwd, mods, nwg in ((ref_fwd, ref, False), (our_fwd, ours, skip_w)):
        x = x0.clone().requires_grad_(True)
        out = fwd(x)
        with no_weight_gradients(nwg):
            (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = out.square().mean() + 10 * gx.square().sum((1, 2, 3)).mean()
        loss.backward()
        grads.append([p.grad for m in mods for p in (m.weight, m.bias)])
    for i, (g_ours, g_ref) in enumerate(zip(grads[1], grads[0])):
        assert g_ours is not None, f"param {i} got no gradient"
        assert_close(g_ours, g_ref, torch.float64, f"param {i} grad", 1e-9)


def test_no_weight_gradients_skips_dw(device, monkeypatch):
    monkeypatch.setenv("FASTGAN_CONV", "triton")
    x = torch.randn(1, 2, 5, 5, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, device=device, requires_grad=True)
    b = torch.randn(3, device=device, requires_grad=True)
    with no_weight_gradients():
        gx, gw, gb = torch.autograd.grad(conv2d_act(x, w, b, act="lrelu").sum(), (x, w, b),
                                         allow_unused=True, materialize_grads=False)
    assert gx is not None and gw is None and gb is None



def test_no_weight_gradients_keeps_a_weight_the_pass_differentiates_through(device, monkeypatch):
    """StyleGAN's modulated weights w = p * s depend on the styles s: a path-length gradient with
    respect to s inside no_weight_gradients() needs dw (it was dropped: a wrong or missing
    gradient); a weight computed from parameters only (p * gain) is still skipped."""
    monkeypatch.setenv("FASTGAN_CONV", "triton")
    x = torch.randn(1, 2, 5, 5, device=device)
    p = torch.randn(3, 2, 3, 3, device=device, requires_grad=True)
    s = torch.randn(1, 2, 1, 1, device=device, requires_grad=True)

    def grad_s(skip):
        with no_weight_gradients(skip):
            (g,) = torch.autograd.grad(conv2d_act(x, p * s, act="lrelu").square().sum(), s)
        return g

    assert_close(grad_s(True), grad_s(False), torch.float32, "d/ds inside no_weight_gradients")
    seen = []
    wgrad = fastgan.functional.conv.CONV_WEIGHT_GRAD
    monkeypatch.setattr(fastgan.functional.conv, "CONV_WEIGHT_GRAD", lambda *a: seen.append(1) or wgrad(*a))
    xg = x.clone().requires_grad_()
    with no_weight_gradients():
        torch.autograd.grad(conv2d_act(xg, p * 2.0, act="lrelu").sum(), xg)
    assert not seen, "a weight computed from parameters only had its gradient computed"

# ----------------------------------------------------------------------------- modules

@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
def test_module_state_dict_round_trip(transposed, device):
    if transposed:
        kw = dict(in_channels=4, out_channels=6, kernel_size=4, stride=2, padding=1, groups=2)
        torch.manual_seed(3)
        tm = nn.ConvTranspose2d(**kw).to(device)
        torch.manual_seed(3)
        fm = ConvTranspose2dAct(**kw, act="relu").to(device)
        ref = lambda x: F.relu(tm(x)) * math.sqrt(2)  # noqa: E731
        cls = ConvTranspose2dAct
    else:
        kw = dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=1, groups=2)
        torch.manual_seed(3)
        tm = nn.Conv2d(**kw).to(device)
        torch.manual_seed(3)
        fm = Conv2dAct(**kw, act="relu").to(device)
        ref = lambda x: F.relu(tm(x)) * math.sqrt(2)  # noqa: E731
        cls = Conv2dAct
    # same default init under the same seed, same names and shapes
    assert list(fm.state_dict()) == list(tm.state_dict())
    for k, v in tm.state_dict().items():
        assert torch.equal(fm.state_dict()[k], v), k
    # torch -> fastgan and fastgan -> torch
    with torch.no_grad():
        for p in tm.parameters():
            p.normal_()
    fm.load_state_dict(tm.state_dict())
    x = torch.randn(1, 4, 5, 5, device=device)
    assert_close(fm(x), ref(x), torch.float32, "loaded", _tol(torch.float32, device))
    with torch.no_grad():
        for p in fm.parameters():
            p.normal_()
    tm.load_state_dict(fm.state_dict())
    assert_close(fm(x), ref(x), torch.float32, "saved", _tol(torch.float32, device))
    m2 = cls.from_torch(tm, act="relu")
    assert_close(m2(x), ref(x), torch.float32, "from_torch", _tol(torch.float32, device))
    assert m2.weight.data_ptr() != tm.weight.data_ptr()
    # parameters are cast to the input dtype
    y16 = fm(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert_close(y16, ref(x), torch.bfloat16, "bf16 input")


def test_module_under_autocast(device):
    """Under autocast the layer runs in the autocast dtype, as nn.Conv2d does, and the float32
    parameters still receive float32 gradients."""
    torch.manual_seed(5)
    tm = nn.Conv2d(3, 4, 3, padding=1).to(device)
    fm = Conv2dAct.from_torch(tm, act="lrelu")
    x = torch.randn(2, 3, 5, 5, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = fm(x)
        y_ref = F.leaky_relu(tm(x), 0.2) * math.sqrt(2)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert_close(y, y_ref.float(), torch.bfloat16, "autocast y")
    y.float().sum().backward()
    assert fm.weight.grad.dtype == torch.float32 and torch.isfinite(fm.weight.grad).all()


def test_module_rejects_padding_mode():
    with pytest.raises(ValueError, match="padding_mode"):
        Conv2dAct(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode"):
        Conv2dAct.from_torch(nn.Conv2d(3, 4, 3, padding_mode="circular"))
    with pytest.raises(ValueError, match="padding_mode"):
        ConvTranspose2dAct(3, 4, 3, padding_mode="reflect")


# ----------------------------------------------------------------------------- bad input

def _bad_cases(device):
    x = torch.randn(1, 4, 6, 6, device=device)
    w = torch.randn(6, 4, 3, 3, device=device)
    wt = torch.randn(4, 3, 3, 3, device=device)
    b = torch.randn(6, device=device)
    c, t = conv2d_act, conv_transpose2d_act
    return [
        ("channels", lambda: c(x, torch.randn(6, 3, 3, 3, device=device)), ValueError, "channels"),
        ("groups_divide_in", lambda: c(x, torch.randn(6, 1, 3, 3, device=device), groups=3), ValueError,
         "groups"),
        ("groups_divide_out", lambda: c(x, torch.randn(5, 2, 3, 3, device=device), groups=2), ValueError,
         "groups"),
        ("groups_zero", lambda: c(x, w, groups=0), ValueError, "groups"),
        ("weight_rank", lambda: c(x, torch.randn(6, 4, 3, device=device)), ValueError, "weight"),
        ("x_rank", lambda: c(x[0, 0], w), ValueError, "x"),
        ("weight_dtype", lambda: c(x, w.double()), TypeError, "weight"),
        ("bias_dtype", lambda: c(x, w, b.double()), TypeError, "bias"),
        ("bias_len", lambda: c(x, w, b[:5]), ValueError, "bias"),
        ("weight_device", lambda: c(x, w.to("meta")), ValueError, "weight"),
        ("bias_device", lambda: c(x, w, b.to("meta")), ValueError, "bias"),
        ("stride", lambda: c(x, w, stride=0), ValueError, "stride"),
        ("dilation", lambda: c(x, w, dilation=(1, 0)), ValueError, "dilation"),
        ("padding", lambda: c(x, w, padding=-1), ValueError, "padding"),
        ("stride_type", lambda: c(x, w, stride=1.5), TypeError, "stride"),
        ("output_size", lambda: c(x, torch.randn(6, 4, 9, 9, device=device)), ValueError, "output size"),
        ("int_x", lambda: c(x.long(), w), TypeError, "x"),
        ("not_tensor", lambda: c(x.tolist(), w), TypeError, "x"),
        ("act", lambda: c(x, w, act="gelu"), ValueError, "act"),
        ("t_channels", lambda: t(x, torch.randn(3, 3, 3, 3, device=device)), ValueError, "weight"),
        ("t_groups", lambda: t(x, wt, groups=3), ValueError, "groups"),
        ("t_output_padding", lambda: t(x, wt, stride=2, output_padding=2), ValueError, "output_padding"),
        ("t_output_padding_neg", lambda: t(x, wt, output_padding=-1), ValueError, "output_padding"),
        ("t_output_size", lambda: t(x, wt, padding=9), ValueError, "output size"),
        ("t_stride", lambda: t(x, wt, stride=-2), ValueError, "stride"),
        ("t_bias", lambda: t(x, wt, torch.randn(4, device=device)), ValueError, "bias"),
        ("t_int", lambda: t(x.int(), wt), TypeError, "x"),
    ]


def test_bad_input_raises_before_launch(device):
    for name, call, exc, word in _bad_cases(device):
        with pytest.raises(exc, match=word):
            call()


def test_dispatch_env_and_cache(tmp_path, monkeypatch, device):
    x = torch.randn(1, 2, 5, 5, device=device)
    w = torch.randn(3, 2, 3, 3, device=device)
    monkeypatch.setenv("FASTGAN_CONV", "cudnn")
    with pytest.raises(ValueError, match="FASTGAN_CONV"):
        conv2d_act(x, w)
    monkeypatch.setenv("FASTGAN_CONV", "auto")
    assert conv_dispatch.forced_impl() is None
    if device == "cpu":
        assert conv_dispatch.choose("conv2d", x, w, (), lambda impl: None) == "triton"
    # the disk cache is JSON written atomically into FASTGAN_CACHE_DIR
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path / "cache"))
    e1 = {"impl": "vendor", "t_triton_ms": 0.5, "t_vendor_ms": 0.25}
    conv_dispatch._save_disk("k1", e1)
    conv_dispatch._save_disk("k2", {"impl": "triton", "t_triton_ms": 0.1, "t_vendor_ms": 0.2})
    path = tmp_path / "cache" / "conv_dispatch.json"
    data = json.loads(path.read_text())
    assert data["k1"] == e1 and data["k2"]["impl"] == "triton"  # the times that decided are kept
    assert [p.name for p in path.parent.iterdir()] == ["conv_dispatch.json"]
    path.write_text(json.dumps({"old": "vendor"}))  # a file of an older fastgan: bare implementation names
    assert conv_dispatch._read_disk(str(path))["old"]["impl"] == "vendor"
    conv_dispatch.usage(reset=True)
    conv2d_act(x, w)
    (entry,) = conv_dispatch.usage().values()
    assert entry["impl"] == ("triton" if device == "cpu" else entry["impl"])


@pytest.mark.gpu
def test_dispatch_times_and_caches_on_cuda(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTGAN_CONV", raising=False)
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path))
    conv_dispatch.clear_memory_cache()
    x = torch.randn(4, 16, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3, device="cuda")
    y = conv2d_act(x, w, None, 1, 1, act="lrelu")
    assert_close(y, F.leaky_relu(F.conv2d(x.double(), w.double(), None, 1, 1), 0.2) * math.sqrt(2),
                 torch.float32, "y", TOL_TF32)
    data = json.loads((tmp_path / "conv_dispatch.json").read_text())
    (entry,) = data.values()
    assert entry["impl"] in ("triton", "vendor") and entry["t_vendor_ms"] > 0
    conv_dispatch.clear_memory_cache()


def test_eager_backend_is_the_reference(device):
    x = torch.randn(1, 3, 6, 6, device=device)
    w = torch.randn(4, 3, 3, 3, device=device)
    b = torch.randn(4, device=device)
    with fastgan.use_backend("eager"):
        y = conv2d_act(x, w, b, 1, 1, act="lrelu")
    assert rel_err(y, F.leaky_relu(F.conv2d(x, w, b, 1, 1), 0.2) * math.sqrt(2)) < 1e-6
    assert y.grad_fn is None or "ConvAct" not in type(y.grad_fn).__name__


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_k_matches_the_reference(transposed, dtype, device):
    """Split-K (CTAs sharing a tile's K, float32 partials summed by the epilogue kernel), the path
    of the critic's last layer on the GPU, forced here: y, z, bias, activation and clamp."""
    torch.manual_seed(7)
    x = torch.randn(2, 6, 5, 5, device=device)
    w = torch.randn(6, 3, 3, 3, device=device) * 0.3 if transposed else torch.randn(3, 6, 3, 3, device=device) * 0.3
    b = torch.randn(3, device=device)
    for split in (1, 3):
        k, args = backend.kernels(), (x.to(dtype), w.to(dtype), b.to(dtype))
        if transposed:
            y, z = k.conv_transpose2d_act_fwd(*args, 2, 1, 1, 1, 1, "tanh", 0.0, 1.3, 0.9, store_z=True, split_k=split)
            ref_z = F.conv_transpose2d(x.double(), w.double(), None, 2, 1, 1)
        else:
            y, z = k.conv2d_act_fwd(*args, 1, 1, 1, 1, "tanh", 0.0, 1.3, 0.9, store_z=True, split_k=split)
            ref_z = F.conv2d(x.double(), w.double(), None, 1, 1)
        ref_y = (torch.tanh(ref_z + b.double().view(1, -1, 1, 1)) * 1.3).clamp(-0.9, 0.9)
        assert_close(z, ref_z, dtype, f"z split {split}")
        assert_close(y, ref_y, dtype, f"y split {split}")


@pytest.mark.parametrize("act,saves_z", [("lrelu", False), ("relu", False), ("tanh", True)])
def test_piecewise_linear_epilogues_save_the_output_not_a_pre_activation(act, saves_z, device):
    """relu / lrelu: act'(z + b) == act'(y), so the backward keeps y (the output, alive anyway)
    and no activation-sized copy of z (issue 14: memory traffic); tanh still needs z."""
    x = torch.randn(2, 3, 6, 6, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = conv2d_act(x, w, b, padding=1, act=act)
    if fastgan.backend_for(x) == "eager":
        pytest.skip("the eager reference saves what torch's ops save")
    big = [t for t in saved if t.shape == y.shape]
    outputs = [t for t in big if t.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()]
    assert len(big) - len(outputs) == (1 if saves_z else 0), [tuple(t.shape) for t in saved]
    (gx,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x, create_graph=True)
    gx.square().sum().backward()  # the second order still reaches w and b
    assert w.grad is not None and torch.isfinite(w.grad).all()
