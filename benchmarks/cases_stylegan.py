"""StyleGAN op cases (family ``ops``) at StyleGAN2 256x256 shapes: upfirdn2d, filtered_lrelu,
conv2d_resample, modulated_conv2d, grid_sample and fma, forward ("fwd") and forward + every
gradient ("fwdbwd").

Shapes: batch 8 (one GPU's share of StyleGAN2-ADA's 256x256 batch), config-f channels (128 at
256x256, 256 at 128x128), StyleGAN2's [1, 3, 3, 1] resampling filter; filtered_lrelu with
StyleGAN3's 12-tap separable filters, up 2 / down 2; grid_sample as ADA's geometric
augmentation of the RGB batch (input gradient only, as in R1).

Providers: ``eager`` is the op's eager reference (plain torch: what NVlabs' code runs when its
plugins do not build), ``compile`` torch.compile of that reference, ``fastgan`` the fused op.
bytes: each tensor operand read or written once per pass (fwdbwd adds reading dy and the
saved input and writing the input gradient; parameters are negligible); flops: 2 * MACs (the
live filter taps, the convolution; fwdbwd counts 3x the convolution). --quick on CUDA keeps
four bf16 fwdbwd cases (each case is one more torch.compile); --full runs every case in
float32 and bf16. The CPU runs all of them shrunk (batch 1, channels / 32, sides / 16).

Steps (family ``steps``): fastgan's StyleGAN2 trainer (``--model stylegan2``; NVlabs' stylegan2
config channels, channel_base 32768, channel_max 512) at 128x128 (batch 32) and 256x256 (batch
16, --full): the D step without and with R1, the G step with the path-length penalty (each
penalty on that step, as the lazy step runs it) and one full iteration on NVlabs' lazy schedule.
``eager`` is the plain-torch trainer (``fused=False``), ``fastgan`` the fused one; ``compile``
(--full, or the CPU) compiles D (the plain D runs R1's double backward) and G where no
path-length pass needs its double backward. bytes: the image batches only (indicative); flops
are not counted.
"""
from __future__ import annotations

import math

import torch

from .harness import Case, Lazy, compile_fn

N_INPUT_SETS = 2
BATCH = 8
QUICK_CUDA = {"upfirdn2d.down2.256", "filtered_lrelu.up2down2.128", "modulated_conv2d.3x3.256",
              "grid_sample.ada.256"}
# name -> (op, channels in, side in, channels out, side out)
SPECS = {
    "upfirdn2d.up2.128": ("upsample2d", 128, 128, 128, 256),
    "upfirdn2d.down2.256": ("downsample2d", 128, 256, 128, 128),
    "filtered_lrelu.up2down2.128": ("filtered_lrelu", 128, 128, 128, 128),
    "conv2d_resample.up2.128": ("conv_up", 256, 128, 128, 256),
    "conv2d_resample.down2.256": ("conv_down", 128, 256, 256, 128),
    "modulated_conv2d.3x3.256": ("modconv", 128, 256, 128, 256),
    "grid_sample.ada.256": ("grid_sample", 3, 256, 3, 256),
    "fma.modconv.256": ("fma", 128, 256, 128, 256),
}
FLRELU_PAD = [11, 10, 11, 10]  # 12-tap filters, up 2 / down 2: the output keeps the input's size


def _sizes(name: str, tiny: bool):
    """(op, batch, channels in, side in, channels out, side out); ``tiny``: the CPU's shrunk sizes."""
    op, cin, h, cout, ho = SPECS[name]
    if not tiny:
        return op, BATCH, cin, h, cout, ho
    return op, 1, max(1, cin // 32), h // 16, max(1, cout // 32), ho // 16


def _inputs(op, n, cin, h, cout, device, dtype):
    """(positional inputs of the op, the indices that get gradients)."""
    def t(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).to(dtype)
    if op in ("upsample2d", "downsample2d"):
        return [t(n, cin, h, h)], [0]
    if op == "filtered_lrelu":
        return [t(n, cin, h, h), t(cin, scale=0.1)], [0, 1]
    if op in ("conv_up", "conv_down"):
        return [t(n, cin, h, h), t(cout, cin, 3, 3, scale=1 / math.sqrt(9 * cin))], [0, 1]
    if op == "modconv":
        return [t(n, cin, h, h), t(cout, cin, 3, 3), t(n, cin), t(n, 1, h, h), t(cout, scale=0.1)], [0, 1, 2, 4]
    if op == "grid_sample":
        theta = torch.tensor([[0.9, -0.3, 0.05], [0.3, 0.9, -0.1]], device=device).expand(n, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, [n, cin, h, h], align_corners=False).to(dtype)
        return [t(n, cin, h, h), grid], [0]
    return [t(n, cin, h, h), t(n, cin, 1, 1), t(n, 1, h, h)], [0, 1, 2]  # fma


def _functions(op, device):
    """(eager reference, fastgan) for the op."""
    from fastgan.functional import (conv2d_resample, downsample2d, filtered_lrelu, fma, grid_sample,
                                    modulated_conv2d, resolve_act, setup_filter, upsample2d)
    from fastgan.functional.bias_act import _bias_act_ref
    from fastgan.functional.conv2d_resample import _conv2d_resample_ref, _padding
    from fastgan.functional.filtered_lrelu import _filtered_lrelu_ref
    from fastgan.functional.grid_sample import _grid_sample_ref
    from fastgan.functional.modulated_conv import _modulated_conv2d_ref
    from fastgan.functional.upfirdn2d import _upfirdn2d_ref
    from fastgan.kernels.geometry import FirGeom

    f = setup_filter([1, 3, 3, 1], device=device)
    f12 = setup_filter(torch.hamming_window(12, periodic=False), device=device)
    lrelu = resolve_act("lrelu")
    if op == "upsample2d":
        geom = FirGeom((2, 2), (1, 1), (2, 1, 2, 1))
        return (lambda x: _upfirdn2d_ref(x, f, geom, False, 4.0)), (lambda x: upsample2d(x, f))
    if op == "downsample2d":
        geom = FirGeom((1, 1), (2, 2), (1, 1, 1, 1))
        return (lambda x: _upfirdn2d_ref(x, f, geom, False, 1.0)), (lambda x: downsample2d(x, f))
    if op == "filtered_lrelu":
        pad = FirGeom.of(2, 1, FLRELU_PAD).padding
        return ((lambda x, b: _filtered_lrelu_ref(x, f12, f12, b, 2, 2, pad, math.sqrt(2), 0.2, 256.0, False)),
                (lambda x, b: filtered_lrelu(x, f12, f12, b, 2, 2, FLRELU_PAD, math.sqrt(2), 0.2, 256.0)))
    if op in ("conv_up", "conv_down"):
        up, down = (2, 1) if op == "conv_up" else (1, 2)
        pad = _padding(1, (4, 4), up, down)
        return ((lambda x, w: _conv2d_resample_ref(x, w, f, up, down, pad, 1, True, False)),
                (lambda x, w: conv2d_resample(x, w, f, up, down, 1)))
    if op == "modconv":
        resample = (None, 1, 1, 1, 1, True, False)

        def eager(x, w, s, noise, b):
            return _bias_act_ref(_modulated_conv2d_ref(x, w, s, noise, resample, True), b, 1, lrelu)
        return eager, (lambda x, w, s, noise, b: modulated_conv2d(x, w, s, noise, padding=1, bias=b, act="lrelu"))
    if op == "grid_sample":
        return _grid_sample_ref, grid_sample
    return (lambda a, b, c: torch.addcmul(c, a, b)), fma


def _make(name, backward: bool, tiny: bool):
    op, n, cin, h, cout, _ = _sizes(name, tiny)

    def make(device, dtype):
        import fastgan

        eager, fused = _functions(op, device)
        sets = []
        for _ in range(N_INPUT_SETS):
            inputs, wanted = _inputs(op, n, cin, h, cout, device, dtype)
            for i in (wanted if backward else ()):
                inputs[i].requires_grad_(True)
            sets.append((inputs, wanted))

        def bind(fn):
            state = [0]

            def call():
                inputs, wanted = sets[state[0] % N_INPUT_SETS]
                state[0] += 1
                if not backward:
                    with torch.no_grad():
                        return fn(*inputs)
                y = fn(*inputs)
                return torch.autograd.grad(y, [inputs[i] for i in wanted], torch.ones_like(y))
            return call

        fns = {"eager": bind(eager), "compile": bind(compile_fn(eager))}
        backend = fastgan.backend_for(sets[0][0][0])
        fns["fastgan"] = bind(fused) if backend == "triton" else (
            f"fastgan's Triton path needs CUDA (backend here: {backend})")
        return fns

    return make


def _cost(name, backward: bool, tiny: bool, esize: int) -> tuple[int, int]:
    op, n, cin, h, cout, ho = _sizes(name, tiny)
    x_el, y_el = n * cin * h * h, n * cout * ho * ho
    if op in ("conv_up", "conv_down", "modconv"):
        macs = n * cout * cin * 9 * (h * h if op == "conv_up" else ho * ho)
        taps = 16 * (x_el if op == "conv_down" else y_el // 4 if op == "conv_up" else 0)
        flops = 2 * macs * (3 if backward else 1) + 2 * taps * (2 if backward else 1)
    else:
        live = {"upsample2d": 4, "downsample2d": 16, "filtered_lrelu": 2 * (12 * 4 + 12), "grid_sample": 4,
                "fma": 1}[op]
        flops = 2 * live * y_el * (2 if backward else 1)
    passes = (x_el + y_el) + ((y_el + 2 * x_el) if backward else 0)
    return esize * passes, flops


def stylegan_cases(quick: bool = True, device_type: str = "cuda") -> list[Case]:
    cases, tiny = [], device_type != "cuda"
    for name in SPECS:
        _, n, cin, h, _, _ = _sizes(name, tiny)
        for dtype in ("float32",) if tiny else ("float32", "bfloat16"):
            for backward in (False, True):
                if not tiny and quick and not (name in QUICK_CUDA and backward and dtype == "bfloat16"):
                    continue
                nbytes, flops = _cost(name, backward, tiny, 4 if dtype == "float32" else 2)
                cases.append(Case(case=f"{name}.{'fwdbwd' if backward else 'fwd'}", family="ops", shape=[n, cin, h, h],
                                  dtype=dtype, bytes=nbytes, flops=flops, make=_make(name, backward, tiny)))
    return cases


# ----------------------------------------------------------------------------- steps

# fastgan's StyleGAN2 trainer (fastgan.train.stylegan2) with NVlabs' stylegan2 config channels:
# (resolution, batch) on CUDA; the CPU runs a tiny network
SG2_SIZES = ((128, 32), (256, 16))
SG2_NET = dict(z_dim=512, channel_base=32768, channel_max=512, mapping_layers=8)
SG2_TINY = dict(res=16, batch=4, z_dim=16, channel_base=64, channel_max=16, mapping_layers=2)
# kind -> (what, penalty, path-length weight, lazy intervals (R1, path length))
SG2_KINDS = {
    "d": ("d", "none", 0.0, (1, 1)),
    "r1.d": ("d", "r1", 0.0, (1, 1)),      # R1 on this step (the lazy step, gamma * interval / 2)
    "pl.g": ("g", "none", 2.0, (1, 1)),    # path length on this step (the lazy step)
    "iter": ("iter", "r1", 2.0, (16, 4)),  # Trainer.train_step on NVlabs' lazy schedule
}


def _sg2_trainer(device, res: int, batch: int, net: dict, fused: bool, penalty: str, pl_weight: float,
                 intervals: tuple[int, int], cuda_graphs: bool = False):
    from fastgan.train import Trainer, TrainConfig

    cfg = TrainConfig(model="stylegan2", resolution=res, batch_size=batch, n_embedded=batch, fused=fused,
                      penalty=penalty, pl_weight=pl_weight, reg_interval=intervals[0], pl_interval=intervals[1],
                      device=str(device), progress=False, cuda_graphs=cuda_graphs, **net)
    return Trainer(cfg, log=lambda *a, **k: None)


def _make_step(kind: str, res: int, batch: int, net: dict, quick: bool):
    def make(device, dtype):
        import fastgan
        from .cases_steps import _SplitD, _step_fn, _warm, graphed_step

        what, penalty, pl_weight, intervals = SG2_KINDS[kind]

        def real_batch():  # built by a provider, on the device it runs on
            g = torch.Generator().manual_seed(res * 1000 + batch)
            return (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(device)

        def trainer(fused, cuda_graphs=False):
            return _sg2_trainer(device, res, batch, net, fused, penalty, pl_weight, intervals, cuda_graphs)

        def timed(fused):
            return _warm(_step_fn(trainer(fused), what, real_batch()))

        def graphed():
            return graphed_step(lambda: trainer(True, cuda_graphs=True), what, real_batch())

        def compiled():
            tr, real = trainer(False), real_batch()
            plain_d = tr.D
            tr.D = compile_fn(plain_d)
            if penalty != "none":
                tr.D = _SplitD(plain_d, tr.D)  # R1's pass (a leaf input that requires grad) runs the plain D
            if pl_weight == 0:
                tr.G = compile_fn(tr.G)
            return _warm(_step_fn(tr, what, real)), {"config": (
                "torch.compile(D)" + (" for the loss passes, the plain D for R1's double backward" if penalty != "none"
                                      else "") + ("; torch.compile(G)" if pl_weight == 0 else
                                                  "; plain G (the path-length pass is a double backward through G)"))}

        fns = {"eager": Lazy(lambda: timed(False))}
        backend = fastgan.backend.backend_for_device(device)
        fns["fastgan"] = Lazy(lambda: timed(True)) if backend == "triton" else (
            f"fastgan's Triton path needs CUDA and Triton (backend here: {backend})")
        fns["fastgan+graphs"] = ("CUDA graphs need a CUDA device" if device.type != "cuda" else
                                 Lazy(graphed) if backend == "triton" else fns["fastgan"])
        if quick and device.type == "cuda":
            fns["compile"] = ("skipped in --quick: torch.compile of the StyleGAN2 networks takes minutes of "
                              "compilation; --full times it")
        else:
            fns["compile"] = Lazy(compiled)
        return fns

    return make


def stylegan_step_cases(quick: bool = True, device_type: str = "cuda") -> list[Case]:
    """fastgan's StyleGAN2 trainer: the D step without and with R1, the G step with the path-length
    penalty and one full iteration on the lazy schedule, at 128x128 (--quick) and 256x256 (--full)
    on CUDA (the trainer's precision: bf16 in the top resolutions); tiny on the CPU. ``images`` is
    the batch, so the record's images/s gives s/kimg = 1000 / (images/s) for the ``iter`` case
    (median over its calls: most iterations carry no regulariser)."""
    if device_type != "cuda":
        t = SG2_TINY
        grid = [(t["res"], t["batch"], {k: v for k, v in t.items() if k not in ("res", "batch")})]
    else:
        grid = [(res, batch, SG2_NET) for res, batch in (SG2_SIZES[:1] if quick else SG2_SIZES)]
    return [Case(case=f"step.sg2_{res}.{kind}.B{batch}", family="steps", shape=[batch, 3, res, res], dtype="float32",
                 bytes=2 * batch * 3 * res * res * 4, flops=0, make=_make_step(kind, res, batch, net, quick),
                 images=batch, extra={"model": f"StyleGAN2 {res}x{res} (fastgan.models.stylegan2), channel_base "
                                               f"{net['channel_base']}, channel_max {net['channel_max']}",
                                      "kind": kind})
            for res, batch, net in grid for kind in SG2_KINDS]
