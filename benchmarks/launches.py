"""Device launches per training step (``fastgan bench --count-launches``), eager and fastgan in one run.

A launch is an aten op that runs device work (counted with a ``TorchDispatchMode`` below
autograd: views, ``empty`` allocations and other metadata-only ops are not launches) or a Triton
kernel launch (counted at ``kernel[grid](...)``). With ``--cuda-graphs`` on a GPU, a captured
step is one launch per graph replay.

Counts depend on the architecture and the code path, not on the sizes, so the CPU counts a
64x64 DCGAN of width 4 at batch 2 (the interpreter runs fastgan's kernels: same launches as the
GPU, except that on a GPU the conv dispatcher may pick the vendor convolution for a layer, one
aten launch in place of one Triton launch). Each provider runs in its own process, because the
interpreter is chosen when Triton is imported: ``eager`` is ``Trainer(fused=False)`` (plain torch
modules, losses and penalty), ``fastgan`` ``Trainer(fused=True)``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# the headline case: one full WGAN-GP iteration of the 64x64 DCGAN (as in the steps family)
CASE = dict(resolution=64, loss="wgan", penalty="wgan-gp", n_critic=1)
_NOT_LAUNCHES = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_", "resize_",
                 "lift_fresh", "_has_compatible_shallow_copy_type", "is_same_size", "sym_size", "sym_stride",
                 "sym_numel", "sym_storage_offset", "record_stream", "_unsafe_view",
                 "_record_function_enter_new", "_record_function_exit"}  # profiler ranges (optimizer.step)


def _is_launch(func) -> bool:
    """An aten op that does device work: not a view (its output aliases an input), not metadata."""
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
    if name in _NOT_LAUNCHES:
        return False
    returns = func._schema.returns
    return not (returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns))


class _AtenLaunches(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts
        self.in_triton = 0  # the interpreter's own tensor copies during a Triton launch are not launches

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_triton and _is_launch(func):
            self.counts[f"aten.{func.overloadpacket.__name__}"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_launches(counts: Counter):
    """Within the block, add every aten launch and Triton launch to ``counts`` (by name)."""
    try:
        from triton.runtime.jit import KernelInterface
    except ImportError:  # no Triton: aten launches only
        KernelInterface = None
    mode = _AtenLaunches(counts)
    if KernelInterface is not None:
        original = KernelInterface.__getitem__

        def counting_getitem(self, grid):
            launch = original(self, grid)

            def run(*args, **kwargs):
                counts[f"triton.{getattr(getattr(self, 'fn', None), '__name__', 'kernel')}"] += 1
                mode.in_triton += 1
                try:
                    return launch(*args, **kwargs)
                finally:
                    mode.in_triton -= 1
            return run
        KernelInterface.__getitem__ = counting_getitem
    try:
        with mode:
            yield counts
    finally:
        if KernelInterface is not None:
            KernelInterface.__getitem__ = original


def _summary(counts: Counter) -> dict:
    aten = sum(n for k, n in counts.items() if k.startswith("aten."))
    triton = sum(n for k, n in counts.items() if k.startswith("triton."))
    return {"total": aten + triton, "aten": aten, "triton": triton, "by_name": dict(counts.most_common())}


def measure(provider: str, device: str, width: int, batch: int, graphs: bool = False, resolution: int = 64) -> dict:
    """Launches of one D step, one G step and one full iteration (after one warm-up iteration)."""
    from fastgan.train import Trainer, TrainConfig

    cfg = TrainConfig(**dict(CASE, resolution=resolution), z_dim=16, g_width=width, d_width=width, batch_size=batch,
                      n_embedded=batch, fused=provider != "eager", device=device, amp=False, progress=False,
                      cuda_graphs=graphs, out=os.devnull)
    tr = Trainer(cfg, log=lambda *a, **k: None)
    real = tr.to_device(torch.stack([tr.dataset[i][0] for i in range(batch)]))
    for _ in range(5 if graphs else 1):  # warm-up: kernel compilation, conv dispatch, optimizer state
        tr.train_step([real])
    out = {}
    for what, step in (("d_step", lambda: tr.d_step(real)), ("g_step", lambda: tr.g_step(batch)),
                       ("iteration", lambda: tr.train_step([real]))):
        counts = Counter()
        if graphs and tr.graphs is not None:
            before = {k: s.calls for k, s in tr.graphs.steps.items()}
            step()
            counts["cuda_graph.replay"] = sum(s.calls - before.get(k, 0) for k, s in tr.graphs.steps.items())
        else:
            with count_launches(counts):
                step()
        out[what] = _summary(counts)
    return out


def _child(provider: str, device: str, width: int, batch: int, graphs: bool, resolution: int) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["FASTGAN_BACKEND"] = "eager" if provider == "eager" else ("interpret" if device == "cpu" else "triton")
    code = ("import json, sys; from fastgan.benchmarks.launches import measure; "
            f"print('RESULT ' + json.dumps(measure({provider!r}, {device!r}, {width}, {batch}, {graphs}, "
            f"{resolution})))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{provider}: launch count failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(lines[-1][len("RESULT "):])


def run(device: str | None = None, width: int | None = None, batch: int | None = None, graphs: bool = False,
        providers=("eager", "fastgan"), resolution: int = CASE["resolution"]) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    width = width or (64 if device == "cuda" else 4)
    batch = batch or (64 if device == "cuda" else 2)
    doc = {"what": "device launches per training step (aten ops that launch device work + Triton launches)",
           "case": f"DCGAN {resolution}x{resolution}, {CASE['loss']} + {CASE['penalty']}, "
                   f"width {width}, batch {batch}", "device": device, "torch": torch.__version__, "providers": {}}
    for p in providers:
        doc["providers"][p] = _child(p, device, width, batch, False, resolution)
    if graphs:
        doc["providers"]["fastgan+graphs"] = (_child("fastgan", device, width, batch, True, resolution)
                                              if device == "cuda"
                                              else "n/a: CUDA graphs need a CUDA device")
    if "eager" in doc["providers"] and "fastgan" in doc["providers"]:
        e, f = doc["providers"]["eager"], doc["providers"]["fastgan"]
        doc["ratio_fastgan_over_eager"] = {k: round(f[k]["total"] / e[k]["total"], 3) for k in e}
    return doc


def to_markdown(doc: dict, top: int = 8) -> str:
    lines = [f"launches per step: {doc['case']}, {doc['device']}", "",
             "| step | " + " | ".join(doc["providers"]) + " | fastgan / eager |",
             "|---|" + "---|" * (len(doc["providers"]) + 1)]
    for what in ("d_step", "g_step", "iteration"):
        cells = []
        for res in doc["providers"].values():
            cells.append(res if isinstance(res, str) else
                         f"{res[what]['total']} ({res[what]['triton']} Triton + {res[what]['aten']} aten)")
        ratio = doc.get("ratio_fastgan_over_eager", {}).get(what, "-")
        lines.append(f"| {what} | " + " | ".join(cells) + f" | {ratio} |")
    for name, res in doc["providers"].items():
        if not isinstance(res, str):
            most = list(res["iteration"]["by_name"].items())[:top]
            lines.append(f"\n{name}, one iteration, most launched: " + ", ".join(f"{k} {n}" for k, n in most))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastgan bench --count-launches", description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--cuda-graphs", action="store_true")
    args = p.parse_args(argv)
    doc = run(args.device, graphs=args.cuda_graphs)
    print(to_markdown(doc))
    if args.json:
        from fastgan.atomic import atomic_write_json

        atomic_write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
