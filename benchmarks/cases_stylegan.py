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

Steps (family ``steps``): a StyleGAN2 generator and residual discriminator written on
fastgan.functional (StyleGAN2-ADA's "paper256" channels, batch 8, float32) and the two steps
that carry the lazy regularisers: the D step with R1 and the G step with the path-length
penalty, their inner gradients inside ``no_weight_gradients()``. ``eager`` runs the same code on
the eager reference (``use_backend("eager")``), ``fastgan`` on the fused ops, ``compile``
(--full, or the CPU) compiles G and D for the loss passes and keeps the plain modules for the
penalty passes. bytes: the image batches only (indicative); flops are not counted.
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

# StyleGAN2-ADA's "paper256" configuration at one GPU's batch; the CPU runs a tiny one
SG2 = dict(res=256, batch=8, z=512, cbase=16384, cmax=512, mapping=8)
SG2_TINY = dict(res=16, batch=2, z=16, cbase=128, cmax=16, mapping=2)
R1_GAMMA, D_REG_INTERVAL, PL_WEIGHT, G_REG_INTERVAL = 1.0, 16, 2.0, 4


def _channels(res: int, cfg: dict) -> int:
    return min(cfg["cbase"] // res, cfg["cmax"])


class _G(torch.nn.Module):
    """A StyleGAN2 generator on fastgan.functional: mapping network, modulated 3x3 convolutions
    with noise (upsampling ones at each new resolution), skip toRGB outputs."""

    def __init__(self, cfg: dict):
        super().__init__()
        P = torch.nn.Parameter
        z, self.res = cfg["z"], cfg["res"]
        self.mapping = torch.nn.ParameterList(P(torch.randn(z, z)) for _ in range(cfg["mapping"]))
        self.const = P(torch.randn(_channels(4, cfg), 4, 4))
        self.convs, self.rgbs = [], []  # (cin, cout, up) and cin per toRGB
        res, cin = 4, _channels(4, cfg)
        while res <= self.res:
            cout = _channels(res, cfg)
            self.convs += ([] if res == 4 else [(cin, cout, 2)]) + [(cout, cout, 1)]
            self.rgbs.append(cout)
            res, cin = res * 2, cout
        self.weights = torch.nn.ParameterList(P(torch.randn(o, i, 3, 3)) for i, o, _ in self.convs)
        self.rgb_weights = torch.nn.ParameterList(P(torch.randn(3, c, 1, 1)) for c in self.rgbs)
        self.affines = torch.nn.ParameterList(P(torch.randn(i, z)) for i in [c[0] for c in self.convs] + self.rgbs)
        self.biases = torch.nn.ParameterList(P(torch.zeros(o)) for _, o, _ in self.convs)
        self.noise_strength = P(torch.full((len(self.convs),), 0.1))
        self.register_buffer("f", torch.tensor([1.0, 3.0, 3.0, 1.0]).outer(torch.tensor([1.0, 3.0, 3.0, 1.0])) / 64)

    def map(self, z):
        from fastgan.functional import bias_act

        x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        for w in self.mapping:
            x = bias_act(x @ (w * w.shape[1] ** -0.5).t(), None, act="lrelu")
        return x[:, None].expand(-1, len(self.affines), -1)

    def synthesize(self, ws):
        from fastgan.functional import bias_act, modulated_conv2d, upsample2d

        def styles(i):
            a = self.affines[i]
            return bias_act(ws[:, i] @ (a * a.shape[1] ** -0.5).t(), None) + 1
        x, img, n = self.const[None].expand(ws.shape[0], -1, -1, -1), None, len(self.convs)
        for i, ((cin, _, up), w) in enumerate(zip(self.convs, self.weights)):
            side = x.shape[2] * up
            noise = torch.randn(x.shape[0], 1, side, side, device=x.device, dtype=x.dtype) * self.noise_strength[i]
            x = modulated_conv2d(x, w * (9 * cin) ** -0.5, styles(i), noise, up=up, padding=1, resample_filter=self.f,
                                 bias=self.biases[i], act="lrelu", clamp=256)
            if up == 1:  # the end of a resolution: its toRGB, added to the upsampled image so far
                k = len([c for c in self.convs[:i + 1] if c[2] == 1]) - 1
                wr = self.rgb_weights[k]
                y = modulated_conv2d(x, wr * wr.shape[1] ** -0.5, styles(n + k), demodulate=False)
                img = y if img is None else upsample2d(img, self.f) + y
        return img

    def forward(self, z):
        return self.synthesize(self.map(z))


class _D(torch.nn.Module):
    """A StyleGAN2 residual discriminator on fastgan.functional (conv2d_resample, bias_act),
    with the minibatch standard deviation layer."""

    def __init__(self, cfg: dict):
        super().__init__()
        P = torch.nn.Parameter
        self.res = cfg["res"]
        c = _channels(self.res, cfg)
        self.from_rgb = P(torch.randn(c, 3, 1, 1))
        self.blocks = torch.nn.ParameterList()
        res = self.res
        while res > 4:
            cin, cout = _channels(res, cfg), _channels(res // 2, cfg)
            self.blocks.extend([P(torch.randn(cin, cin, 3, 3)), P(torch.randn(cout, cin, 3, 3)),
                                P(torch.randn(cout, cin, 1, 1))])
            res //= 2
        c4 = _channels(4, cfg)
        self.conv4 = P(torch.randn(c4, c4 + 1, 3, 3))
        self.fc = P(torch.randn(c4, c4 * 16))
        self.out = P(torch.randn(1, c4))
        self.register_buffer("f", torch.tensor([1.0, 3.0, 3.0, 1.0]).outer(torch.tensor([1.0, 3.0, 3.0, 1.0])) / 64)

    def forward(self, img):
        from fastgan.functional import bias_act, conv2d_resample

        def conv(x, w, **kw):
            return conv2d_resample(x, w * (w[0].numel() ** -0.5), self.f, **kw)
        x = bias_act(conv(img, self.from_rgb), None, act="lrelu")
        for i in range(0, len(self.blocks), 3):
            w0, w1, ws = self.blocks[i:i + 3]
            skip = conv(x, ws, down=2)
            x = bias_act(conv(x, w0, padding=1), None, act="lrelu")
            x = bias_act(conv(x, w1, down=2, padding=1), None, act="lrelu", gain=2 ** 0.5 * 0.5 ** 0.5)
            x = x + skip * 0.5 ** 0.5
        n, c, h, w = x.shape
        g = min(4, n)
        y = x.reshape(g, -1, 1, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=(2, 3, 4)).reshape(-1, 1, 1, 1)
        x = torch.cat([x, y.repeat(g, 1, h, w)], 1)
        x = bias_act(conv(x, self.conv4, padding=1), None, act="lrelu")
        x = bias_act(x.flatten(1) @ (self.fc * self.fc.shape[1] ** -0.5).t(), None, act="lrelu")
        return x @ (self.out * self.out.shape[1] ** -0.5).t()


def _sg2_steps(cfg: dict, device, what: str, wrap=None):
    """One StyleGAN2-ADA step with its lazy regulariser (the step that runs it): "d" = the D loss
    on fakes and reals plus R1 (gamma * interval / 2), "g" = the G loss plus the path-length
    penalty (weight * interval, on half the batch); the inner gradient of each penalty is taken
    inside no_weight_gradients(). ``wrap`` (e.g. torch.compile) wraps G and D for the loss passes;
    the plain modules run the penalty passes (torch.compile cannot take their double backward)."""
    import torch.nn.functional as F

    from fastgan.functional.gradfix import no_weight_gradients

    torch.manual_seed(0)
    G, D = _G(cfg).to(device), _D(cfg).to(device)
    G_loss, D_loss = (G, D) if wrap is None else (wrap(G), wrap(D))
    opt_g = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=0.0025, betas=(0.0, 0.99))
    n, res, z = cfg["batch"], cfg["res"], cfg["z"]
    real = torch.rand(n, 3, res, res, device=device) * 2 - 1
    pl_mean = torch.zeros((), device=device)

    def d_step():
        with torch.no_grad():
            fake = G_loss(torch.randn(n, z, device=device))
        opt_d.zero_grad(set_to_none=True)
        x = real.detach().requires_grad_(True)
        real_logits = D(x)
        with no_weight_gradients():
            (grad,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
        r1 = grad.square().sum(dim=(1, 2, 3)) * (R1_GAMMA / 2 * D_REG_INTERVAL)
        (F.softplus(D_loss(fake)).mean() + F.softplus(-real_logits).mean() + r1.mean()).backward()
        opt_d.step()

    def g_step():
        D.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        F.softplus(-D_loss(G_loss(torch.randn(n, z, device=device)))).mean().backward()
        ws = G.map(torch.randn(n // 2, z, device=device))
        img = G.synthesize(ws)
        pl_noise = torch.randn_like(img) / res
        with no_weight_gradients():
            (grad,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        pl_mean.lerp_(lengths.mean().detach(), 0.01)
        ((lengths - pl_mean).square().mean() * (PL_WEIGHT * G_REG_INTERVAL)).backward()
        opt_g.step()
        D.requires_grad_(True)

    return (d_step if what == "d" else g_step), G, D


def _make_step(what: str, cfg: dict, quick: bool):
    def make(device, dtype):
        import fastgan

        def run_with(backend, split=False):
            def build():
                step = _sg2_steps(cfg, device, what, compile_fn if split else None)[0]

                def call():
                    with fastgan.use_backend(backend):
                        step()
                for _ in range(3):  # Adam's state, the conv dispatcher's timings, compilation
                    call()
                return call
            return build

        fns = {"eager": Lazy(run_with("eager")), "fastgan": Lazy(run_with("auto")),
               "fastgan+graphs": "n/a: the StyleGAN2 steps are not captured as CUDA graphs"}
        if quick and device.type == "cuda":
            fns["compile"] = ("skipped in --quick: torch.compile of the StyleGAN2 networks takes minutes of "
                              "compilation; --full times it")
        else:
            fns["compile"] = Lazy(run_with("eager", split=True))
            fns["compile:extra"] = {"config": "split: torch.compile(G), torch.compile(D) for the loss passes, the "
                                              "plain modules for the penalty passes (double backward)"}
        return fns

    return make


def stylegan_step_cases(quick: bool = True, device_type: str = "cuda") -> list[Case]:
    """The StyleGAN2 D step with lazy R1 and G step with the path-length penalty (float32)."""
    cfg = SG2 if device_type == "cuda" else SG2_TINY
    n, res = cfg["batch"], cfg["res"]
    image = 3 * res * res * 4
    return [Case(case=f"step.sg2_{res}.{kind}.B{n}", family="steps", shape=[n, 3, res, res], dtype="float32",
                 bytes=2 * n * image, flops=0, make=_make_step(what, cfg, quick), images=n)
            for kind, what in (("r1.d", "d"), ("pl.g", "g"))]
