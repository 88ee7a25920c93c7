"""Per-shape choice between fastgan's fused Triton convolution and the vendor path.

Two implementations compute the same forward of a convolution layer:

- ``"triton"``: the fused implicit-GEMM kernel (conv + bias + activation in one pass);
- ``"vendor"``: ``F.conv2d`` / ``F.conv_transpose2d`` (cuDNN on CUDA) without bias, then the
  fused bias_act kernel.

Which one is faster depends on the shape, the dtype, the layout and the GPU, so on CUDA
both are timed once per key (op, shapes, conv arguments, dtype, layout, device name) and
the winner is remembered with both times (``{"impl", "t_triton_ms", "t_vendor_ms"}``) in memory and
on disk, as JSON in ``$FASTGAN_CACHE_DIR`` (default ``~/.cache/fastgan``) file
``conv_dispatch.json``, written atomically (temp file + os.replace). ``usage()`` tells which
implementation each shape ran since it was last reset (the benchmark records carry it).

``FASTGAN_CONV=triton|vendor`` forces one everywhere (``auto`` or unset: choose). On the
CPU (Triton interpreter) nothing is timed and "triton" is chosen, so that the kernels are
exercised. While a CUDA graph is being captured nothing can be timed: an unknown key then
runs "triton" without recording a choice (warm the cache up before capturing).
"""
from __future__ import annotations

import json
import os
import threading
import warnings
from typing import Callable

import torch

from ..atomic import atomic_write_json

__all__ = ["IMPLS", "forced_impl", "choose", "usage", "cache_path", "clear_memory_cache"]

IMPLS = ("triton", "vendor")
_ENV = "FASTGAN_CONV"
_CACHE_FILE = "conv_dispatch.json"

_lock = threading.Lock()
# key -> {"impl": "triton" | "vendor", "t_triton_ms": float | None, "t_vendor_ms": float | None}
_memory: dict[str, dict] = {}
_used: dict[str, dict] = {}  # the entries choose() returned since the last usage(reset=True)
_disk_loaded_from: str | None = None
_warned_disk = False


def forced_impl() -> str | None:
    """The implementation forced by ``FASTGAN_CONV`` ("triton"/"vendor"), or None (choose)."""
    value = os.environ.get(_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in IMPLS:
        raise ValueError(f"{_ENV}={os.environ.get(_ENV)!r} is not a valid choice; expected one of "
                         f"{IMPLS + ('auto',)} (or unset)")
    return value


def cache_path() -> str:
    root = os.environ.get("FASTGAN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastgan")
    return os.path.join(root, _CACHE_FILE)


def clear_memory_cache() -> None:
    """Forget the in-memory choices (the disk file is re-read on the next CUDA lookup)."""
    global _disk_loaded_from
    with _lock:
        _memory.clear()
        _disk_loaded_from = None


def _warn_disk(exc: Exception) -> None:
    global _warned_disk
    if not _warned_disk:
        _warned_disk = True
        warnings.warn(f"fastgan: conv dispatch cache {cache_path()} unusable ({exc}); "
                      "choices are kept in memory only", RuntimeWarning, stacklevel=4)


def _entry(value) -> dict | None:
    """A cache entry ({"impl", "t_triton_ms", "t_vendor_ms"}; a bare impl name from older files)."""
    if value in IMPLS:
        return {"impl": value, "t_triton_ms": None, "t_vendor_ms": None}
    if isinstance(value, dict) and value.get("impl") in IMPLS:
        return {"impl": value["impl"], "t_triton_ms": value.get("t_triton_ms"), "t_vendor_ms": value.get("t_vendor_ms")}
    return None


def _read_disk(path: str) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _warn_disk(exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: e for k, e in ((k, _entry(v)) for k, v in data.items()) if isinstance(k, str) and e is not None}


def _load_disk() -> None:
    global _disk_loaded_from
    path = cache_path()
    if _disk_loaded_from == path:
        return
    for key, value in _read_disk(path).items():
        _memory.setdefault(key, value)
    _disk_loaded_from = path


def _save_disk(key: str, value: dict) -> None:
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read_disk(path)  # merge with what other processes wrote meanwhile
        data[key] = value
        atomic_write_json(path, data, sort_keys=True)
    except OSError as exc:
        _warn_disk(exc)


def _time_ms(fn: Callable[[], object], warmup: int = 2, reps: int = 7) -> float:
    """Median time of ``fn`` in ms on the current CUDA stream (the first warm-up call compiles)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def make_key(op: str, x: torch.Tensor, w: torch.Tensor, args: tuple) -> str:
    def layout(t):
        return "cl" if (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
                        and not t.is_contiguous()) else "nchw" if t.is_contiguous() else "strided"
    name = torch.cuda.get_device_name(x.device) if x.is_cuda else x.device.type
    return "|".join([op, "x" + "x".join(map(str, x.shape)), "w" + "x".join(map(str, w.shape)),
                     ",".join(map(str, args)), str(x.dtype).replace("torch.", ""),
                     f"{layout(x)}/{layout(w)}", name])


def usage(reset: bool = False) -> dict:
    """{key: {"impl", "t_triton_ms", "t_vendor_ms"}} of every choice made since the last reset
    (which implementation each conv shape ran, and the times that decided it)."""
    with _lock:
        out = {k: dict(v) for k, v in _used.items()}
        if reset:
            _used.clear()
    return out


def _use(key: str, entry: dict) -> str:
    _used[key] = entry
    return entry["impl"]


def choose(op: str, x: torch.Tensor, w: torch.Tensor, args: tuple,
           run: Callable[[str], object]) -> str:
    """"triton" or "vendor" for this call; ``run(impl)`` performs the forward with one impl
    (it is called for timing only on CUDA, once per new key, under ``torch.no_grad``)."""
    forced = forced_impl()
    key = make_key(op, x, w, args)
    if forced is not None or not x.is_cuda:  # forced, or the CPU: the kernels are exercised
        return _use(key, {"impl": forced or "triton", "t_triton_ms": None, "t_vendor_ms": None})
    with _lock:
        _load_disk()
        entry = _memory.get(key)
    if entry is not None:
        return _use(key, entry)
    if torch.cuda.is_current_stream_capturing():
        return _use(key, {"impl": "triton", "t_triton_ms": None, "t_vendor_ms": None})
    with torch.no_grad():
        try:
            t_triton = _time_ms(lambda: run("triton"))
        except Exception as exc:  # a kernel that cannot compile for this shape: use the vendor path
            warnings.warn(f"fastgan: Triton conv failed for {key} ({type(exc).__name__}: {exc}); "
                          "using the vendor path for this shape", RuntimeWarning, stacklevel=3)
            t_triton = float("inf")
        t_vendor = _time_ms(lambda: run("vendor"))
    entry = {"impl": "triton" if t_triton <= t_vendor else "vendor",
             "t_triton_ms": None if t_triton == float("inf") else t_triton, "t_vendor_ms": t_vendor}
    with _lock:
        _memory[key] = entry
        _save_disk(key, entry)
        return _use(key, entry)
