"""The benchmark harness: time cases for several providers in one run, measure the
ceilings in the same run, and write one JSON document (DESIGN.md section 4) plus a table.

A case is a ``Case``: name, family, shape, dtype, the bytes it must move and the FLOPs it
must do, and ``make(device, dtype) -> {provider: zero-argument callable}``. A provider the
case cannot run is recorded with ``error`` set to the reason, never silently dropped.

Timing: on CUDA ``triton.testing.do_bench`` (median and 20/80 percentiles over event-timed
runs; it flushes the L2 cache before every run, so inputs are never cache-resident); on the
CPU a wall-clock loop. Energy: the NVML total-energy counter around a separate loop of at
least 0.3 s, divided by the number of calls.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import time
from typing import Callable

import torch

SCHEMA = 1
PROVIDERS = ("eager", "compile", "fastgan", "fastgan+graphs")
RECORD_FIELDS = ("case", "family", "provider", "dtype", "shape", "median_ms", "p20_ms", "p80_ms", "gbps",
                 "tflops", "roofline_frac", "peak_mem_bytes", "energy_j", "images_per_s", "error")
TOP_FIELDS = ("schema", "commit", "date", "host", "gpu", "driver", "cuda", "torch", "triton", "ceilings", "records")


@dataclasses.dataclass
class Case:
    case: str                      # e.g. "bias_act.lrelu.fwd"
    family: str                    # "ops" | "layers" | "steps"
    shape: list
    dtype: str                     # torch dtype name, e.g. "bfloat16"
    bytes: int                     # fewest bytes the work must move through memory
    flops: int
    make: Callable[[torch.device, torch.dtype], dict]  # provider -> zero-arg callable
    images: int | None = None      # images per call, for steps


def dtype_of(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


# ----------------------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable, device: torch.device, quick: bool = True) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()``."""
    if device.type == "cuda":
        import triton.testing

        warmup, rep = (10, 40) if quick else (25, 200)
        q = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return float(q[0]), float(q[1]), float(q[2])
    fn()  # warm-up (compilation, allocation)
    fn()
    budget, times = (0.3 if quick else 2.0), []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * (len(times) - 1) + 0.5))]  # noqa: E731
    return statistics.median(times), pick(0.2), pick(0.8)


def energy_per_call_j(fn: Callable, device: torch.device, median_ms: float, seconds: float = 0.3) -> float | None:
    """Joules per call from the NVML total-energy counter over a loop of >= ``seconds``."""
    if device.type != "cuda":
        return None
    from fastgan import nvml

    index = nvml.device_index(device)
    if nvml.total_energy_mj(index) is None:
        return None
    calls = max(10, math.ceil(seconds * 1e3 / max(median_ms, 1e-3)))
    _sync(device)
    e0 = nvml.total_energy_mj(index)
    for _ in range(calls):
        fn()
    _sync(device)
    e1 = nvml.total_energy_mj(index)
    return (e1 - e0) / 1e3 / calls


def peak_memory_bytes(fn: Callable, device: torch.device) -> int | None:
    """torch.cuda.max_memory_allocated over one call (inputs included)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device))


# ----------------------------------------------------------------------------- ceilings

def measure_ceilings(device: torch.device, quick: bool = True) -> dict:
    """Copy bandwidth (bytes read + written per second) and matmul rates, measured now."""
    on_gpu = device.type == "cuda"
    n_copy = (1 << 30 if on_gpu else 1 << 26) // 4
    src = torch.randn(n_copy, device=device)
    dst = torch.empty_like(src)
    ms, _, _ = time_fn(lambda: dst.copy_(src), device, quick)
    copy_gbps = 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
    del src, dst

    def matmul_tflops(dtype, n):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        t, _, _ = time_fn(lambda: a @ b, device, quick)
        return 2 * n ** 3 / (t * 1e-3) / 1e12

    n = 8192 if on_gpu else 512
    ceilings = {"copy_gbps": copy_gbps, "bf16_tflops": matmul_tflops(torch.bfloat16, n),
                "fp32_tflops": matmul_tflops(torch.float32, n)}
    if on_gpu:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            ceilings["tf32_tflops"] = matmul_tflops(torch.float32, n)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    return ceilings


def roofline_fraction(case: Case, median_ms: float, ceilings: dict) -> float | None:
    """Floor time (max of bytes / copy bandwidth, FLOPs / matmul rate) over the measured time."""
    if not median_ms or median_ms <= 0:
        return None
    floor_s = case.bytes / (ceilings["copy_gbps"] * 1e9)
    peak = ceilings["bf16_tflops"] if case.dtype in ("bfloat16", "float16") else ceilings.get(
        "tf32_tflops", ceilings["fp32_tflops"])
    if case.flops and peak:
        floor_s = max(floor_s, case.flops / (peak * 1e12))
    return floor_s / (median_ms * 1e-3)


# ----------------------------------------------------------------------------- environment

def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return None


def environment(device: torch.device) -> dict:
    from fastgan import __version__, nvml

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    available, reason = nvml.status()
    return {
        "schema": SCHEMA,
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "driver": nvml.driver_version(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": triton_version,
        "fastgan": __version__,
        "python": platform.python_version(),
        "device": str(device),
        "nvml": {"available": available, "reason": reason},
    }


# ----------------------------------------------------------------------------- running

def _empty_record(case: Case, provider: str, error: str | None = None) -> dict:
    rec = {k: None for k in RECORD_FIELDS}
    rec.update(case=case.case, family=case.family, provider=provider, dtype=case.dtype, shape=list(case.shape),
               error=error)
    return rec


def run_case(case: Case, providers: list[str], device: torch.device, ceilings: dict, quick: bool = True,
             log: Callable[[str], None] = print) -> list[dict]:
    records = []
    try:
        fns = case.make(device, dtype_of(case.dtype))
    except Exception as exc:  # the case cannot even build its inputs here
        return [_empty_record(case, p, f"setup failed: {type(exc).__name__}: {exc}") for p in providers]
    for provider in providers:
        fn = fns.get(provider)
        if fn is None:
            records.append(_empty_record(case, provider, fns.get(f"{provider}:error", "not provided for this case")))
            continue
        if isinstance(fn, str):  # the case explains why this provider cannot run
            records.append(_empty_record(case, provider, fn))
            continue
        rec = _empty_record(case, provider)
        try:
            median, p20, p80 = time_fn(fn, device, quick)
            rec.update(median_ms=median, p20_ms=p20, p80_ms=p80)
            rec["gbps"] = case.bytes / (median * 1e-3) / 1e9
            rec["tflops"] = case.flops / (median * 1e-3) / 1e12 if case.flops else None
            rec["roofline_frac"] = roofline_fraction(case, median, ceilings)
            rec["peak_mem_bytes"] = peak_memory_bytes(fn, device)
            rec["energy_j"] = energy_per_call_j(fn, device, median)
            if case.images:
                rec["images_per_s"] = case.images / (median * 1e-3)
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}".strip()
            rec["error"] = msg.splitlines()[0][:500] if msg else type(exc).__name__
        records.append(rec)
        log(f"  {case.case:<40} {provider:<15} " + (f"{rec['median_ms']:.4f} ms" if rec["error"] is None
                                                       else f"error: {rec['error'][:80]}"))
    del fns
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def run(cases: list[Case], providers: list[str], device: torch.device, quick: bool = True,
        log: Callable[[str], None] = print) -> dict:
    doc = environment(device)
    log(f"measuring ceilings on {device} ...")
    doc["ceilings"] = measure_ceilings(device, quick)
    doc["mode"] = "quick" if quick else "full"
    doc["records"] = []
    for case in cases:
        doc["records"].extend(run_case(case, providers, device, doc["ceilings"], quick, log))
    return doc


# ----------------------------------------------------------------------------- output

def validate(doc: dict) -> None:
    """Raise ValueError if ``doc`` does not follow DESIGN.md section 4."""
    missing = [k for k in TOP_FIELDS if k not in doc]
    if missing:
        raise ValueError(f"result document lacks {missing}")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"schema {doc['schema']} != {SCHEMA}")
    for k in ("copy_gbps", "bf16_tflops", "fp32_tflops"):
        v = doc["ceilings"].get(k)
        if not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"ceiling {k} must be a positive number, got {v!r}")
    for i, rec in enumerate(doc["records"]):
        missing = [k for k in RECORD_FIELDS if k not in rec]
        if missing:
            raise ValueError(f"record {i} lacks {missing}")
        if rec["family"] not in ("ops", "layers", "steps"):
            raise ValueError(f"record {i}: family {rec['family']!r}")
        if rec["provider"] not in PROVIDERS:
            raise ValueError(f"record {i}: provider {rec['provider']!r}")
        if rec["error"] is None:
            for k in ("median_ms", "p20_ms", "p80_ms", "gbps"):
                if not isinstance(rec[k], (int, float)) or not rec[k] > 0 or not math.isfinite(rec[k]):
                    raise ValueError(f"record {i} ({rec['case']}, {rec['provider']}): {k} = {rec[k]!r}")
            if not rec["p20_ms"] <= rec["median_ms"] <= rec["p80_ms"]:
                raise ValueError(f"record {i}: percentiles out of order")
        elif not isinstance(rec["error"], str) or rec["median_ms"] is not None:
            raise ValueError(f"record {i}: an errored record carries no timing and a string error")


def write_json(doc: dict, path: str) -> None:
    """Write atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def speedups(doc: dict) -> dict:
    """{(case, dtype, provider): (vs eager, vs compile)} from the same run."""
    by_key = {(r["case"], r["dtype"], r["provider"]): r for r in doc["records"]}
    out = {}
    for (case, dtype, provider), r in by_key.items():
        ratios = []
        for base in ("eager", "compile"):
            b = by_key.get((case, dtype, base))
            ok = b and b["median_ms"] and r["median_ms"]
            ratios.append(b["median_ms"] / r["median_ms"] if ok else None)
        out[(case, dtype, provider)] = tuple(ratios)
    return out


def to_markdown(doc: dict) -> str:
    c = doc["ceilings"]
    lines = [f"device: {doc.get('gpu') or doc.get('device')}  torch {doc['torch']}  triton {doc['triton']}  "
             f"commit {doc['commit']}",
             f"ceilings: copy {c['copy_gbps']:.0f} GB/s, bf16 {c['bf16_tflops']:.1f} TFLOP/s, "
             f"fp32 {c['fp32_tflops']:.1f} TFLOP/s" + (f", tf32 {c['tf32_tflops']:.1f}" if "tf32_tflops" in c else ""),
             "",
             "| case | dtype | provider | median ms | GB/s | TFLOP/s | roofline | x eager | x compile | J/call | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    ratios = speedups(doc)
    for r in doc["records"]:
        ve, vc = ratios[(r["case"], r["dtype"], r["provider"])]
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['provider']} | {_fmt(r['median_ms'], '.4f')} | {_fmt(r['gbps'], '.1f')}"
            f" | {_fmt(r['tflops'], '.2f')} | {_fmt(r['roofline_frac'], '.1%')} | {_fmt(ve, '.2f')}"
            f" | {_fmt(vc, '.2f')} | {_fmt(r['energy_j'], '.4f')} | {(r['error'] or '')[:60]} |")
    return "\n".join(lines)
