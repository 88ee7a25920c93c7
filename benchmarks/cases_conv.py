"""Convolution + bias + activation cases: the DCGAN layers (family ``layers``) and two
convolutions as ops (family ``ops``), forward ("fwd") and forward + every gradient ("fwdbwd").

Providers: ``eager`` is what a user writes (``F.leaky_relu(F.conv2d(x, w, b), 0.2)``: the
vendor's convolution with its bias, then the activation as its own kernel); ``compile`` is
torch.compile of that function; ``fastgan`` is ``conv2d_act`` / ``conv_transpose2d_act`` with
the same activation (torch's semantics: slope 0.2, gain 1). Inputs and weights are
channels_last on CUDA (as after ``model.to(memory_format=torch.channels_last)``); each call
takes the next of a few input sets, so consecutive calls do not find their operands in L2.

Layers: DCGAN 64x64 at batch 128 - discriminator convs 4x4 stride 2 pad 1 with lrelu
(3->64->128->256->512), generator transposed convs (100->512 from 1x1 with 4x4 stride 1 pad 0,
then 4x4 stride 2 pad 1 with relu, the last one 64->3 with tanh) - and one ResNet-style 3x3
stride 1 layer at 256 channels, 32x32, all bf16. Ops: a 3x3 conv with lrelu and a 4x4 stride-2
transposed conv with relu; --quick: batch 64 bf16 forward + backward; --full: batch 64 and 256,
float32 and bf16, fwd and fwdbwd. The CPU runs the ops only, shrunk (batch 2, channels / 16, H / 2).

bytes: each operand read or written once per pass (forward: x, w, b, y; the backward adds dy,
the saved pre-activation, dz, dx, dw and db); flops: 2 * MACs (fwdbwd = 3 x fwd: the input
gradient and the weight gradient cost one forward each).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastgan.kernels.geometry import conv_output_size

from .harness import Case, compile_fn

N_INPUT_SETS = 3
# name, transposed, N, Cin, H, Cout, k, stride, pad, act
LAYERS = [
    ("dcgan_d1", False, 128, 3, 64, 64, 4, 2, 1, "lrelu"),
    ("dcgan_d2", False, 128, 64, 32, 128, 4, 2, 1, "lrelu"),
    ("dcgan_d3", False, 128, 128, 16, 256, 4, 2, 1, "lrelu"),
    ("dcgan_d4", False, 128, 256, 8, 512, 4, 2, 1, "lrelu"),
    ("dcgan_g1", True, 128, 100, 1, 512, 4, 1, 0, "relu"),
    ("dcgan_g2", True, 128, 512, 4, 256, 4, 2, 1, "relu"),
    ("dcgan_g3", True, 128, 256, 8, 128, 4, 2, 1, "relu"),
    ("dcgan_g4", True, 128, 128, 16, 64, 4, 2, 1, "relu"),
    ("dcgan_g5", True, 128, 64, 32, 3, 4, 2, 1, "tanh"),
    ("resnet256", False, 128, 256, 32, 256, 3, 1, 1, "lrelu"),
]
QUICK_LAYERS = {"dcgan_d2", "dcgan_g3", "resnet256"}
OPS = [
    ("3x3.lrelu", False, 64, 256, 32, 256, 3, 1, 1, "lrelu"),
    ("4x4s2.relu", True, 64, 256, 16, 128, 4, 2, 1, "relu"),
]
CPU_TINY = dict(batch=2, scale=16)  # on the CPU: batch 2, channels / 16 (at least 1), H / 2

_TORCH_ACT = {"lrelu": lambda v: F.leaky_relu(v, 0.2), "relu": F.relu, "tanh": torch.tanh}


def _out(transposed, h, k, s, p):
    return conv_output_size(h, k, s, p, 1, transposed)


def _make(spec, backward: bool):
    name, transposed, n, cin, h, cout, k, s, p, act = spec

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
        torch_act = _TORCH_ACT[act]

        def eager(x, w, b):
            return torch_act(F.conv_transpose2d(x, w, b, s, p) if transposed else F.conv2d(x, w, b, s, p))

        kw = dict(act=act, gain=1.0, **({"alpha": 0.2} if act == "lrelu" else {}))

        def fused(x, w, b):
            return conv_transpose2d_act(x, w, b, s, p, **kw) if transposed else conv2d_act(x, w, b, s, p, **kw)

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


def _cost(spec, backward: bool, esize: int) -> tuple[int, int]:
    name, transposed, n, cin, h, cout, k, s, p, act = spec
    ho = _out(transposed, h, k, s, p)
    x_el, w_el, y_el = n * cin * h * h, cin * cout * k * k, n * cout * ho * ho
    macs = n * h * h * cin * cout * k * k if transposed else n * ho * ho * cout * cin * k * k
    fwd = x_el + w_el + cout + y_el
    # backward: act' reads dy and z, writes dz; dx reads dz and w, writes dx; dw reads x and dz, writes dw
    bwd = 2 * y_el + y_el + (y_el + w_el + x_el) + (x_el + y_el + w_el) + cout
    return esize * (fwd + (bwd if backward else 0)), (6 if backward else 2) * macs


def _shrink(spec):
    name, transposed, n, cin, h, cout, k, s, p, act = spec
    scale = CPU_TINY["scale"]
    return (name, transposed, CPU_TINY["batch"], max(1, cin // scale), max(1, h // 2), max(1, cout // scale), k, s,
            p, act)


def conv_cases(quick: bool = True, device_type: str = "cuda") -> list[Case]:
    """The layers (CUDA only: batch 128 takes seconds per call on a CPU) and the ops; the CPU runs
    the ops' whole grid at tiny sizes (a smoke run of the machinery)."""
    grid = []  # (family, spec, dtype, backward)
    if device_type == "cuda":
        grid += [("layers", spec, "bfloat16", be) for spec in LAYERS if not quick or spec[0] in QUICK_LAYERS
                 for be in (False, True)]
    if device_type != "cuda":
        variants = [(CPU_TINY["batch"], dt, be) for dt in ("float32", "bfloat16") for be in (False, True)]
    elif quick:
        variants = [(64, "bfloat16", True)]
    else:
        variants = [(n, dt, be) for n in (64, 256) for dt in ("float32", "bfloat16") for be in (False, True)]
    for spec in OPS:
        if device_type != "cuda":
            spec = _shrink(spec)
        grid += [("ops", (*spec[:2], n, *spec[3:]), dt, be) for n, dt, be in variants]
    cases = []
    for family, spec, dtype, backward in grid:
        name, transposed, n, cin, h, cout, k, s, p, act = spec
        op = "conv_transpose2d_act" if transposed else "conv2d_act"
        nbytes, flops = _cost(spec, backward, torch.empty((), dtype=getattr(torch, dtype)).element_size())
        case = f"{op}.{name}.{'fwdbwd' if backward else 'fwd'}" + (f".B{n}" if family == "ops" else "")
        cases.append(Case(case=case, family=family, shape=[n, cin, h, h, cout, k, s, p], dtype=dtype,
                          bytes=int(nbytes), flops=int(flops), make=_make(spec, backward)))
    return cases
