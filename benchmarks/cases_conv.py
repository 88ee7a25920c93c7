"""Benchmark cases for the fused convolution layers (family "layers").

``conv_cases(quick)`` returns one dict per case:

    {"case": "conv2d_act.dcgan_d2.fwd", "family": "layers", "shape": [...], "dtype": "bfloat16",
     "bytes": int, "flops": int, "make": make(device, dtype) -> {provider: zero-arg callable}}

Providers: "eager" (F.conv2d without bias, + bias, activation and gain as separate torch
ops), "compile" (torch.compile of that eager function), "fastgan" (conv2d_act /
conv_transpose2d_act). Inputs are bf16 channels_last (x and weights, as after
``model.to(memory_format=torch.channels_last)``); each callable cycles through a few input
sets so that consecutive calls do not find their input in L2.

Layers: DCGAN 64x64 at batch 128 - discriminator convs 4x4 stride 2 pad 1 with lrelu
(3->64->128->256->512), generator transposed convs (100->512 from 1x1 with 4x4 stride 1 pad 0,
then 4x4 stride 2 pad 1 with relu, the last one 64->3 with tanh) - and one ResNet-style
3x3 stride 1 layer at 256 channels, 32x32. "fwd" times the forward, "fwdbwd" forward +
the gradients of x, weight and bias.

bytes: minimal traffic (each operand read or written once per pass); flops: 2 * MACs of
the convolution (fwdbwd = 3 x fwd: input gradient and weight gradient cost one forward each).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastgan.functional import conv2d_act, conv_transpose2d_act

from .harness import compile_fn

N_INPUT_SETS = 3

# name, transposed, N, Cin, H, W, Cout, k, stride, pad, act
_LAYERS = [
    ("dcgan_d1", False, 128, 3, 64, 64, 64, 4, 2, 1, "lrelu"),
    ("dcgan_d2", False, 128, 64, 32, 32, 128, 4, 2, 1, "lrelu"),
    ("dcgan_d3", False, 128, 128, 16, 16, 256, 4, 2, 1, "lrelu"),
    ("dcgan_d4", False, 128, 256, 8, 8, 512, 4, 2, 1, "lrelu"),
    ("dcgan_g1", True, 128, 100, 1, 1, 512, 4, 1, 0, "relu"),
    ("dcgan_g2", True, 128, 512, 4, 4, 256, 4, 2, 1, "relu"),
    ("dcgan_g3", True, 128, 256, 8, 8, 128, 4, 2, 1, "relu"),
    ("dcgan_g4", True, 128, 128, 16, 16, 64, 4, 2, 1, "relu"),
    ("dcgan_g5", True, 128, 64, 32, 32, 3, 4, 2, 1, "tanh"),
    ("resnet256", False, 128, 256, 32, 32, 256, 3, 1, 1, "lrelu"),
]
_QUICK = {"dcgan_d2", "dcgan_g3", "resnet256"}


def _out_hw(transposed, h, k, s, p):
    return (h - 1) * s - 2 * p + k if transposed else (h + 2 * p - k) // s + 1


def _eager_act(act):
    if act == "lrelu":
        return lambda v: F.leaky_relu(v, 0.2) * math.sqrt(2)
    if act == "relu":
        return lambda v: F.relu(v) * math.sqrt(2)
    return torch.tanh


def _make_fn(spec, provider):
    name, transposed, n, cin, h, w, cout, k, s, p, act = spec
    if provider == "fastgan":
        if transposed:
            return lambda x, wt, b: conv_transpose2d_act(x, wt, b, s, p, act=act)
        return lambda x, wt, b: conv2d_act(x, wt, b, s, p, act=act)
    epi = _eager_act(act)

    def eager(x, wt, b):
        z = F.conv_transpose2d(x, wt, None, s, p) if transposed else F.conv2d(x, wt, None, s, p)
        return epi(z + b.view(1, -1, 1, 1))
    if provider == "compile":
        return compile_fn(eager)  # the run's --compile-backend, as every other case
    return eager


def _make(spec, mode):
    name, transposed, n, cin, h, w, cout, k, s, p, act = spec

    def make(device, dtype):
        fmt = torch.channels_last
        wshape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        oh, ow = _out_hw(transposed, h, k, s, p), _out_hw(transposed, w, k, s, p)
        sets = []
        for _ in range(N_INPUT_SETS):
            x = torch.randn(n, cin, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
            wt = (torch.randn(wshape, device=device, dtype=dtype) / math.sqrt(cin * k * k)).contiguous(
                memory_format=fmt)
            b = torch.randn(cout, device=device, dtype=dtype) * 0.1
            g = torch.randn(n, cout, oh, ow, device=device, dtype=dtype).contiguous(memory_format=fmt)
            if mode == "fwdbwd":
                for t in (x, wt, b):
                    t.requires_grad_(True)
            sets.append((x, wt, b, g))
        providers = {}
        for provider in ("eager", "compile", "fastgan"):
            fn = _make_fn(spec, provider)
            state = {"i": 0}

            def call(fn=fn, state=state):
                x, wt, b, g = sets[state["i"] % N_INPUT_SETS]
                state["i"] += 1
                if mode == "fwd":
                    with torch.no_grad():
                        return fn(x, wt, b)
                y = fn(x, wt, b)
                return torch.autograd.grad(y, (x, wt, b), g)
            providers[provider] = call
        return providers
    return make


def _cost(spec, mode, elt=2):
    name, transposed, n, cin, h, w, cout, k, s, p, act = spec
    oh, ow = _out_hw(transposed, h, k, s, p), _out_hw(transposed, w, k, s, p)
    x_el, w_el, y_el = n * cin * h * w, cin * cout * k * k, n * cout * oh * ow
    macs = (n * h * w * cin * cout * k * k) if transposed else (n * oh * ow * cout * cin * k * k)
    fwd_bytes = elt * (x_el + w_el + cout + y_el)
    if mode == "fwd":
        return fwd_bytes, 2 * macs
    # backward: act' pass reads dy and z, writes dz; dx pass reads dz and w, writes dx;
    # dw pass reads x and dz, writes dw (the forward also writes z)
    bwd_bytes = elt * (2 * y_el + y_el + (y_el + w_el + x_el) + (x_el + y_el + w_el) + y_el + cout)
    return fwd_bytes + bwd_bytes, 3 * 2 * macs


def conv_cases(quick: bool) -> list:
    cases = []
    for spec in _LAYERS:
        name, transposed, n, cin, h, w, cout, k, s, p, act = spec
        if quick and name not in _QUICK:
            continue
        op = "conv_transpose2d_act" if transposed else "conv2d_act"
        for mode in ("fwd", "fwdbwd"):
            nbytes, flops = _cost(spec, mode)
            cases.append({
                "case": f"{op}.{name}.{mode}",
                "family": "layers",
                "shape": [n, cin, h, w, cout, k, s, p],
                "dtype": "bfloat16",
                "bytes": int(nbytes),
                "flops": int(flops),
                "make": _make(spec, mode),
            })
    return cases
