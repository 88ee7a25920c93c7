"""Compile the elementwise/reduction kernels for sm_90 without a GPU.

The interpreter does not check what only compilation checks (constexpr branches returning
tuples from helpers, dtype promotion of scalars, loop-carried types). This compiles the
bias_act, batch-norm, loss and penalty kernels, in a fresh process without TRITON_INTERPRET, to GPU machine
code with the installed Triton (the conv kernels have their own check in test_conv.py).
"""
from .utils import compile_for_sm90

_COMPILE = r"""
import importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
ba = importlib.import_module("fastgan.kernels.bias_act")
bn = importlib.import_module("fastgan.kernels.batch_norm_act")
SCALARS = ("alpha", "gain", "clamp", "alpha_lo", "gain_lo", "clamp_lo", "eps", "eps_lo", "momentum", "momentum_lo")
INTS = ("OUTER", "C", "INNER")
ACC_PTRS = ("partial_ptr", "count_ptr", "mean_ptr", "m2_ptr", "sg_ptr", "sgx_ptr",
            "m_ptr", "s_ptr", "stats_ptr", "sum_g_ptr", "sum_gx_ptr", "p0_ptr", "p1_ptr", "out0_ptr", "out1_ptr")
n = 0
for kernel, extra in ((ba._bias_act_fwd_kernel, dict(HAS_CENTER=True, HAS_SCALE=True, HAS_BIAS=True, HAS_CLAMP=True)),
                      (ba._bias_act_bwd_kernel, dict(ORDER=1, HAS_BIAS=True, HAS_CLAMP=True, NEED_DB=True)),
                      (ba._bias_act_bwd_kernel, dict(ORDER=2, HAS_BIAS=True, HAS_CLAMP=False, NEED_DB=True)),
                      (ba._channel_sums_kernel, dict(TWO=True, BLOCK_T=128, BLOCK_C=32)),
                      (bn._bn_stats_kernel, {}),
                      (bn._bn_finalize_kernel, dict(HAS_SHIFT=True, HAS_WEIGHT=True, RUNNING=True, COUNT=True,
                                                    CUMULATIVE=False, BLOCK_T=128, BLOCK_C=32)),
                      (bn._bn_finalize_kernel, dict(HAS_SHIFT=False, HAS_WEIGHT=False, RUNNING=True, COUNT=False,
                                                    CUMULATIVE=True, BLOCK_T=128, BLOCK_C=32)),
                      (bn._bn_act_bwd_reduce_kernel, dict(HAS_BIAS=True, HAS_CLAMP=True)),
                      (bn._bn_act_bwd_dx_kernel, dict(HAS_BIAS=False, HAS_CLAMP=False))):
    for dt, cl, act in (("bf16", True, 2), ("fp32", False, 3), ("fp16", False, 8), ("fp64", True, 7)):
        consts = dict(IS_F64=dt == "fp64", CHANNELS_LAST=cl, BLOCK_R=16 if cl else 4,
                      BLOCK_I=128 if cl else 1024, **extra)
        if "ACT" in kernel.arg_names:
            consts["ACT"] = act
        acc = "fp64" if dt == "fp64" else "fp32"
        sig = {a: "constexpr" if a in consts else "*i64" if a == "nbt_ptr" else ("*" + acc) if a in ACC_PTRS
               else ("*" + dt) if a.endswith("_ptr") else "fp32" if a in SCALARS else "i32" for a in kernel.arg_names}
        consts = {k: v for k, v in consts.items() if k in kernel.arg_names}
        triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 8})
        n += 1
# losses and penalties (float scalars: the hi/lo pairs; ints that equal 1 become constexprs on the GPU)
ls = importlib.import_module("fastgan.kernels.losses")
pen = importlib.import_module("fastgan.kernels.penalty")
for dt in ("bf16", "fp32", "fp16", "fp64"):
    acc = "fp64" if dt == "fp64" else "fp32"
    for real_term, fake_term, has_real, ones in ((0, 1, True, False), (3, 4, True, True), (7, 2, False, False),
                                                 (5, 6, True, False), (8, 8, True, True)):
        consts = dict(REAL_TERM=real_term, FAKE_TERM=fake_term, HAS_REAL=has_real, IS_F64=dt == "fp64", BLOCK=1024)
        if ones:
            consts.update(NUM_PROGRAMS=1, ITERS_REAL=1, ITERS_FAKE=1)
        sig = {a: "constexpr" if a in consts else ("*" + acc) if a == "partial_ptr" else ("*" + dt)
               if a.endswith("_ptr") else "i32" for a in ls._gan_loss_kernel.arg_names}
        triton.compile(ASTSource(fn=ls._gan_loss_kernel, signature=sig, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        n += 1
    consts = dict(IS_F64=dt == "fp64", BLOCK=1024)
    sig = {a: "constexpr" if a in consts else ("*" + acc) if a == "out_ptr" else ("*" + dt) if a.endswith("_ptr")
           else "i32" for a in ls._logit_stats_kernel.arg_names}
    triton.compile(ASTSource(fn=ls._logit_stats_kernel, signature=sig, constexprs=consts),
                   target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    n += 1
    for kernel, consts, ptrs in (
            (pen._interpolate_kernel, dict(BLOCK=4096), {"eps_ptr": acc}),
            (pen._grad_penalty_fwd_kernel, dict(KIND=0, BLOCK=4096), {"coef_ptr": acc, "term_ptr": acc}),
            (pen._grad_penalty_fwd_kernel, dict(KIND=1, BLOCK=256, ITERS=1), {"coef_ptr": acc, "term_ptr": acc}),
            (pen._grad_penalty_bwd_kernel, dict(BLOCK=4096), {"coef_ptr": acc, "dp_ptr": acc})):
        consts = dict(consts, IS_F64=dt == "fp64")
        sig = {a: "constexpr" if a in consts else ("*" + ptrs.get(a, dt)) if a.endswith("_ptr") else
               "fp32" if a.endswith(("_hi", "_lo")) else "i32" for a in kernel.arg_names}
        triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 8})
        n += 1
print("compiled", n)
"""


def test_elementwise_and_reduction_kernels_compile_for_sm90(tmp_path):
    stdout = compile_for_sm90(_COMPILE, tmp_path)
    assert "compiled 76" in stdout
