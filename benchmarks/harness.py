"""The benchmark harness: time cases for several providers in one run, measure the
ceilings in the same run, and write one JSON document (DESIGN.md section 4) plus a table.

A case is a ``Case``: name, family, shape, dtype, the bytes it must move and the FLOPs it
must do, and ``make(device, dtype) -> {provider: entry}``. An entry is a zero-argument
callable (timed as is), a string (why this provider cannot run the case), or a ``Lazy``
(a builder run only when the provider is selected; it returns the callable, or
``(callable, extra fields)``, and what it raises becomes the record's ``error``). An optional
``"<provider>:extra"`` dict adds fields to that provider's record (DESIGN.md allows extra
fields; the step cases record the torch.compile configuration that ran this way). A
provider the case cannot run is recorded with ``error`` set to the reason, never silently
dropped; errors that start with ``"n/a: "`` mark a provider that does not apply to the
case at all (left out of the Markdown table, kept in the JSON).

Timing: on CUDA ``triton.testing.do_bench`` (median and 20/80 percentiles over event-timed
runs; it flushes the L2 cache before every run, so inputs are never cache-resident); on the
CPU a wall-clock loop. Energy: the mean power from the NVML total-energy counter while the
case runs back to back for at least 0.3 s (0.15 s for op cases in --quick), windowed on the
counter's own updates, times the median time per call.

torch.compile: ``compile_fn`` is the one place cases call it (so ``--compile-backend`` reaches
every case), and the dynamo caches are reset before each case that times ``compile``: every
case compiles for its own static shapes, and dynamo's per-function recompile limit is never
reached (past it, dynamo silently runs eager code, which would pass for a compile result).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import platform
import socket
import statistics
import signal
import subprocess
import threading
import time
from typing import Callable

import torch

from fastgan.backend import conv_dispatch

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
    extra: dict = dataclasses.field(default_factory=dict)  # extra fields copied into every record


class Lazy:
    """A provider entry built only when that provider is selected (see the module doc)."""

    def __init__(self, build: Callable[[], object]):
        self.build = build


# torch.compile settings for every case of a run (``--compile-backend``).
COMPILE = {"backend": "inductor"}


def compile_fn(fn, **kwargs):
    """``torch.compile(fn)`` with the run's backend (default inductor, torch.compile's default)
    unless ``backend=`` is given."""
    kwargs.setdefault("backend", COMPILE["backend"])
    return torch.compile(fn, **kwargs)


def dtype_of(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


# ----------------------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable, device: torch.device, quick: bool = True, min_calls: int = 10) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()``; on CUDA over at least ``min_calls`` timed calls
    (do_bench's repetitions are given in ms, which for a 10 ms training step would be 4 calls)."""
    if device.type == "cuda":
        import triton.testing

        warmup, rep = (10, 40) if quick else (25, 200)
        # A cold first call (torch.compile, Triton JIT, the conv dispatcher's timing, cuDNN and
        # cuBLAS setup) can take many seconds; do_bench turns warmup/rep (ms) into call counts
        # from its own estimate of one call, so a cold call must never size them: 20 s of
        # compilation would become 200 s of timed calls. Run it first, size from the second,
        # and cap the loops.
        fn()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        one_ms = (time.perf_counter() - t0) * 1e3
        cap_ms = 2000.0 if quick else 10000.0
        rep = min(max(rep, min_calls * one_ms), max(rep, cap_ms))
        warmup = min(max(warmup, 2 * one_ms), max(warmup, cap_ms / 4))
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


def busy_power_w(fn: Callable, read_mj: Callable[[], int | None], seconds: float, calls_per_poll: int = 1,
                 clock: Callable[[], float] = time.perf_counter, max_wait_s: float = 1.0) -> float | None:
    """Mean power (W) while ``fn`` runs back to back, from an energy counter (``read_mj``, mJ)
    that updates in steps: the window opens at one observed counter update and closes at the
    first update after ``seconds``, so the energy difference is exact for the window and not
    quantised by the counter's update interval. The counter is read every ``calls_per_poll``
    calls (a poll costs host time; the GPU queue stays full). None when the counter does not
    move within ``max_wait_s`` (no working counter)."""

    def run_until_update(after: float) -> tuple[int, float] | None:
        last = read_mj()
        if last is None:
            return None
        give_up = after + max_wait_s
        while True:
            for _ in range(calls_per_poll):
                fn()
            now, value = clock(), read_mj()
            if value is None:
                return None
            if value != last:  # an update: the one we wait for once past ``after``
                if now >= after:
                    return value, now
                last = value
            if now > give_up:
                return None

    opened = run_until_update(clock())
    if opened is None:
        return None
    e0, t0 = opened
    closed = run_until_update(t0 + seconds)
    if closed is None:
        return None
    e1, t1 = closed
    if t1 <= t0 or e1 < e0:
        return None
    return (e1 - e0) / 1e3 / (t1 - t0)


def energy_per_call_j(fn: Callable, device: torch.device, median_ms: float, seconds: float = 0.3) -> float | None:
    """Joules per call: the mean power while ``fn`` runs back to back for at least ``seconds``
    (NVML total-energy counter, windowed on its updates: :func:`busy_power_w`) times the median
    time of one call. Board power, as NVML reports it (on recent GPUs sampled, not integrated,
    by the driver: an estimate)."""
    if device.type != "cuda":
        return None
    from fastgan import nvml

    index = nvml.device_index(device)
    if nvml.total_energy_mj(index) is None:
        return None
    per_poll = max(1, math.ceil(1.0 / max(median_ms, 1e-3)))  # about 1 ms of work between counter reads
    watts = busy_power_w(fn, lambda: nvml.total_energy_mj(index), seconds, per_poll)
    _sync(device)
    return None if watts is None else watts * median_ms / 1e3


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
    rec.update({k: v for k, v in case.extra.items() if k not in RECORD_FIELDS})
    rec.update(case=case.case, family=case.family, provider=provider, dtype=case.dtype, shape=list(case.shape),
               error=error)
    return rec


def _error_text(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip()
    return msg.splitlines()[0][:500] if msg else type(exc).__name__


def _reraise_interrupt(exc: BaseException) -> None:
    """Raise KeyboardInterrupt if ``exc`` was caused by one: a Ctrl-C that lands inside
    ``torch.cuda.graph`` comes out as capture_end's RuntimeError (or a CaptureError) with the
    KeyboardInterrupt in its chain, and must still end the run."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(f"interrupted ({type(exc).__name__} followed)") from exc
        seen.add(id(e))
        e = e.__cause__ or e.__context__


def _reset_compiler() -> None:
    try:
        torch._dynamo.reset()
    except Exception:
        pass


def provider_order(providers: list[str]) -> list[str]:
    """The order providers run in within a case: ``compile`` last, so that a budget or an
    interrupt that lands during its (long) compilation leaves the other timings recorded."""
    return [p for p in providers if p != "compile"] + [p for p in providers if p == "compile"]


def run_case(case: Case, providers: list[str], device: torch.device, ceilings: dict, quick: bool = True,
             log: Callable[[str], None] = print, records: list | None = None,
             deadline: float | None = None) -> list[dict]:
    """Time ``case`` for each provider (in :func:`provider_order`); returns the records.

    ``records``: a list the records are appended to as each provider finishes (so a caller that
    catches a KeyboardInterrupt keeps the finished ones). ``deadline``: a ``time.perf_counter()``
    value after which no further provider starts (it is recorded as skipped)."""
    records = [] if records is None else records
    providers = provider_order(providers)
    if "compile" in providers:
        _reset_compiler()
    try:
        fns = case.make(device, dtype_of(case.dtype))
    except Exception as exc:  # the case cannot even build its inputs here
        _reraise_interrupt(exc)
        records.extend(_empty_record(case, p, f"setup failed: {_error_text(exc)}") for p in providers)
        return records
    for provider in providers:
        if deadline is not None and time.perf_counter() > deadline:
            records.append(_empty_record(case, provider, "skipped: the run's time budget was spent before this "
                                                         "provider"))
            continue
        fn = fns.get(provider)
        extra = dict(fns.get(f"{provider}:extra") or {})
        if isinstance(fn, Lazy):
            try:
                built = fn.build()
            except Exception as exc:
                _reraise_interrupt(exc)
                built = f"setup failed: {_error_text(exc)}"
            if isinstance(built, tuple):
                built, more = built
                extra.update(more or {})
            fn = built
        if provider.startswith("fastgan") and device.type != "cuda" and callable(fn):
            fn = "fastgan's Triton path needs CUDA (on the CPU it runs the eager reference or the interpreter, " \
                 "neither a timing path)"
        if fn is None:
            fn = fns.get(f"{provider}:error") or (
                "n/a: CUDA-graph capture applies to whole training steps (family 'steps')"
                if provider == "fastgan+graphs" and case.family != "steps" else "not provided for this case")
        if isinstance(fn, str):  # the case explains why this provider cannot run
            rec = _empty_record(case, provider, fn)
            rec.update({k: v for k, v in extra.items() if k not in RECORD_FIELDS})
            records.append(rec)
            if not fn.startswith("n/a: "):
                log(f"  {case.case:<40} {provider:<15} error: {fn[:80]}")
            continue
        rec = _empty_record(case, provider)
        rec.update({k: v for k, v in extra.items() if k not in RECORD_FIELDS})
        conv_dispatch.usage(reset=True)
        try:
            median, p20, p80 = time_fn(fn, device, quick, min_calls=20 if case.family == "steps" else 10)
            if provider.startswith("fastgan"):  # which implementation each conv shape ran, and its times
                rec["conv_impls"] = conv_dispatch.usage()
            rec.update(median_ms=median, p20_ms=p20, p80_ms=p80)
            rec["gbps"] = case.bytes / (median * 1e-3) / 1e9
            rec["tflops"] = case.flops / (median * 1e-3) / 1e12 if case.flops else None
            rec["roofline_frac"] = roofline_fraction(case, median, ceilings)
            rec["peak_mem_bytes"] = peak_memory_bytes(fn, device)
            seconds = 0.15 if (quick and case.family == "ops") else 0.3
            rec["energy_j"] = energy_per_call_j(fn, device, median, seconds)
            if case.images:
                rec["images_per_s"] = case.images / (median * 1e-3)
                rec["energy_j_per_1k_images"] = (rec["energy_j"] / case.images * 1e3
                                                 if rec["energy_j"] is not None else None)
        except Exception as exc:
            _reraise_interrupt(exc)
            for k in ("median_ms", "p20_ms", "p80_ms", "gbps", "tflops", "roofline_frac", "peak_mem_bytes",
                      "energy_j", "images_per_s"):
                rec[k] = None
            rec["error"] = _error_text(exc)
        records.append(rec)
        log(f"  {case.case:<40} {provider:<15} " + (f"{rec['median_ms']:.4f} ms" if rec["error"] is None
                                                       else f"error: {rec['error'][:80]}"))
    del fns
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


class SigintGuard:
    """SIGINT handling for a benchmark run: each SIGINT sets ``requested``; only inside
    ``raising()`` (a case being timed) does it also raise KeyboardInterrupt, as Python's default
    handler would. Between cases and while results are written a Ctrl-C is recorded, not raised
    at an arbitrary line, and one whose KeyboardInterrupt Python swallowed (raised inside an
    import lock's weakref callback: "Exception ignored in ...") is not lost."""

    def __init__(self):
        self.requested = threading.Event()
        self._raise = False

    def handler(self, signum, frame):
        self.requested.set()
        if self._raise:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def raising(self):
        self._raise = True
        try:
            yield
        finally:
            self._raise = False


@contextlib.contextmanager
def sigint_guard():
    """Install a :class:`SigintGuard` as the SIGINT handler for the block (the main thread
    only, and not where SIGINT is ignored, as in a background job: as Python itself, which
    then installs no handler; there the guard never fires and nothing changes)."""
    guard = SigintGuard()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield guard
        return
    previous = signal.signal(signal.SIGINT, guard.handler)
    try:
        yield guard
    finally:
        signal.signal(signal.SIGINT, previous)


def run(cases: list[Case], providers: list[str], device: torch.device, quick: bool = True,
        log: Callable[[str], None] = print, budget_s: float | None = None,
        on_progress: Callable[[dict], None] | None = None, sigint: SigintGuard | None = None) -> dict:
    """Measure the ceilings, then every case for every provider.

    ``budget_s``: wall-clock seconds for the whole run; once spent, the remaining cases are
    recorded with the error "skipped: ..." (the document stays complete and valid, which a
    killed process would not leave). ``on_progress(doc)`` is called once the ceilings are
    measured and after every case (the runner writes the JSON there, so a run cut short still
    leaves its results); a case whose providers outlast the budget records the providers it
    did not start as skipped. A KeyboardInterrupt (Ctrl-C, or ``timeout -s INT`` as
    benchmarks/gpu_check.sh sends) ends the run early the same way: the providers of the case
    in progress that finished keep their records, the others and the remaining cases are
    recorded as "skipped: interrupted ..." and the document is returned. SIGINT goes through
    ``sigint`` (a :class:`SigintGuard`; by default one installed for this call): a case is
    interrupted at once, a Ctrl-C between cases ends the run at the next case.
    """
    if sigint is None:
        with sigint_guard() as guard:
            return _run(cases, providers, device, quick, log, budget_s, on_progress, guard)
    return _run(cases, providers, device, quick, log, budget_s, on_progress, sigint)


def _run(cases, providers, device, quick, log, budget_s, on_progress, sigint: SigintGuard) -> dict:
    t0 = time.perf_counter()
    doc = environment(device)
    doc["compile_backend"] = COMPILE["backend"]
    log(f"measuring ceilings on {device} ...")
    doc["ceilings"] = measure_ceilings(device, quick)
    doc["mode"] = "quick" if quick else "full"
    doc["records"] = []
    if on_progress is not None:
        on_progress(doc)
    skipped = 0
    interrupted = False
    for case in cases:
        spent = time.perf_counter() - t0
        if sigint.requested.is_set() and not interrupted:  # a Ctrl-C since the last case
            interrupted = doc["interrupted"] = True
            log(f"interrupted before {case.case}: the remaining cases are recorded as skipped")
        if interrupted or (budget_s is not None and spent > budget_s):
            skipped += 1
            why = ("skipped: interrupted (KeyboardInterrupt / SIGINT) before this case finished" if interrupted
                   else f"skipped: the run's time budget ({budget_s:.0f} s) was spent before this case")
            doc["records"].extend(_empty_record(case, p, why) for p in providers)
            continue
        records = []
        try:
            with sigint.raising():
                run_case(case, providers, device, doc["ceilings"], quick, log, records=records,
                         deadline=None if budget_s is None else t0 + budget_s)
        except KeyboardInterrupt:
            interrupted = True
            doc["interrupted"] = True
            skipped += 1
            done = {r["provider"] for r in records}  # providers finished before the interrupt stay
            records.extend(_empty_record(case, p, "skipped: interrupted (KeyboardInterrupt / SIGINT) before this "
                                                  "provider finished") for p in provider_order(providers)
                           if p not in done)
            log(f"interrupted during {case.case}: the remaining cases are recorded as skipped")
        doc["records"].extend(records)
        if interrupted:
            continue
        if on_progress is not None:
            on_progress(doc)
    if sigint.requested.is_set():  # also one after the last case
        interrupted = doc["interrupted"] = True
    doc["elapsed_s"] = time.perf_counter() - t0
    if skipped and not interrupted:
        log(f"time budget of {budget_s:.0f} s spent: {skipped} case(s) skipped")
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
    from fastgan.atomic import atomic_write_json

    atomic_write_json(path, doc)



def short_dtype(name: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}.get(name, name)


def result_filename(doc: dict) -> str:
    """The name a result document is kept under in benchmarks/results/ (see its README):
    ``<date>_<gpu>_<commit>.json``, e.g. ``2025-01-31_h200_1a2b3c4.json``."""
    import re

    gpu = (doc.get("gpu") or "cpu").lower().replace("nvidia", "")
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu).strip("-") or "gpu"
    commit = doc.get("commit") or "nocommit"
    short = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")
    return f"{(doc.get('date') or 'nodate')[:10]}_{gpu}_{short}.json"


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


def _note(r: dict) -> str:
    if r["error"]:
        return r["error"][:70]
    return (r.get("config") or "")[:70]


def to_markdown(doc: dict) -> str:
    c = doc["ceilings"]
    lines = [f"device: {doc.get('gpu') or doc.get('device')}  torch {doc['torch']}  triton {doc['triton']}  "
             f"commit {doc['commit']}",
             f"ceilings: copy {c['copy_gbps']:.0f} GB/s, bf16 {c['bf16_tflops']:.1f} TFLOP/s, "
             f"fp32 {c['fp32_tflops']:.1f} TFLOP/s" + (f", tf32 {c['tf32_tflops']:.1f}" if "tf32_tflops" in c else ""),
             "",
             "| case | dtype | provider | median ms | GB/s | TFLOP/s | roofline | x eager | x compile | J/call | img/s "
             "| note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ratios = speedups(doc)
    for r in doc["records"]:
        if (r["error"] or "").startswith("n/a: "):
            continue
        ve, vc = ratios[(r["case"], r["dtype"], r["provider"])]
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['provider']} | {_fmt(r['median_ms'], '.4f')} | {_fmt(r['gbps'], '.1f')}"
            f" | {_fmt(r['tflops'], '.2f')} | {_fmt(r['roofline_frac'], '.1%')} | {_fmt(ve, '.2f')}"
            f" | {_fmt(vc, '.2f')} | {_fmt(r['energy_j'], '.4f')} | {_fmt(r['images_per_s'], '.0f')} | {_note(r)} |")
    return "\n".join(lines)


def to_summary(doc: dict) -> str:
    """The compact speedup summary: one line per case and dtype.

    ``case dtype  eager <ms>  compile <x eager>  fastgan <x eager>/<x compile> roof <frac>
    graphs <x eager>/<x compile>  <images/s and joules per 1000 images of the fastest provider>``
    (joules on CUDA with NVML only); a provider that did not
    run shows ``-`` (its error is in the JSON and the full table).
    """
    ratios = speedups(doc)
    groups: dict = {}
    for r in doc["records"]:
        groups.setdefault((r["case"], r["dtype"]), {})[r["provider"]] = r
    c = doc["ceilings"]
    lines = [f"speedup summary ({doc.get('gpu') or doc.get('device')}, commit {doc.get('commit')}): "
             f"x = eager/provider or compile/provider (median times, same run); roof = fraction of the "
             f"measured roofline (copy {c['copy_gbps']:.0f} GB/s, bf16 {c['bf16_tflops']:.0f} TFLOP/s)"]
    width = max([len(k[0]) for k in groups] + [20])
    for (case, dtype), recs in groups.items():
        eager = recs.get("eager")
        parts = [f"{case:<{width}} {short_dtype(dtype):<4}",
                 f"eager {_fmt(eager and eager['median_ms'], '8.3f')} ms"]
        comp = recs.get("compile")
        ce = ratios.get((case, dtype, "compile"), (None, None))[0] if comp else None
        parts.append(f"compile {_fmt(ce, '5.2f')}x")
        for prov, label in (("fastgan", "fastgan"), ("fastgan+graphs", "graphs")):
            r = recs.get(prov)
            if r is None or (r["error"] or "").startswith("n/a: "):
                continue
            ve, vc = ratios[(case, dtype, prov)]
            parts.append(f"{label} {_fmt(ve, '5.2f')}x/{_fmt(vc, '5.2f')}x")
        best = [r for r in recs.values() if r["error"] is None]
        if best:
            fastest = min(best, key=lambda r: r["median_ms"])
            if fastest["roofline_frac"] is not None:
                parts.append(f"roof {fastest['roofline_frac']:6.1%} ({fastest['provider']})")
            if fastest["images_per_s"]:
                parts.append(f"{fastest['images_per_s']:.0f} img/s")
            if fastest.get("energy_j_per_1k_images") is not None:
                parts.append(f"{fastest['energy_j_per_1k_images']:.1f} J/1k img")
        lines.append("  ".join(parts))
    errors = sum(1 for r in doc["records"] if r["error"] and not r["error"].startswith("n/a: "))
    if errors:
        lines.append(f"({errors} record(s) with an error; see the full table or the JSON)")
    lines.append(f"keep a GPU run as benchmarks/results/{result_filename(doc)}")
    return "\n".join(lines)
