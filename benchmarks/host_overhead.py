"""Host time per call of the two ways to run a fused op (``fastgan bench --host-overhead``).

fastgan defines each op once and runs it either as its ``torch.autograd.Function`` or as its
``torch.library`` custom op (``fastgan.functional.fused_op``). This measures what each path
costs on the host, which is what a DCGAN-sized step is bound by: a probe op with bias_act's
signature whose body is one ``torch.empty_like`` is built as a FusedOp (namespace
``fastgan_bench``), and each path is called N times per repeat; the table gives the median over
the repeats, in microseconds per call, with and without an input that requires grad.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Optional

import torch
from torch import Tensor

_PROBE = None


def _probe():
    global _PROBE
    if _PROBE is None:
        from fastgan.functional.fused_op import FusedOp

        def forward(x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float, gain: float,
                    clamp: Optional[float]) -> Tensor:
            return torch.empty_like(x)

        def setup(ctx, inputs, output):
            ctx.save_for_backward(inputs[0], inputs[1])

        def backward(ctx, dy):
            return dy, None, None, None, None, None, None

        _PROBE = FusedOp("host_probe", forward, lambda x, *rest: torch.empty_like(x), setup, backward,
                         namespace="fastgan_bench")
    return _PROBE


def _per_call_us(fn, calls: int, repeats: int) -> float:
    for _ in range(calls // 10 + 1):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(times)


def measure(calls: int = 2000, repeats: int = 15) -> dict:
    """{path: {"no_grad_us": .., "requires_grad_us": ..}} on the CPU."""
    probe = _probe()
    x, b = torch.randn(4, 8), torch.randn(8)
    args = (1, "lrelu", 0.2, 1.4142135623730951, None)
    paths = {
        "Function.apply": lambda t: probe.function.apply(t, b, *args),
        "torch.ops custom op": lambda t: torch.ops.fastgan_bench.host_probe(t, b, *args),
        "FusedOp.__call__ (what fastgan runs in eager code)": lambda t: probe(t, b, *args),
    }
    out = {}
    for name, call in paths.items():
        row = {}
        for key, t in (("no_grad_us", x), ("requires_grad_us", x.clone().requires_grad_(True))):
            row[key] = round(_per_call_us(lambda: call(t), calls, repeats), 2)
        out[name] = row
    return out


def main(json_path: str | None = None) -> int:
    results = measure()
    doc = {"what": "host time per call of a fused op's two paths (probe op, CPU, median of 15 x 2000 calls)",
           "torch": torch.__version__, "python": platform.python_version(), "machine": platform.processor() or
           platform.machine(), "results": results}
    print("| path | us/call, no grad | us/call, input requires grad |")
    print("|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['no_grad_us']:.1f} | {row['requires_grad_us']:.1f} |")
    if json_path:
        from fastgan.atomic import atomic_write_json

        atomic_write_json(json_path, doc)
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
