"""Convolution + bias + activation as ops (family ``ops``): one 3x3 stride-1 convolution with
lrelu and one 4x4 stride-2 transposed convolution with relu, forward and forward+backward.

(The DCGAN layer shapes are the ``layers`` family, in ``cases_conv.py``.)

Providers: ``eager`` is what a user writes (``F.leaky_relu(F.conv2d(x, w, b), 0.2)``: cuDNN's
convolution with its bias, then the activation as its own kernel); ``compile`` is
torch.compile of that function; ``fastgan`` is ``conv2d_act`` / ``conv_transpose2d_act`` with
the same activation (alpha 0.2, gain 1, i.e. torch's semantics). Inputs are channels_last on
CUDA; each call takes the next of a few input sets, so consecutive calls do not find their
operands in L2.

bytes: each operand read or written once per pass (forward: x, w, b, y; backward adds dy,
the saved pre-activation, dx, dw, db); flops: 2 * MACs (fwdbwd = 3 x fwd).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .harness import Case, compile_fn

N_INPUT_SETS = 3
# name, transposed, Cin, H, Cout, k, stride, pad, act
OPS = [
    ("3x3.lrelu", False, 256, 32, 256, 3, 1, 1, "lrelu"),
    ("4x4s2.relu", True, 256, 16, 128, 4, 2, 1, "relu"),
]
CPU_TINY = dict(batch=2, scale=16)  # channels / 16, H / 2 on the CPU


def _out(transposed, h, k, s, p):
    return (h - 1) * s - 2 * p + k if transposed else (h + 2 * p - k) // s + 1


def _make(transposed, n, cin, h, cout, k, s, p, act, backward):
    def make(device, dtype):
        import fastgan
        from fastgan.functional import conv2d_act, conv_transpose2d_act

        fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        ho = _out(transposed, h, k, s, p)
        wshape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        sets = []
        for _ in range(N_INPUT_SETS):
            x = torch.randn(n, cin, h, h, device=device, dtype=dtype).contiguous(memory_format=fmt)
            w = (torch.randn(wshape, device=device, dtype=dtype) / math.sqrt(cin * k * k)).contiguous(memory_format=fmt)
            b = torch.randn(cout, device=device, dtype=dtype) * 0.1
            dy = torch.randn(n, cout, ho, ho, device=device, dtype=dtype).contiguous(memory_format=fmt)
            for t in ((x, w, b) if backward else ()):
                t.requires_grad_(True)
            sets.append((x, w, b, dy))
        torch_act = (lambda v: F.leaky_relu(v, 0.2)) if act == "lrelu" else F.relu

        def eager(x, w, b):
            z = F.conv_transpose2d(x, w, b, s, p) if transposed else F.conv2d(x, w, b, s, p)
            return torch_act(z)

        kw = dict(act=act, gain=1.0, **({"alpha": 0.2} if act == "lrelu" else {}))

        def fused(x, w, b):
            if transposed:
                return conv_transpose2d_act(x, w, b, s, p, **kw)
            return conv2d_act(x, w, b, s, p, **kw)

        def bind(fn):
            state = [0]

            def call():
                x, w, b, dy = sets[state[0] % N_INPUT_SETS]
                state[0] += 1
                if not backward:
                    with torch.no_grad():
                        return fn(x, w, b)
                return torch.autograd.grad(fn(x, w, b), (x, w, b), dy)
            return call

        fns = {"eager": bind(eager), "compile": bind(compile_fn(eager))}
        backend = fastgan.backend_for(sets[0][0])
        fns["fastgan"] = bind(fused) if backend == "triton" else (
            f"fastgan's Triton path needs CUDA (backend here: {backend})")
        return fns

    return make


def conv_op_cases(quick: bool = True, device_type: str = "cuda") -> list[Case]:
    """--quick on CUDA: forward+backward of both ops, batch 64, bf16; --full: forward and
    forward+backward, batch 64 and 256, float32 and bf16. CPU: tiny sizes."""
    cases = []
    if device_type != "cuda":
        grid = [(CPU_TINY["batch"], dt, be) for dt in ("float32", "bfloat16") for be in (False, True)]
    elif quick:
        grid = [(64, "bfloat16", True)]
    else:
        grid = [(n, dt, be) for n in (64, 256) for dt in ("float32", "bfloat16") for be in (False, True)]
    for name, transposed, cin, h, cout, k, s, p, act in OPS:
        if device_type != "cuda":
            cin, cout, h = cin // CPU_TINY["scale"], cout // CPU_TINY["scale"], h // 2
        op = "conv_transpose2d_act" if transposed else "conv2d_act"
        for n, dtype, backward in grid:
            esize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
            ho = _out(transposed, h, k, s, p)
            x_el, w_el, y_el = n * cin * h * h, cin * cout * k * k, n * cout * ho * ho
            macs = n * h * h * cin * cout * k * k if transposed else n * ho * ho * cout * cin * k * k
            fwd = x_el + w_el + cout + y_el
            nbytes = esize * (fwd + (y_el + y_el + x_el + w_el + cout) if backward else fwd)
            cases.append(Case(
                case=f"{op}.{name}.{'fwdbwd' if backward else 'fwd'}.B{n}", family="ops",
                shape=[n, cin, h, h, cout, k, s, p], dtype=dtype, bytes=int(nbytes),
                flops=int((6 if backward else 2) * macs), make=_make(transposed, n, cin, h, cout, k, s, p, act, backward)))
    return cases
