"""Modulated convolution's demodulation coefficients in one pass (StyleGAN2):

    d[n, o] = 1 / sqrt(sum_{i, k} (w[o, i, k] * s[n, i])^2 + eps)
            = 1 / sqrt(sum_i s[n, i]^2 * q[o, i] + eps),   q[o, i] = sum_k w[o, i, k]^2

One program computes a [BLOCK_N, BLOCK_O] tile, walking the input channels in BLOCK_I
chunks; q is formed on the fly from the weight tile (k runs over the kernel's taps), so
neither the modulated weight [N, O, I, k] nor q is written. Computed in float32 (float64
for float64); elementwise products and sums (no tl.dot: exact float32, and float64 works).
"""
import torch
import triton
import triton.language as tl

from .activation import scalar_arg
from .common import check_launch_dtype, is_interpreted, split_float

__all__ = ["modconv_coeffs"]


@triton.jit
def _modconv_coeffs_kernel(s_ptr, w_ptr, d_ptr, N, O, I, K, ss_n, ss_i, sw_o, sw_i, sw_k, eps, eps_lo,
                           IS_F64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
                           BLOCK_I: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    eps = scalar_arg(eps, eps_lo, IS_F64)
    if IS_F64:
        acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_O), dtype=tl.float32)
    for i0 in range(0, I, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        s = tl.load(s_ptr + n[:, None] * ss_n + i[None, :] * ss_i, mask=(n < N)[:, None] & (i < I)[None, :],
                    other=0.0).to(acc.dtype)
        w_mask = (o < O)[:, None] & (i < I)[None, :]
        q = tl.zeros((BLOCK_O, BLOCK_I), dtype=acc.dtype)
        for k in range(0, K):
            wv = tl.load(w_ptr + o[:, None] * sw_o + i[None, :] * sw_i + k * sw_k, mask=w_mask, other=0.0)
            wv = wv.to(acc.dtype)
            q += wv * wv
        acc += tl.sum((s * s)[:, None, :] * q[None, :, :], axis=2)
    d = 1.0 / tl.sqrt(acc + eps)
    tl.store(d_ptr + n[:, None] * O + o[None, :], d.to(d_ptr.dtype.element_ty),
             mask=(n < N)[:, None] & (o < O)[None, :])


def modconv_coeffs(styles: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """d [N, O] (styles' dtype, dense) for styles [N, I] and weight [O, I, kh, kw] of one dtype."""
    check_launch_dtype(styles, weight)
    n, i = styles.shape
    o = weight.shape[0]
    w = weight.reshape(o, i, -1)
    d = torch.empty((n, o), dtype=styles.dtype, device=styles.device)
    if d.numel() == 0:
        return d
    np2 = triton.next_power_of_2
    block_n, block_o = min(np2(n), 16), min(np2(o), 32 if not is_interpreted() else 128)
    block_i = min(np2(i), 16 if not is_interpreted() else 128)
    hi, lo = split_float(eps)
    _modconv_coeffs_kernel[(triton.cdiv(n, block_n), triton.cdiv(o, block_o))](
        styles, w, d, n, o, i, w.shape[2], *styles.stride(), *w.stride(), hi, lo,
        IS_F64=styles.dtype == torch.float64, BLOCK_N=block_n, BLOCK_O=block_o, BLOCK_I=block_i, num_warps=4)
    return d
