"""Per-shape choice between fastgan's fused Triton convolution and the vendor path (and between
other interchangeable implementations: ``choose(..., impls=...)``).

Two implementations compute the same forward of a convolution layer:

- ``"triton"``: the fused implicit-GEMM kernel (conv + bias + activation in one pass);
- ``"vendor"``: ``F.conv2d`` / ``F.conv_transpose2d`` (cuDNN on CUDA) without bias, then the
  fused bias_act kernel.

Which one is faster depends on the shape, the dtype, the layout and the GPU, so on CUDA
both are timed once per key (op, shapes, conv arguments, dtype, layout, device name) and
the winner is remembered with the times (``{"impl", "t_triton_ms", "t_vendor_ms"}``) in memory and
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
# key -> {"impl": name, "t_<name>_ms": float | None for each implementation timed}
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


def _untimed(impl: str, impls: tuple) -> dict:
    return {"impl": impl, **{f"t_{name}_ms": None for name in impls}}


def _entry(value) -> dict | None:
    """A cache entry ({"impl", "t_<impl>_ms" per implementation}; a bare impl name from older files)."""
    if isinstance(value, str):
        return {"impl": value}
    if isinstance(value, dict) and isinstance(value.get("impl"), str):
        times = {k: v for k, v in value.items()
                 if k.startswith("t_") and k.endswith("_ms") and (v is None or isinstance(v, (int, float)))}
        return {"impl": value["impl"], **times}
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
           run: Callable[[str], object], impls: tuple = IMPLS) -> str:
    """The fastest of ``impls`` (default "triton" / "vendor") for this call; ``run(impl)`` performs
    the forward with one impl (it is called for timing only on CUDA, once per new key, under
    ``torch.no_grad``). ``FASTGAN_CONV`` forces the default pair only; off CUDA the first wins."""
    forced = forced_impl() if impls == IMPLS else None
    key = make_key(op, x, w, args)
    if forced is not None or not x.is_cuda:  # forced, or the CPU: the kernels are exercised
        return _use(key, _untimed(forced or impls[0], impls))
    with _lock:
        _load_disk()
        entry = _memory.get(key)
    if entry is not None and entry["impl"] in impls:
        return _use(key, entry)
    if torch.cuda.is_current_stream_capturing():
        return _use(key, _untimed(impls[0], impls))
    times = {}
    with torch.no_grad():
        for impl in impls:
            try:
                times[impl] = _time_ms(lambda: run(impl))
            except Exception as exc:  # e.g. a kernel that cannot compile for this shape: use another impl
                if impl == impls[-1] and not times:
                    raise
                warnings.warn(f"fastgan: {impl} failed for {key} ({type(exc).__name__}: {exc}); "
                              "using another implementation for this shape", RuntimeWarning, stacklevel=3)
    entry = {"impl": min(times, key=times.get), **{f"t_{impl}_ms": times.get(impl) for impl in impls}}
    with _lock:
        _memory[key] = entry
        _save_disk(key, entry)
        return _use(key, entry)
