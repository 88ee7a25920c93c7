"""Helpers shared by the kernel launchers: dtype checks, tile sizes, interpreter detection."""
import functools
import math
import os
import struct

import torch

__all__ = ["is_interpreted", "is_dense", "is_channels_last", "split_float", "check_launch_dtype", "vector",
           "FLOAT_DTYPES"]

# Elements per program on the GPU: 4096 keeps 8 warps busy with 16 B vector accesses.
# Under the interpreter a program is one numpy evaluation, so tiles are made larger there.
TILE_ELEMENTS = 4096

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@functools.lru_cache(maxsize=1)
def is_interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1). Read once: the
    kernels' mode is fixed when they are defined."""
    try:
        import triton

        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older Triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def split_float(value: float) -> tuple[float, float]:
    """``value = hi + lo`` with hi and lo float32 numbers (about 48 significant bits together).

    A compiled Triton kernel receives every Python float argument as float32, so a float64
    kernel that took ``alpha``/``gain``/``clamp``/``weight`` directly would compute with a
    value rounded to float32 (a relative error of about 3e-8, visible against a float64
    reference). Float64 kernels therefore take such scalars as two float32 arguments and
    add them in float64 (``activation.scalar_arg``); float32 kernels use ``hi`` alone."""
    value = float(value)
    try:
        hi = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        hi = math.copysign(math.inf, value)
    if not math.isfinite(hi):  # beyond float32's range (or NaN): the same on the GPU either way
        return hi, 0.0
    return hi, struct.unpack("f", struct.pack("f", value - hi))[0]


def check_launch_dtype(x: torch.Tensor, *others) -> None:
    """Last line of defence before a launch: floating dtypes, one dtype, one device that the
    kernels can run on (CUDA, or any device in the interpreter)."""
    if x.device.type != "cuda" and not is_interpreted():
        raise RuntimeError(f"fastgan's Triton kernels run on CUDA tensors (or, for testing, in the Triton interpreter: "
                           f"FASTGAN_BACKEND=interpret), got a tensor on {x.device}; fastgan.functional runs the "
                           f"eager reference there (a torch.ops.fastgan op called directly does not)")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"kernel input must be float16/bfloat16/float32/float64, got {x.dtype}")
    for t in others:
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"kernel inputs must share one dtype, got {x.dtype} and {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"kernel inputs must share one device, got {x.device} and {t.device}")


def vector(t: torch.Tensor | None) -> torch.Tensor | None:
    """A per-channel (or per-sample) launcher argument, which the kernels read at ``ptr + i``:
    contiguous (a strided or expanded vector is copied; its elements are not at ptr + i)."""
    return None if t is None else t.contiguous()


def is_dense(x: torch.Tensor) -> bool:
    """True if ``x`` covers its memory without gaps or overlaps (any dim order)."""
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(x.shape, x.stride()) if n > 1), key=lambda p: p[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-d tensor dense in channels_last order and not also in NCHW order (the memory
    format torch's convolutions give their outputs for such an input)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
