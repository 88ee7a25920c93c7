"""Resource monitoring around any training loop: time, throughput, energy, memory, GPU state.

``ResourceMonitor`` is a context manager; ``mon.step(n_images=...)`` marks the end of each
training step. GPU readings come from NVML through ``fastgan.nvml`` (never raising); on a
machine without a GPU or without NVML the GPU fields are null and the report says why.
"""
from __future__ import annotations

import array
import datetime
import json
import math
import operator
import os
import socket
import sys
import threading
import time
import weakref

import torch

from . import nvml
from .atomic import atomic_write_json

__all__ = ["ResourceMonitor"]

SCHEMA = 1
_THREAD_NAME = "fastgan-resource-monitor"

# Monitors inside their ``with`` block. Entering one resets torch's peak-memory statistics of
# its devices; the peaks that the others have seen so far are folded into them first.
_ACTIVE: "weakref.WeakSet[ResourceMonitor]" = weakref.WeakSet()
_ACTIVE_LOCK = threading.Lock()


def _finite(x):
    """A JSON-safe number: None for None, NaN and infinities."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _percentile(xs: list, q: float) -> float | None:
    """Linear-interpolated percentile of the sorted list ``xs`` (q in [0, 1])."""
    if not xs:
        return None
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _peak_rss_bytes() -> int | None:
    """Peak resident set size of this process since it started (not resettable)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    try:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except Exception:
        return None
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB


def _fmt_bytes(n) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def _parse_devices(devices) -> list | None:
    """None, or a list of requested CUDA ordinals (None inside = "the current device")."""
    if devices is None:
        return None
    if isinstance(devices, (int, str, torch.device)):
        devices = [devices]
    try:
        items = list(devices)
    except TypeError:
        raise ValueError(f"devices must be None, an int, a torch.device or a list of them; got {devices!r}") from None
    out = []
    for d in items:
        if isinstance(d, bool):
            raise ValueError(f"device {d!r} is not a device")
        if isinstance(d, int):
            if d < 0:
                raise ValueError(f"device index must be >= 0, got {d}")
            idx = d
        else:
            try:
                dev = torch.device(d)
            except Exception as exc:
                raise ValueError(f"device {d!r} is not a device ({exc})") from None
            if dev.type != "cuda":
                raise ValueError(f"ResourceMonitor monitors CUDA devices; got {dev} (CPU time and RSS are always "
                                 "reported)")
            idx = dev.index
        if idx not in out:
            out.append(idx)
    return out


class _Device:
    """State and running aggregates for one monitored GPU."""

    def __init__(self, index: int, nvml_index: int | None, cuda: bool):
        self.index = index            # torch CUDA ordinal (the NVML index when torch has no CUDA)
        self.nvml_index = nvml_index  # None when NVML does not serve this device
        self.cuda = cuda
        self.name = None
        self.error = None             # why NVML readings are missing for this device
        self.e0_mj = self.e1_mj = None
        self.start_event = self.end_event = None
        self.cuda_s = None
        self.folded_peak_alloc = 0
        self.max_mem_allocated = None
        self.samples = 0
        self.p_sum = 0.0
        self.p_n = 0
        self.p_max = None
        self.p_last = None            # (t, watts) of the latest power reading
        self.p_first_t = None
        self.energy_int_j = 0.0       # trapezoid integral of the power readings
        self.util_sum = 0.0
        self.util_n = 0
        self.mem_max = None
        self.clk_sum = 0.0
        self.clk_n = 0
        self.temp_max = None

    def add(self, t: float, s: dict) -> None:
        self.samples += 1
        p = s.get("power_w")
        if p is not None:
            self.p_sum += p
            self.p_n += 1
            self.p_max = p if self.p_max is None else max(self.p_max, p)
            if self.p_last is None:
                self.p_first_t = t
            else:
                t0, p0 = self.p_last
                self.energy_int_j += 0.5 * (p0 + p) * max(t - t0, 0.0)
            self.p_last = (t, p)
        if s.get("util_pct") is not None:
            self.util_sum += s["util_pct"]
            self.util_n += 1
        if s.get("mem_used_bytes") is not None:
            self.mem_max = s["mem_used_bytes"] if self.mem_max is None else max(self.mem_max, s["mem_used_bytes"])
        if s.get("sm_clock_mhz") is not None:
            self.clk_sum += s["sm_clock_mhz"]
            self.clk_n += 1
        if s.get("temp_c") is not None:
            self.temp_max = s["temp_c"] if self.temp_max is None else max(self.temp_max, s["temp_c"])

    def energy(self, e_now_mj: int | None) -> tuple[float | None, str | None, str | None]:
        """(joules, source, reason it is None)."""
        if self.nvml_index is None:
            return None, None, self.error
        if self.e0_mj is not None and e_now_mj is not None and e_now_mj > self.e0_mj:
            return (e_now_mj - self.e0_mj) / 1e3, "counter", None
        if self.p_n >= 2:
            return self.energy_int_j, "integrated_power", None
        return None, None, (f"device {self.index}: no energy counter and fewer than 2 power readings")


class ResourceMonitor:
    """Measure a block of code: time, throughput, energy, memory and GPU state.

    ::

        with fastgan.ResourceMonitor() as mon:
            for batch in loader:
                ...                                   # one training step
                mon.step(n_images=batch.shape[0])
        print(mon.summary())
        mon.to_json("run.json")

    Arguments:
        devices: None (default) = the current CUDA device when CUDA is available, else none;
            or an int / ``torch.device`` / ``"cuda:1"`` / a list of them (CUDA ordinals). Under DDP
            call ``torch.cuda.set_device(local_rank)`` first and leave ``devices=None``: each rank
            then monitors its own device. When torch has no CUDA but NVML sees GPUs (a CPU-only
            torch build on a GPU host), explicit ints are taken as NVML indices and only the NVML
            fields are filled.
        interval_s: seconds between NVML readings of the background sampler thread (> 0).
        sync_steps: synchronise the monitored devices in every ``step()`` so that step times are
            GPU times; otherwise (default) they are host times between ``step()`` calls, which
            match the GPU's once its queue is full.

    What happens at enter: the devices are synchronised, torch's peak-memory statistics are
    reset, a CUDA event is recorded on each device's current stream, the NVML energy counters
    and a first sample are read, then a daemon thread samples every ``interval_s``. At exit
    (also when the block raises) the end events are recorded, the devices synchronised, the
    thread stopped and joined, a last sample and the counters read, and the report is built.

    Reuse and nesting: entering a monitor that is already inside its ``with`` block raises
    ``RuntimeError``; entering it again after exit starts a fresh measurement (the previous
    report is discarded). Different monitors may nest; the inner one's reset of the peak-memory
    statistics is folded into the outer one's peak. ``report()`` inside the block gives a live
    snapshot (``complete`` false, ``cuda_s`` null); before the first enter it raises.

    Report (``report()``, ``to_json``; plain JSON values, null where not measured):

    - ``schema`` (int, 1), ``complete`` (bool), ``date`` (UTC ISO time of enter), ``host``, ``pid``,
      ``rank``, ``world_size`` (from torch.distributed when initialised, else null), ``interval_s``.
    - ``wall_s``: perf_counter time from enter to exit; ``cpu_s``: process CPU time (all threads);
      ``cuda_s``: CUDA-event time between enter and exit (the largest over devices).
    - ``images``, ``steps``: sums over ``step()`` calls; ``images_per_s`` = images / wall_s
      (null when no images were counted).
    - ``step_ms``: {``median``, ``p10``, ``p90``, ``count``} of the times between ``step()``
      calls, the first measured from enter (linear-interpolated percentiles).
    - ``peak_rss_bytes``: peak resident memory of the process since it started (getrusage).
    - ``energy_j``: sum over devices; ``joules_per_image`` = energy_j / images; ``energy_source``:
      "counter" (NVML total-energy counter read at enter and exit) on every device,
      "integrated_power" (trapezoid over the sampled power) when at least one device had no
      usable counter, null when some device has neither; ``energy_unavailable_reason``.
    - ``devices``: one dict per monitored GPU: ``index`` (CUDA ordinal), ``nvml_index``, ``name``,
      ``energy_j``, ``energy_source``, ``mean_power_w`` (mean of the readings), ``max_power_w``,
      ``mean_util_pct``, ``max_mem_used_bytes`` (NVML, all processes on the GPU),
      ``max_mem_allocated_bytes`` (``torch.cuda.max_memory_allocated``, this process),
      ``mean_sm_clock_mhz``, ``max_temp_c``, ``samples`` (NVML readings), ``cuda_s``, ``error``.
    - ``gpu_unavailable_reason``: null when every GPU quantity was measured, otherwise why not
      (no CUDA device, NVML error text, no NVML handle for a device, torch without CUDA).
    - ``errors``: texts of failures while finishing (e.g. a failed CUDA synchronisation after
      the block had raised); normally empty.

    Caveats: NVML's power reading is averaged by the driver over up to one second, so the
    integrated energy of short blocks is approximate (the counter is preferred; a counter that
    did not advance is treated as missing). Anything else that calls
    ``torch.cuda.reset_peak_memory_stats`` inside the block lowers ``max_mem_allocated_bytes``.
    """

    def __init__(self, devices=None, interval_s: float = 0.1, sync_steps: bool = False):
        try:
            interval_s = float(interval_s)
        except (TypeError, ValueError):
            raise ValueError(f"interval_s must be a positive number, got {interval_s!r}") from None
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a positive number, got {interval_s!r}")
        self.interval_s = interval_s
        self.sync_steps = bool(sync_steps)
        self._requested = _parse_devices(devices)
        self._lock = threading.Lock()
        self._running = False
        self._entered = False
        self._thread = None
        self._stop = None
        self._final = None
        self._devices: list[_Device] = []

    # ------------------------------------------------------------------ devices

    def _resolve(self) -> tuple[list[_Device], str | None]:
        """The devices to monitor and, when GPU quantities will be missing, why."""
        cuda = torch.cuda.is_available()
        nvml_ok, nvml_reason = nvml.status()
        if self._requested is None and not cuda:
            return [], "no CUDA device (torch.cuda.is_available() is False)"
        if self._requested == []:
            return [], "no GPU devices requested (devices=[])"
        if cuda:
            count = torch.cuda.device_count()
            ordinals = []
            for idx in (self._requested or [None]):
                idx = torch.cuda.current_device() if idx is None else idx
                if idx >= count:
                    raise ValueError(f"CUDA device {idx} does not exist ({count} visible)")
                if idx not in ordinals:
                    ordinals.append(idx)
            devs = []
            for idx in ordinals:
                d = _Device(idx, nvml.index_for_torch_device(idx) if nvml_ok else None, cuda=True)
                d.name = torch.cuda.get_device_name(idx)
                devs.append(d)
            if not nvml_ok:
                for d in devs:
                    d.error = f"NVML unavailable: {nvml_reason}"
                return devs, f"NVML unavailable: {nvml_reason}"
            return devs, None
        # explicit devices, torch without CUDA
        no_cuda = "no CUDA device (torch.cuda.is_available() is False)"
        if not nvml_ok:
            return [], f"{no_cuda}; NVML unavailable: {nvml_reason}"
        count = nvml.device_count()
        ordinals = [0 if idx is None else idx for idx in self._requested]
        if count is not None:
            for idx in ordinals:
                if idx >= count:
                    raise ValueError(f"NVML device {idx} does not exist ({count} present)")
        devs = []
        for idx in dict.fromkeys(ordinals):
            d = _Device(idx, idx, cuda=False)
            d.name = nvml.device_name(idx)
            devs.append(d)
        return devs, f"{no_cuda}: NVML readings only (no CUDA-event time, no allocator peaks)"

    def _sync_all(self) -> None:
        for d in self._devices:
            if d.cuda:
                torch.cuda.synchronize(d.index)

    def _sample_all(self) -> None:
        t = time.perf_counter()
        readings = [(d, nvml.sample(d.nvml_index)) for d in self._devices if d.nvml_index is not None]
        with self._lock:
            for d, s in readings:
                d.add(t, s)

    def _run_sampler(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self._sample_all()
            except Exception as exc:  # never let the sampler die silently mid-run
                with self._lock:
                    self._errors.append(f"sampler: {type(exc).__name__}: {exc}")

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> "ResourceMonitor":
        if self._running:
            raise RuntimeError("this ResourceMonitor is already running; nesting the same monitor is not "
                               "allowed (use a second ResourceMonitor)")
        self._final = None
        self._errors: list[str] = []
        self._images = 0
        self._steps = 0
        self._step_ms = array.array("d")
        self._devices, self._gpu_reason = self._resolve()
        self._cuda = any(d.cuda for d in self._devices)
        self._rank = self._world_size = None
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                self._rank, self._world_size = int(dist.get_rank()), int(dist.get_world_size())
        except Exception:
            pass
        bad = []
        for d in self._devices:
            if d.nvml_index is not None and d.error is None:
                d.error = nvml.handle_error(d.nvml_index)
                if d.error is not None:
                    d.nvml_index = None
                    bad.append(f"device {d.index}: {d.error}")
        if bad:
            self._gpu_reason = "; ".join(([self._gpu_reason] if self._gpu_reason else []) + bad)

        self._sync_all()
        try:
            self._start()
        except BaseException:
            self._stop_thread()
            self._running = False
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self)
            raise
        return self

    def _start(self) -> None:
        with _ACTIVE_LOCK:
            for d in self._devices:
                if d.cuda:
                    peak = int(torch.cuda.max_memory_allocated(d.index))
                    for other in _ACTIVE:
                        other._fold_peak(d.index, peak)
                    torch.cuda.reset_peak_memory_stats(d.index)
            _ACTIVE.add(self)
        for d in self._devices:
            if d.cuda:
                d.start_event = torch.cuda.Event(enable_timing=True)
                d.start_event.record(torch.cuda.current_stream(d.index))
            if d.nvml_index is not None:
                d.e0_mj = nvml.total_energy_mj(d.nvml_index)
        self._date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._sample_all()
        self._t0 = self._last_step = time.perf_counter()
        self._cpu0 = time.process_time()
        self._entered = self._running = True
        if any(d.nvml_index is not None for d in self._devices):
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run_sampler, args=(self._stop,), name=_THREAD_NAME,
                                            daemon=True)
            self._thread.start()

    def _fold_peak(self, index: int, peak: int) -> None:
        for d in self._devices:
            if d.cuda and d.index == index:
                d.folded_peak_alloc = max(d.folded_peak_alloc, peak)

    def __exit__(self, exc_type, exc, tb) -> bool:
        raise_after = None
        try:
            for d in self._devices:
                if d.cuda:
                    try:
                        d.end_event = torch.cuda.Event(enable_timing=True)
                        d.end_event.record(torch.cuda.current_stream(d.index))
                    except Exception as e:
                        d.end_event = None
                        self._errors.append(f"device {d.index}: end event: {type(e).__name__}: {e}")
            try:
                self._sync_all()
            except Exception as e:
                self._errors.append(f"synchronize: {type(e).__name__}: {e}")
                if exc_type is None:
                    raise_after = e  # the block "succeeded" but the GPU failed: do not hide it
            t1 = time.perf_counter()
            cpu1 = time.process_time()
            self._stop_thread()
            self._sample_all()
            for d in self._devices:
                if d.nvml_index is not None:
                    d.e1_mj = nvml.total_energy_mj(d.nvml_index)
                if d.cuda:
                    try:
                        if d.start_event is not None and d.end_event is not None:
                            d.end_event.synchronize()
                            d.cuda_s = d.start_event.elapsed_time(d.end_event) / 1e3
                        d.max_mem_allocated = max(d.folded_peak_alloc, int(torch.cuda.max_memory_allocated(d.index)))
                    except Exception as e:
                        self._errors.append(f"device {d.index}: {type(e).__name__}: {e}")
            self._final = self._build(t1, cpu1, complete=True)
        finally:
            self._stop_thread()
            self._running = False
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self)
        if raise_after is not None:
            raise raise_after
        return False

    # ------------------------------------------------------------------ steps

    def step(self, n_images: int = 0) -> None:
        """Mark the end of one step that processed ``n_images`` images (a non-negative int)."""
        if isinstance(n_images, bool):
            raise ValueError(f"n_images must be a non-negative int, got {n_images!r}")
        try:
            n = operator.index(n_images)
        except TypeError:
            raise ValueError(f"n_images must be a non-negative int, got {n_images!r}") from None
        if n < 0:
            raise ValueError(f"n_images must be a non-negative int, got {n}")
        if not self._running:
            raise RuntimeError("ResourceMonitor.step() called outside its with block")
        if self.sync_steps and self._cuda:
            self._sync_all()
        t = time.perf_counter()
        self._step_ms.append((t - self._last_step) * 1e3)
        self._last_step = t
        self._steps += 1
        self._images += n

    # ------------------------------------------------------------------ report

    def _build(self, t1: float, cpu1: float, complete: bool) -> dict:
        wall = t1 - self._t0
        steps = sorted(self._step_ms)
        with self._lock:
            devices, energies, reasons = [], [], []
            for d in self._devices:
                e_now = d.e1_mj if complete else (nvml.total_energy_mj(d.nvml_index)
                                                 if d.nvml_index is not None else None)
                energy, source, why = d.energy(e_now)
                energies.append((energy, source))
                if why:
                    reasons.append(why)
                alloc = d.max_mem_allocated
                if not complete and d.cuda:
                    try:
                        alloc = max(d.folded_peak_alloc, int(torch.cuda.max_memory_allocated(d.index)))
                    except Exception:
                        alloc = None
                devices.append({
                    "index": d.index,
                    "nvml_index": d.nvml_index,
                    "name": d.name,
                    "energy_j": _finite(energy),
                    "energy_source": source,
                    "mean_power_w": _finite(d.p_sum / d.p_n) if d.p_n else None,
                    "max_power_w": _finite(d.p_max),
                    "mean_util_pct": _finite(d.util_sum / d.util_n) if d.util_n else None,
                    "max_mem_used_bytes": d.mem_max,
                    "max_mem_allocated_bytes": alloc,
                    "mean_sm_clock_mhz": _finite(d.clk_sum / d.clk_n) if d.clk_n else None,
                    "max_temp_c": _finite(d.temp_max),
                    "samples": d.samples,
                    "cuda_s": _finite(d.cuda_s),
                    "error": d.error,
                })
        if not self._devices:
            energy_j, energy_source, energy_reason = None, None, self._gpu_reason
        elif any(e is None for e, _ in energies):
            energy_j, energy_source = None, None
            energy_reason = "; ".join(dict.fromkeys(reasons)) or "energy not measured"
        else:
            energy_j = sum(e for e, _ in energies)
            energy_source = "counter" if all(s == "counter" for _, s in energies) else "integrated_power"
            energy_reason = None
        cuda_times = [d["cuda_s"] for d in devices if d["cuda_s"] is not None]
        images = self._images
        return {
            "schema": SCHEMA,
            "complete": complete,
            "date": self._date,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "rank": self._rank,
            "world_size": self._world_size,
            "interval_s": self.interval_s,
            "wall_s": _finite(wall),
            "cpu_s": _finite(cpu1 - self._cpu0),
            "cuda_s": max(cuda_times) if cuda_times else None,
            "images": images,
            "steps": self._steps,
            "images_per_s": _finite(images / wall) if images and wall > 0 else None,
            "step_ms": {"median": _finite(_percentile(steps, 0.5)), "p10": _finite(_percentile(steps, 0.1)),
                        "p90": _finite(_percentile(steps, 0.9)), "count": len(steps)},
            "peak_rss_bytes": _peak_rss_bytes(),
            "energy_j": _finite(energy_j),
            "joules_per_image": _finite(energy_j / images) if energy_j is not None and images else None,
            "energy_source": energy_source,
            "energy_unavailable_reason": energy_reason,
            "devices": devices,
            "gpu_unavailable_reason": self._gpu_reason,
            "errors": list(self._errors),
        }

    def report(self) -> dict:
        """The report (see the class docstring); a live snapshot while inside the ``with`` block."""
        if not self._entered:
            raise RuntimeError("ResourceMonitor.report() before the monitor was entered: use it as "
                               "`with ResourceMonitor() as mon: ...` first")
        if self._running:
            return self._build(time.perf_counter(), time.process_time(), complete=False)
        if self._final is None:
            raise RuntimeError("ResourceMonitor did not finish its measurement (exit failed)")
        return json.loads(json.dumps(self._final))  # a deep copy the caller may modify

    def summary(self) -> str:
        """One line: images/s, J/image (or why energy is not known), peak memory, median step."""
        r = self.report()
        parts = [f"{r['images_per_s']:.1f} images/s" if r["images_per_s"] is not None
                 else "images/s n/a (no images counted)"]
        if r["joules_per_image"] is not None:
            parts.append(f"{r['joules_per_image']:.4g} J/image ({r['energy_j']:.4g} J, {r['energy_source']})")
        elif r["energy_j"] is not None:
            parts.append(f"{r['energy_j']:.4g} J ({r['energy_source']}), J/image n/a (no images counted)")
        else:
            parts.append(f"energy n/a: {r['energy_unavailable_reason']}")
        allocs = [d["max_mem_allocated_bytes"] for d in r["devices"] if d["max_mem_allocated_bytes"] is not None]
        used = [d["max_mem_used_bytes"] for d in r["devices"] if d["max_mem_used_bytes"] is not None]
        mem = []
        if allocs:
            mem.append(f"GPU allocated {_fmt_bytes(max(allocs))}")
        if used:
            mem.append(f"GPU used {_fmt_bytes(max(used))}")
        if r["peak_rss_bytes"] is not None:
            mem.append(f"RSS {_fmt_bytes(r['peak_rss_bytes'])}")
        parts.append("peak mem " + (", ".join(mem) if mem else "n/a"))
        med = r["step_ms"]["median"]
        parts.append(f"median step {med:.3g} ms ({r['steps']} steps)" if med is not None else "no steps")
        parts.append(f"wall {r['wall_s']:.3g} s")
        return _one_line(" | ".join(parts))

    def to_json(self, path) -> str:
        """Write the report to ``path`` atomically (temporary file in the same folder, then
        ``os.replace``); returns the path."""
        doc = self.report()
        return atomic_write_json(path, doc, allow_nan=False)

    def __repr__(self) -> str:
        state = "running" if self._running else ("finished" if self._final is not None else "idle")
        return f"ResourceMonitor(devices={self._requested!r}, interval_s={self.interval_s}, {state})"
