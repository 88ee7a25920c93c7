"""The static sm_90 kernel report (``fastgan bench --static``): no GPU needed.

1. Record: one full WGAN-GP iteration of the 64x64 DCGAN (batch 64, width 64, float32 and bf16
   autocast) runs on the CPU through fastgan's Triton launch path with every launch recorded and
   *not* executed (nothing reads a tensor value on the host, so the shapes are the real ones), the
   launchers choosing their GPU configurations (block sizes, TF32 as cuDNN's default).
2. Compile: in a process without the interpreter, every distinct specialisation is compiled for
   sm_90 with the installed Triton (the JIT's rules: ints equal to 1 become constants, ints and
   pointers divisible by 16 carry that hint), and ptxas (Triton's own) reports registers,
   spills and shared memory.

The recording also tallies the pre-activations the training step keeps for its backward
(``z_bytes``, per dtype): ``stored`` is what the conv epilogues write (an activation whose
derivative needs z: tanh, a clamp), ``avoided`` what they would write if every nonlinear
epilogue kept z, which fastgan does not: relu / lrelu read act'(y) from the output y, which the
next layer keeps anyway (``fastgan.functional.conv._act_from_y``).

One record per specialisation: ``kernel``, ``case`` (where the step launches it), ``regs``,
``spill_bytes``, ``smem_bytes``, ``mma`` (wgmma / mma.sync / none), ``async_copy`` (tma /
cp.async / none), ``ctas``, ``sms`` (132), ``occupancy`` (resident warps per SM / 64, from
registers, shared memory and threads), ``waves`` (CTAs / resident CTAs of the whole GPU) and
``roofline_us`` (max of FLOPs / 790 TFLOP/s and bytes / 4.3 TB/s, the H200 ceilings measured
before; bytes = every tensor argument once).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

SMS, PEAK_FLOPS, PEAK_BYTES = 132, 790e12, 4.3e12
REGS_PER_SM, SMEM_PER_SM, WARPS_PER_SM, CTAS_PER_SM = 65536, 228 * 1024, 64, 32
_DTYPES = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float64": "fp64",
           "torch.int32": "i32", "torch.int64": "i64", "torch.int8": "i8", "torch.uint8": "u8", "torch.bool": "i1"}


# ----------------------------------------------------------------------------- 1. record (interpreter)

def _conv_flops(named: dict) -> int:
    """2 * MACs of one _conv_act_kernel launch, from its integer arguments."""
    try:
        n, cig, cog, oh, ow = (named[k] for k in ("N", "CIG", "COG", "OH", "OW"))
        taps = named["KH"] * named["KW"]
        groups_phases = named.get("_grid1", 1)
        if named.get("TRANSPOSED"):  # each output pixel sees about taps / (stride_h * stride_w) taps
            taps = max(1, taps // (named["STR_H"] * named["STR_W"]))
            return 2 * n * oh * ow * cog * cig * taps * max(1, groups_phases // (named["STR_H"] * named["STR_W"]))
        return 2 * n * oh * ow * cog * cig * taps * groups_phases
    except KeyError:
        return 0


def _tally_saved_z(conv, tally: dict, where: dict):
    """A wrapper of ``conv._conv_act`` that adds the bytes of each pre-activation the backward
    needs to ``tally[dtype]``: "stored" (z kept) or "avoided" (act' read from y instead)."""
    import torch

    original = conv._conv_act

    def counting(x, w, b, geom, spec):
        y = original(x, w, b, geom, spec)
        wanted = (conv._needs_z(spec) and torch.is_grad_enabled()
                  and any(t is not None and t.requires_grad for t in (x, w, b)))
        if wanted:
            entry = tally.setdefault(where["dtype"], {"stored": 0, "avoided": 0})
            entry["avoided" if conv._act_from_y(spec) else "stored"] += y.numel() * y.element_size()
        return y
    return original, counting


def record(resolution: int = 64, batch: int = 64, width: int = 64, z_bytes: dict | None = None) -> list:
    """The launches of one iteration, float32 then bf16 autocast (run with FASTGAN_BACKEND=interpret);
    ``z_bytes`` (a dict) receives the pre-activation tally per dtype (module doc)."""
    import torch
    from triton.runtime.jit import KernelInterface

    from fastgan.train import Trainer, TrainConfig

    specs, where = [], {"case": "", "dtype": ""}
    original = KernelInterface.__getitem__

    def recording_getitem(self, grid):
        fn = getattr(self, "fn", None)

        def run(*args, **kwargs):
            names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
            named = dict(zip(names, args))
            named.update(kwargs)
            sig, consts, attrs, nbytes = {}, {}, {}, 0
            for i, name in enumerate(names):
                v = named.get(name)
                if isinstance(v, torch.Tensor):
                    sig[name] = "*" + _DTYPES[str(v.dtype)]
                    nbytes += v.numel() * v.element_size()
                    if v.data_ptr() % 16 == 0:
                        attrs[i] = 16
                elif name in kwargs or isinstance(v, bool) or v is None:
                    consts[name] = v
                    sig[name] = "constexpr"
                elif isinstance(v, int):
                    if v == 1:
                        consts[name], sig[name] = 1, "constexpr"
                    else:
                        sig[name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
                        if v % 16 == 0:
                            attrs[i] = 16
                else:
                    sig[name] = "fp32"
            grid_t = tuple(grid) if not callable(grid) else (1,)
            ints = {k: v for k, v in named.items() if isinstance(v, int)}
            ints["_grid1"] = grid_t[1] if len(grid_t) > 1 else 1
            flops = _conv_flops(ints) if fn.__name__ == "_conv_act_kernel" else 0
            specs.append({"kernel": f"{fn.__module__}.{fn.__name__}", "case": where["case"], "signature": sig,
                          "constexprs": {k: v for k, v in consts.items() if k in sig},
                          "attrs": attrs, "num_warps": kwargs.get("num_warps", 4),
                          "num_stages": kwargs.get("num_stages", 3), "grid": list(grid_t),
                          "bytes": nbytes, "flops": flops})
            return None  # not executed: only the launch parameters are wanted
        return run

    # the launchers choose block sizes and precision flags for the GPU, not for the interpreter
    import importlib

    patched = []
    for module in ("bias_act", "conv", "penalty", "batch_norm_act", "losses"):  # (common: its device check stays)
        mod = importlib.import_module(f"fastgan.kernels.{module}")
        if hasattr(mod, "is_interpreted"):
            patched.append((mod, "is_interpreted", mod.is_interpreted))
            mod.is_interpreted = lambda: False
    conv = importlib.import_module("fastgan.kernels.conv")
    patched.append((conv, "_use_tf32", conv._use_tf32))
    conv._use_tf32 = lambda x: x.dtype in (torch.float16, torch.bfloat16, torch.float32)  # cuDNN's default on
    functional_conv = importlib.import_module("fastgan.functional.conv")
    original_conv_act, counting = _tally_saved_z(functional_conv, {} if z_bytes is None else z_bytes, where)
    patched.append((functional_conv, "_conv_act", original_conv_act))
    functional_conv._conv_act = counting
    KernelInterface.__getitem__ = recording_getitem
    try:
        for dtype in ("float32", "bfloat16"):
            where["dtype"] = dtype
            cfg = TrainConfig(resolution=resolution, loss="wgan", penalty="wgan-gp", z_dim=128, g_width=width,
                              d_width=width, batch_size=batch, n_embedded=batch, device="cpu", amp=False,
                              progress=False, out=os.devnull)
            tr = Trainer(cfg, log=lambda *a, **k: None)
            if dtype == "bfloat16":  # the trainer's bf16 autocast, on the CPU
                tr._autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
            real = torch.stack([tr.dataset[i][0] for i in range(batch)])
            where["case"] = f"D step ({dtype})"  # the kernels never run: the values are garbage, the shapes real
            tr.d_step(real)
            where["case"] = f"G step ({dtype})"
            tr.g_step(batch)
    finally:
        KernelInterface.__getitem__ = original
        for mod, name, value in patched:
            setattr(mod, name, value)
    return specs


# ----------------------------------------------------------------------------- 2. compile (sm_90)

def _ptxas():
    from triton.backends.nvidia import compiler as nv

    tool = nv.get_ptxas(90) if hasattr(nv, "get_ptxas") else None
    path = getattr(tool, "path", None)
    if path is None:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return path


def _occupancy(regs: int, smem: int, warps: int) -> tuple[float, int]:
    """(resident warps / 64, resident CTAs per SM) of one kernel."""
    threads = warps * 32
    by_regs = REGS_PER_SM // max(1, regs * threads) if regs else CTAS_PER_SM
    by_smem = SMEM_PER_SM // smem if smem else CTAS_PER_SM
    ctas = max(0, min(by_regs, by_smem, WARPS_PER_SM // warps, CTAS_PER_SM))
    return round(ctas * warps / WARPS_PER_SM, 3), ctas


def compile_specs(specs: list) -> list:
    """One record per distinct specialisation (see the module doc); run without the interpreter."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptxas, seen, records, index = _ptxas(), {}, [], {}
    for spec in specs:
        key = json.dumps([spec["kernel"], spec["signature"], spec["constexprs"], spec["num_warps"],
                          spec["num_stages"]], sort_keys=True, default=str)
        module, name = spec["kernel"].rsplit(".", 1)
        fn = getattr(importlib.import_module(module), name)
        if key not in seen:
            attrs = {(int(i),): [["tt.divisibility", v]] for i, v in spec["attrs"].items()}
            src = ASTSource(fn=fn, signature=spec["signature"], constexprs=spec["constexprs"], attrs=attrs)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
            ptx = compiled.asm["ptx"]
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "k.ptx")
                with open(path, "w") as f:
                    f.write(ptx)
                log = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", path, "-o", os.path.join(tmp, "k.cubin")],
                                     capture_output=True, text=True).stderr
            regs = int(re.search(r"Used (\d+) registers", log).group(1)) if "registers" in log else 0
            spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)) // 2
            smem = getattr(compiled.metadata, "shared", 0)
            mma = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
            copy = "tma" if "cp.async.bulk.tensor" in ptx else "cp.async" if "cp.async" in ptx else "none"
            seen[key] = dict(regs=regs, spill_bytes=spills, smem_bytes=smem, mma=mma, async_copy=copy)
        launch = (key, tuple(spec["grid"]), spec["case"])
        if launch in index:  # the same specialisation and grid again in this step: count it
            index[launch]["launches"] += 1
            continue
        ctas = 1
        for g in spec["grid"]:
            ctas *= g
        occ, per_sm = _occupancy(seen[key]["regs"], seen[key]["smem_bytes"], spec["num_warps"])
        constexprs = {k: v for k, v in spec["constexprs"].items() if k.isupper() and not k.startswith(("STR", "DIL"))}
        records.append(dict(kernel=name, case=spec["case"], launches=1, variant=constexprs, **seen[key], ctas=ctas,
                            sms=SMS, occupancy=occ, waves=round(ctas / max(1, SMS * per_sm), 3),
                            roofline_us=round(max(spec["flops"] / PEAK_FLOPS, spec["bytes"] / PEAK_BYTES) * 1e6, 2)))
        index[launch] = records[-1]
    return records


# ----------------------------------------------------------------------------- orchestration

def _python(code: str, interpret: bool, payload: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("FASTGAN_BACKEND", "TRITON_INTERPRET")}
    if interpret:
        env["FASTGAN_BACKEND"] = "interpret"
    r = subprocess.run([sys.executable, "-c", code], input=payload, env=env, capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["?"])[-1])
    return r.stdout


def run(resolution: int = 64, batch: int = 64, width: int = 64, limit: int | None = None) -> dict:
    """Record in an interpreter process, compile in a compiled-mode process; ``limit``: compile
    only the first N distinct specialisations (the CI smoke test)."""
    out = _python("import json; from fastgan.benchmarks.static import record; z = {}; "
                  f"specs = record({resolution}, {batch}, {width}, z); print('SPECS ' + json.dumps(specs)); "
                  "print('ZBYTES ' + json.dumps(z))", interpret=True)
    specs = json.loads([ln for ln in out.splitlines() if ln.startswith("SPECS ")][-1][6:])
    z_bytes = json.loads([ln for ln in out.splitlines() if ln.startswith("ZBYTES ")][-1][7:])
    if limit is not None:
        specs = specs[:limit]
    out = _python("import json, sys; from fastgan.benchmarks.static import compile_specs; "
                  "print('RECORDS ' + json.dumps(compile_specs(json.load(sys.stdin))))", interpret=False,
                  payload=json.dumps(specs))
    records = json.loads([ln for ln in out.splitlines() if ln.startswith("RECORDS ")][-1][8:])
    import triton

    return {"what": "static sm_90 report of every Triton launch of one DCGAN-64 WGAN-GP iteration",
            "case": f"DCGAN {resolution}x{resolution}, width {width}, batch {batch}, float32 and bf16 autocast",
            "triton": triton.__version__, "launches": sum(r["launches"] for r in records), "z_bytes": z_bytes,
            "records": records}


def to_markdown(doc: dict) -> str:
    lines = [f"static sm_90 report: {doc['case']}, triton {doc['triton']}, {doc['launches']} launches", "",
             "| kernel | case | n | regs | spill B | smem B | mma | async copy | CTAs | waves | occupancy "
             "| roofline us |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in doc["records"]:
        lines.append(f"| {r['kernel']} | {r['case']} | {r['launches']} | {r['regs']} | {r['spill_bytes']} | "
                     f"{r['smem_bytes']} | "
                     f"{r['mma']} | {r['async_copy']} | {r['ctas']} | {r['waves']} | {r['occupancy']} | "
                     f"{r['roofline_us']} |")
    spills = [r for r in doc["records"] if r["spill_bytes"]]
    small = [r for r in doc["records"] if r["kernel"] == "_conv_act_kernel" and r["ctas"] < SMS]
    lines.append(f"\nspilling launches: {len(spills)}; conv launches below one wave of {SMS} SMs: {len(small)}")
    for dtype, z in doc.get("z_bytes", {}).items():
        lines.append(f"pre-activations kept for the backward per iteration ({dtype}): {z['stored'] / 2 ** 20:.1f} MiB "
                     f"stored, {z['avoided'] / 2 ** 20:.1f} MiB not stored (act' read from y)")
    return "\n".join(lines)
