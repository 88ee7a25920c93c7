"""Compile the StyleGAN op kernels (upfirdn2d, filtered_lrelu, grid_sample, fma, the modulated-conv
coefficients) for sm_90 without a GPU, in a fresh process without the interpreter: what only
compilation checks (dot shapes and dtypes, loop-carried types, helpers returning tuples); and
torch.compile of the ops (one graph of registered ops)."""
import torch

import fastgan.functional as FG

from .utils import assert_close, compile_for_sm90

_COMPILE = r"""
import importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

FLOATS = ("gain", "slope", "clamp", "gain_lo", "slope_lo", "clamp_lo", "eps", "eps_lo")
ACC_PTRS = {"f_ptr", "gu_ptr", "t1_ptr", "t2_ptr", "dx_ptr", "dg_ptr", "d_ptr"}


def compile(kernel, dt, consts, warps=4, ptrs=None):
    acc = "fp64" if dt == "fp64" else "fp32"
    ptrs = ptrs or {}
    sig = {}
    for a in kernel.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a.endswith("_ptr"):
            sig[a] = "*" + ptrs.get(a, acc if a in ACC_PTRS else dt)
        else:
            sig[a] = "fp32" if a in FLOATS else "i32"
    triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps})


up = importlib.import_module("fastgan.kernels.upfirdn2d")._upfirdn2d_kernel
fl = importlib.import_module("fastgan.kernels.filtered_lrelu")._filtered_lrelu_kernel
gs = importlib.import_module("fastgan.kernels.grid_sample")
fma = importlib.import_module("fastgan.kernels.fma")._fma_kernel
mc = importlib.import_module("fastgan.kernels.modconv")._modconv_coeffs_kernel


def flrelu(mode, clamp, f64):
    b = 16 if f64 else 32
    return dict(MODE=mode, HAS_BIAS=True, HAS_CLAMP=clamp, IS_F64=f64, TF32=not f64, ROUND_TF32=not f64,
                BO_H=16, BO_W=16, BT_H=b, BT_W=2 * b, BX_H=b, BX_W=b, BS_H=b, BS_W=16)


# each kernel and mode, and each dtype path, at least once (float64: what the gradchecks run on a GPU)
VARIANTS = [
    (up, "bf16", dict(IS_F64=False, BLOCK_C=1, BLOCK_H=16, BLOCK_W=128), 8),
    (up, "fp32", dict(IS_F64=False, BLOCK_C=64, BLOCK_H=8, BLOCK_W=4), 8),
    (up, "fp64", dict(IS_F64=True, BLOCK_C=1, BLOCK_H=8, BLOCK_W=64), 4),
    (fl, "bf16", flrelu(0, True, False), 8),
    (fl, "fp32", flrelu(1, False, False), 8),
    (fl, "fp16", flrelu(2, True, False), 8),
    (fl, "fp64", flrelu(2, False, True), 4),
    (gs._grid_sample_fwd_kernel, "bf16", dict(IS_F64=False, BLOCK_P=64, BLOCK_C=16), 4),
    (gs._grid_sample_bwd_kernel, "fp32", dict(NEED_DX=True, NEED_DGRID=True, IS_F64=False, BLOCK_P=64, BLOCK_C=16), 4),
    (gs._grid_sample_bwd_kernel, "fp64", dict(NEED_DX=True, NEED_DGRID=True, IS_F64=True, BLOCK_P=64, BLOCK_C=16), 4),
    (fma, "fp16", dict(HAS_C=True, IS_F64=False, BLOCK=4096), 8),
    (fma, "fp64", dict(HAS_C=False, IS_F64=True, BLOCK=4096), 8),
    (mc, "fp32", dict(IS_F64=False, BLOCK_N=16, BLOCK_O=32, BLOCK_I=16), 4),
    (mc, "fp64", dict(IS_F64=True, BLOCK_N=16, BLOCK_O=32, BLOCK_I=16), 4),
]
n = 0
for kernel, dt, consts, warps in VARIANTS:
    compile(kernel, dt, consts, warps, {"plan_ptr": "i32"})
    n += 1
print("compiled", n)
"""


def test_stylegan_kernels_compile_for_sm90(tmp_path):
    assert "compiled 14" in compile_for_sm90(_COMPILE, tmp_path)


def test_torch_compile_sees_one_op_per_fused_call(device):
    """torch.compile(fullgraph=True) of a chain of the StyleGAN ops: one graph of torch.ops.fastgan
    calls, the eager values and gradients."""
    graphs = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    f, f8 = FG.setup_filter([1, 3, 3, 1], device=device), FG.setup_filter(list(range(1, 9)), device=device)

    def fn(x, w, s, b, grid):
        y = FG.modulated_conv2d(x, w, s, padding=1, bias=b, act="lrelu")
        y = FG.filtered_lrelu(FG.upsample2d(y, f), f8, f8, b, up=2, down=2, padding=[7, 6, 7, 6])
        y = FG.grid_sample(y, grid)
        return FG.fma(y, y, y).sum()

    args = [torch.randn(2, 3, 6, 6, device=device), torch.randn(3, 3, 3, 3, device=device),
            torch.randn(2, 3, device=device), torch.randn(3, device=device)]
    args = [a.requires_grad_() for a in args] + [torch.rand(2, 5, 5, 2, device=device) * 2 - 1]
    ref = fn(*args)  # (eager first: the backend is decided outside the trace)
    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    assert_close(out, ref, torch.float32, "compiled")
    for a, r in zip(torch.autograd.grad(out, args[:4]), torch.autograd.grad(ref, args[:4])):
        assert_close(a, r, torch.float32, "compiled gradient")
    assert len(graphs) == 1
    for op in ("modconv_coeffs", "conv_act", "upfirdn2d", "filtered_lrelu", "grid_sample", "fma"):
        assert f"torch.ops.fastgan.{op}" in graphs[0].code, op
