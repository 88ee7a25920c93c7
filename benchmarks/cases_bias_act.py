"""bias_act cases: forward and forward+backward, lrelu and tanh, float32 and bfloat16,
tensor sizes from 1 MB to 512 MB (NCHW, 128 channels, 32x32).

Providers: ``eager`` is the reference written as separate torch ops (add, act, mul, clamp),
``compile`` is torch.compile of that same function, ``fastgan`` the fused kernels.
Bytes: forward reads x and writes y; forward+backward adds reading dy and x and writing dx.
"""
from __future__ import annotations

import torch

from .harness import Case, compile_fn

SIZES_MB = {"quick": [1, 64, 512], "full": [1, 16, 64, 256, 512]}
# --quick on CUDA keeps five cases (each case is one more torch.compile): (act, backward, MB, dtype);
# the launch-latency end is covered by the loss cases at N=64.
QUICK_CUDA = {("lrelu", False, 64, "float32"), ("lrelu", True, 512, "float32"),
              ("lrelu", False, 64, "bfloat16"), ("lrelu", True, 512, "bfloat16"), ("tanh", True, 64, "bfloat16")}
C, H, W = 128, 32, 32


def _make(act: str, backward: bool, batch: int):
    def make(device, dtype):
        import fastgan
        from fastgan.functional import bias_act, resolve_act
        from fastgan.functional.bias_act import _bias_act_ref

        spec = resolve_act(act)
        x = torch.randn(batch, C, H, W, device=device, dtype=dtype, requires_grad=backward)
        b = torch.randn(C, device=device, dtype=dtype, requires_grad=backward)
        dy = torch.randn(batch, C, H, W, device=device, dtype=dtype) if backward else None

        def eager(x, b):
            return _bias_act_ref(x, b, 1, spec)

        def fused(x, b):
            return bias_act(x, b, act=act)

        compiled = compile_fn(eager)

        def bind(fn):
            if not backward:
                return lambda: fn(x, b)
            return lambda: torch.autograd.grad(fn(x, b), (x, b), dy)

        fns = {"eager": bind(eager), "compile": bind(compiled)}
        if fastgan.backend_for(x) == "triton":
            fns["fastgan"] = bind(fused)
        else:
            fns["fastgan"] = f"fastgan's Triton path needs CUDA (backend here: {fastgan.backend_for(x)})"
        return fns

    return make


def bias_act_cases(quick: bool = True, device_type: str = "cuda") -> list[Case]:
    cases = []
    sizes = SIZES_MB["quick" if quick else "full"]
    if device_type != "cuda":
        sizes = [1]  # the CPU run is a smoke run of the harness, not a measurement
    for dtype in ("float32", "bfloat16"):
        esize = 4 if dtype == "float32" else 2
        for mb in sizes:
            batch = max(1, (mb << 20) // (C * H * W * esize))
            numel = batch * C * H * W
            for act in ("lrelu", "tanh"):
                for backward in (False, True):
                    if quick and device_type == "cuda" and (act, backward, mb, dtype) not in QUICK_CUDA:
                        continue
                    passes = 5 if backward else 2  # tensor-sized reads + writes
                    cases.append(Case(
                        case=f"bias_act.{act}.{'fwdbwd' if backward else 'fwd'}.{mb}MB",
                        family="ops", shape=[batch, C, H, W], dtype=dtype,
                        bytes=passes * numel * esize, flops=(8 if backward else 3) * numel,
                        make=_make(act, backward, batch)))
    return cases
