"""fma: y = a * b + c with broadcasting, one pass (StyleGAN's demodulation + noise step).

The output is dense; each program walks BLOCK consecutive elements of its memory order
(NCHW or channels_last) and reads a, b and c through their broadcast strides (0 along a
broadcast dim), so no input is expanded in memory. Computed in float32 (float64 for float64).
Offsets are int64.
"""
import torch
import triton
import triton.language as tl

from .common import TILE_ELEMENTS, check_launch_dtype

__all__ = ["fma_fwd"]


@triton.jit
def _fma_kernel(a_ptr, b_ptr, c_ptr, y_ptr, numel, S1, S2, S3,
                sa0, sa1, sa2, sa3, sb0, sb1, sb2, sb3, sc0, sc1, sc2, sc3,
                HAS_C: tl.constexpr, IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    # memory-order indices (j3 fastest) of the dense output
    j3 = offs % S3
    r = offs // S3
    j2 = r % S2
    r = r // S2
    j1 = r % S1
    j0 = r // S1
    a = tl.load(a_ptr + j0 * sa0 + j1 * sa1 + j2 * sa2 + j3 * sa3, mask=mask, other=0.0)
    b = tl.load(b_ptr + j0 * sb0 + j1 * sb1 + j2 * sb2 + j3 * sb3, mask=mask, other=0.0)
    if IS_F64:
        y = a.to(tl.float64) * b.to(tl.float64)
    else:
        y = a.to(tl.float32) * b.to(tl.float32)
    if HAS_C:
        y += tl.load(c_ptr + j0 * sc0 + j1 * sc1 + j2 * sc2 + j3 * sc3, mask=mask, other=0.0).to(y.dtype)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def fma_fwd(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """y = a * b (+ c), broadcast (at most 4 dims), dense in ``memory_format``."""
    check_launch_dtype(a, b, c)
    shape = torch.broadcast_shapes(a.shape, b.shape, *(() if c is None else (c.shape,)))
    if len(shape) > 4:
        raise ValueError(f"fma_fwd broadcasts at most 4 dims, got shape {tuple(shape)}")
    y = torch.empty(shape, dtype=a.dtype, device=a.device, memory_format=memory_format)
    if y.numel() == 0:
        return y
    full = (1,) * (4 - len(shape)) + tuple(shape)
    order = sorted(range(4), key=lambda d: -y.view(full).stride(d))  # memory order, outermost first

    def strides(t):  # broadcast dims get stride 0
        t = t.expand(shape).view(full)
        return [t.stride(d) for d in order]
    sizes = [full[d] for d in order]
    block = TILE_ELEMENTS
    _fma_kernel[(triton.cdiv(y.numel(), block),)](
        a, b, c if c is not None else a, y, y.numel(), sizes[1], sizes[2], sizes[3],
        *strides(a), *strides(b), *(strides(c) if c is not None else [0] * 4),
        HAS_C=c is not None, IS_F64=a.dtype == torch.float64, BLOCK=block, num_warps=8)
    return y
