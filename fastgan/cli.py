"""The ``fastgan`` command: ``fastgan info``, ``fastgan bench`` (argparse, thin)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

_INTERPRETER_PROBE = r"""
import torch, fastgan
from fastgan.functional import bias_act, resolve_act
from fastgan.functional.bias_act import _bias_act_ref
x = torch.randn(2, 3, 5, 7)
b = torch.randn(3)
y = bias_act(x, b, act="lrelu")
assert fastgan.backend_for(x) == "interpret"
err = (y.double() - _bias_act_ref(x.double(), b.double(), 1, resolve_act("lrelu"))).abs().max().item()
assert err < 1e-5, err
print("ok")
"""


def _interpreter_works() -> str:
    """Run a tiny bias_act kernel in a fresh interpreter-mode process (the mode is fixed at import)."""
    env = dict(os.environ, FASTGAN_BACKEND="interpret", TRITON_INTERPRET="1")
    try:
        r = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE], env=env, capture_output=True,
                           text=True, timeout=300)
    except Exception as exc:
        return f"no ({type(exc).__name__}: {exc})"
    if r.returncode == 0 and r.stdout.strip().endswith("ok"):
        return "yes (bias_act kernel matches the reference)"
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return f"no ({tail})"


def cmd_info(args) -> int:
    import platform

    import torch

    import fastgan
    from fastgan import backend, nvml

    rows = [("fastgan", fastgan.__version__), ("python", platform.python_version()), ("torch", torch.__version__)]
    try:
        import triton

        rows.append(("triton", triton.__version__))
    except Exception as exc:
        rows.append(("triton", f"not importable ({type(exc).__name__}: {exc})"))
    rows.append(("cuda (torch build)", torch.version.cuda or "none (CPU build)"))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, "
                                      f"{p.multi_processor_count} SMs"))
    else:
        rows.append(("cuda devices", "none"))
    ok, reason = nvml.status()
    rows.append(("NVML", "available" if ok else f"unavailable: {reason}"))
    rows.append(("driver", nvml.driver_version() or "unknown"))
    forced = backend.forced_backend()
    rows.append(("FASTGAN_BACKEND", os.environ.get("FASTGAN_BACKEND") or "(unset: automatic)"))
    for dev in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        try:
            chosen = backend.backend_for(torch.empty(0, device=dev))
        except Exception as exc:
            chosen = f"error: {exc}"
        rows.append((f"backend for {dev} tensors", chosen + (f" (forced: {forced})" if forced else "")))
    rows.append(("triton interpreter works", _interpreter_works() if not args.no_probe else "not checked"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def cmd_bench(args) -> int:
    from fastgan.benchmarks.run import main_with_args

    return main_with_args(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgan", description="fastgan: fast GAN training on NVIDIA GPUs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    info = sub.add_parser("info", help="versions, devices, NVML and the backend that would run")
    info.add_argument("--no-probe", action="store_true", help="skip the Triton-interpreter check (a subprocess)")
    info.set_defaults(func=cmd_info)

    from fastgan.benchmarks.run import add_arguments

    bench = sub.add_parser("bench", help="time fastgan against eager PyTorch and torch.compile",
                           description="Time cases for eager, torch.compile and fastgan in one run; "
                                       "print a Markdown table and optionally write the JSON document.")
    add_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
