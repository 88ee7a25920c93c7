"""Helpers shared by the kernel launchers: dtype checks, tile sizes, interpreter detection."""
import os

import torch

# Elements per program on the GPU: 4096 keeps 8 warps busy with 16 B vector accesses.
# Under the interpreter a program is one numpy evaluation, so tiles are made larger there.
TILE_ELEMENTS = 4096

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        import triton

        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older Triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_launch_dtype(x: torch.Tensor, *others) -> None:
    """Last line of defence before a launch: floating dtypes, one dtype, one device."""
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"kernel input must be float16/bfloat16/float32/float64, got {x.dtype}")
    for t in others:
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"kernel inputs must share one dtype, got {x.dtype} and {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"kernel inputs must share one device, got {x.device} and {t.device}")


def is_dense(x: torch.Tensor) -> bool:
    """True if ``x`` covers its memory without gaps or overlaps (any dim order)."""
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(x.shape, x.stride()) if n > 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True
