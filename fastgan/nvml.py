"""Thin, failure-tolerant access to NVML (nvidia-ml-py): availability, driver, energy, power.

Every function answers without raising: on a machine without an NVIDIA driver the values
are None and ``status()`` says why.
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _init() -> tuple[object | None, str | None]:
    """(pynvml module, None) when NVML initialised, else (None, reason)."""
    try:
        import pynvml  # provided by the nvidia-ml-py package
    except Exception as exc:
        return None, f"nvidia-ml-py is not importable ({type(exc).__name__}: {exc})"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return None, f"NVML did not initialise ({type(exc).__name__}: {exc}); no NVIDIA driver here?"
    return pynvml, None


def status() -> tuple[bool, str | None]:
    """(available, reason it is not)."""
    nvml, reason = _init()
    return nvml is not None, reason


def _handle(index: int):
    nvml, _ = _init()
    if nvml is None:
        return None, None
    try:
        return nvml, nvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return nvml, None


def driver_version() -> str | None:
    nvml, _ = _init()
    if nvml is None:
        return None
    try:
        v = nvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        return None


def total_energy_mj(index: int = 0) -> int | None:
    """The GPU's total-energy counter in millijoules since driver load (Volta and newer), or None."""
    nvml, h = _handle(index)
    if h is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetTotalEnergyConsumption(h))
    except Exception:
        return None


def power_w(index: int = 0) -> float | None:
    nvml, h = _handle(index)
    if h is None:
        return None
    try:
        return nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
    except Exception:
        return None


def device_index(device) -> int:
    """The NVML index of a torch CUDA device (assumes CUDA_VISIBLE_DEVICES is not reordering)."""
    import torch

    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


# ----------------------------------------------------------------------------- sampling (ResourceMonitor)

def reset() -> None:
    """Forget the cached initialisation, so that the next call imports and initialises NVML again
    (after a driver became available, or in tests that swap the ``pynvml`` module)."""
    _init.cache_clear()


def device_count() -> int | None:
    nvml, _ = _init()
    if nvml is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:
        return None


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def device_name(index: int = 0) -> str | None:
    nvml, h = _handle(index)
    if h is None:
        return None
    try:
        return _text(nvml.nvmlDeviceGetName(h))
    except Exception:
        return None


def handle_error(index: int) -> str | None:
    """Why ``index`` has no NVML handle (None when it has one)."""
    nvml, reason = _init()
    if nvml is None:
        return reason
    try:
        nvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as exc:
        return f"NVML has no device {index} ({type(exc).__name__}: {exc})"
    return None


def _call(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def sample(index: int = 0) -> dict:
    """One reading of device ``index``: ``power_w``, ``util_pct``, ``mem_used_bytes`` (all processes),
    ``sm_clock_mhz``, ``temp_c``. A quantity the device or driver cannot report is None."""
    out = dict.fromkeys(("power_w", "util_pct", "mem_used_bytes", "sm_clock_mhz", "temp_c"))
    nvml, h = _handle(index)
    if h is None:
        return out
    mw = _call(nvml.nvmlDeviceGetPowerUsage, h)
    out["power_w"] = None if mw is None else mw / 1000.0
    util = _call(nvml.nvmlDeviceGetUtilizationRates, h)
    out["util_pct"] = None if util is None else float(util.gpu)
    mem = _call(nvml.nvmlDeviceGetMemoryInfo, h)
    out["mem_used_bytes"] = None if mem is None else int(mem.used)
    clock = _call(nvml.nvmlDeviceGetClockInfo, h, getattr(nvml, "NVML_CLOCK_SM", 1))
    out["sm_clock_mhz"] = None if clock is None else float(clock)
    temp = _call(nvml.nvmlDeviceGetTemperature, h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
    out["temp_c"] = None if temp is None else float(temp)
    return out


def _uuid_key(u) -> str:
    """Hex digits of a GPU UUID, whatever its spelling ("GPU-xxxxxxxx-...", bare, bytes)."""
    s = _text(u).lower()
    for prefix in ("gpu-", "mig-"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    return "".join(c for c in s if c in "0123456789abcdef")


def index_for_torch_device(device) -> int:
    """The NVML index of a torch CUDA device, matched by UUID (CUDA ordinals differ from NVML
    indices under CUDA_VISIBLE_DEVICES or CUDA_DEVICE_ORDER=FASTEST_FIRST); falls back to
    ``device_index`` when the UUIDs cannot be read or do not match."""
    import torch

    ordinal = device_index(device)
    nvml, _ = _init()
    if nvml is None:
        return ordinal
    try:
        want = _uuid_key(torch.cuda.get_device_properties(ordinal).uuid)
        n = int(nvml.nvmlDeviceGetCount())
    except Exception:
        return ordinal
    if len(want) != 32:
        return ordinal
    for i in range(n):
        try:
            if _uuid_key(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) == want:
                return i
        except Exception:
            continue
    return ordinal
