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
