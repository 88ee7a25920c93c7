"""Training-step cases (family ``steps``): the DCGAN's D step, D step with WGAN-GP, D step with
R1, G step and one full iteration, at 32x32 and 64x64, batch 64 and 256, float32 and bf16.

Every provider runs the same ``fastgan.train.Trainer`` code, so the work per call is
identical and only what executes it differs:

- ``eager``: ``Trainer(fused=False)``, the plain baseline: plain ``torch.nn`` modules
  (``build_dcgan(fused=False)``) and the plain-torch reference lines of the losses and the
  penalty (``F.softplus(-r).mean() + ...``, ``autograd.grad(create_graph=True)`` and
  ``vector_norm``), with nothing of fastgan's kernels.
- ``compile``: the eager trainer with ``torch.compile(G)`` and ``torch.compile(D)``. torch.compile's
  default cannot take the second backward of a gradient penalty ("torch.compile with
  aot_autograd does not currently support double backward"); for the penalty steps the
  default is tried once per run and penalty kind, its error text goes into the record
  (``compile_default_error``, with ``compile_default_probed_on``), and the best configuration
  that works is timed, named in the record's ``config``:
    ``func``  (preferred) the whole penalised D step's parameter gradients as
              ``torch.compile(torch.func.grad(loss))``, where the loss takes D's input gradient
              with an inner ``torch.func.grad``: a single forward graph, no autograd double
              backward at run time; then Adam as usual.
    ``split`` compiled D for the loss passes, the plain D for the penalty pass (the only
              pass that needs a double backward), compiled G.
  ``--compile-penalty func|split`` picks the first one to try; the other is the fallback.
- ``fastgan``: ``Trainer(fused=True)`` (fastgan.nn modules, fused losses/penalties, Triton on CUDA).
- ``fastgan+graphs``: ``Trainer(fused=True, cuda_graphs=True)``: the D step (with its penalty)
  and the G step (with the EMA update) are captured as CUDA graphs and replayed
  (``fastgan.train.graphs``); when the trainer cannot capture (it warns and runs eager steps)
  the record carries that warning as its error instead of an eager timing.

``bfloat16`` means the trainer's bf16 autocast on CUDA (weights, optimizer and the real batch
stay float32); ``float32`` convolutions use cuDNN's default (TF32 allowed). Each provider is
warmed up before it is timed (3 calls: compilation, Adam's state; CUDA graphs: the trainer's
eager warm-up steps, the capture and one replay). Penalty steps penalise every D step
(``reg_interval=1``), the full iteration is ``Trainer.train_step`` with ``n_critic=1``. The step
cases report images/s (``Case.images`` = the batch) and, on CUDA, energy per call.

FLOPs are an estimate of the convolution work (a backward pass counted as twice its forward,
a WGAN-GP penalty pass as six forwards of D, an R1 pass as three: it reuses the real batch's
forward); bytes a lower bound (the image batches once, the
parameters and Adam's state read and written once). The roofline fraction of a whole step is
therefore only indicative.

On the CPU the cases shrink to 32x32, batch 4, width 8, float32 (a smoke run of the
machinery); the fastgan providers then record why they need CUDA.
"""
from __future__ import annotations

import contextlib
import math

import torch

from .harness import Case, Lazy, compile_fn

# name -> (what, loss, penalty), in run order: the headline full iteration first, so that a run
# cut short by --time-budget loses the single-step cases before it
STEP_KINDS = {
    "wgan_gp.iter": ("iter", "wgan", "wgan-gp"),
    "r1.d": ("d", "ns", "r1"),
    "wgan_gp.d": ("d", "wgan", "wgan-gp"),
    "ns.d": ("d", "ns", "none"),
    "ns.g": ("g", "ns", "none"),
}
Z_DIM = 128
WIDTH = 64
WARMUP_CALLS = 3
CPU_TINY = dict(res=32, batch=4, width=8)
COMPILE_PENALTY = {"first": "func"}  # set by --compile-penalty

# One probe of the default per process and penalty kind:
# (compile backend, penalty) -> (error text or None if it worked, where it was probed).
_DEFAULT_PROBE: dict = {}


# ----------------------------------------------------------------------------- estimates

def dcgan_conv_flops(res: int, width: int, z_dim: int = Z_DIM) -> tuple[int, int]:
    """(G forward, D forward) convolution FLOPs per image (2 * MACs)."""
    stages = int(math.log2(res)) - 2
    g_ch = [width * 2 ** i for i in reversed(range(stages))]
    g = 2 * z_dim * g_ch[0] * 16  # 1x1 -> 4x4
    r = 4
    for a, b in zip(g_ch[:-1], g_ch[1:]):
        g += 2 * a * b * 16 * r * r
        r *= 2
    g += 2 * g_ch[-1] * 3 * 16 * r * r
    d_ch = [width * 2 ** i for i in range(stages)]
    d, r = 0, res
    for a, b in zip([3] + d_ch[:-1], d_ch):
        r //= 2
        d += 2 * a * b * 16 * r * r
    d += 2 * d_ch[-1] * 16
    return g, d


def dcgan_params(res: int, width: int, z_dim: int = Z_DIM) -> tuple[int, int]:
    stages = int(math.log2(res)) - 2
    g_ch = [width * 2 ** i for i in reversed(range(stages))]
    g = z_dim * g_ch[0] * 16 + 2 * g_ch[0]
    g += sum(a * b * 16 + 2 * b for a, b in zip(g_ch[:-1], g_ch[1:])) + g_ch[-1] * 3 * 16
    d_ch = [width * 2 ** i for i in range(stages)]
    d = sum(a * b * 16 + b for a, b in zip([3] + d_ch[:-1], d_ch)) + d_ch[-1] * 16 + 1
    return g, d


def step_cost(what: str, penalty: str, res: int, width: int, batch: int) -> tuple[int, int]:
    """(bytes, flops) of one call, estimated as described in the module doc."""
    g_f, d_f = dcgan_conv_flops(res, width)
    g_p, d_p = dcgan_params(res, width)
    image = 3 * res * res * 4
    d_flops = g_f + 6 * d_f + {"none": 0, "wgan-gp": 6 * d_f, "r1": 3 * d_f}[penalty]
    g_flops = 3 * g_f + 2 * d_f
    d_bytes = 3 * image * batch + 7 * 4 * d_p
    g_bytes = 2 * image * batch + 7 * 4 * g_p
    if what == "d":
        return d_bytes, batch * d_flops
    if what == "g":
        return g_bytes, batch * g_flops
    return d_bytes + g_bytes, batch * (d_flops + g_flops)


# ----------------------------------------------------------------------------- trainers

def _trainer(device, amp: bool, res: int, width: int, batch: int, loss: str, penalty: str, fused: bool, **more):
    from fastgan.train import Trainer, TrainConfig

    cfg = TrainConfig(resolution=res, z_dim=Z_DIM, g_width=width, d_width=width, fused=fused, loss=loss,
                      penalty=penalty, reg_interval=1, n_critic=1, batch_size=batch, n_embedded=batch,
                      device=str(device), amp=amp, progress=False, **more)
    return Trainer(cfg, log=lambda *a, **k: None)


def _step_fn(tr, what: str, real: torch.Tensor, d_step=None):
    d_step = d_step or tr.d_step
    n = real.shape[0]
    if what == "d":
        return lambda: d_step(real)
    if what == "g":
        return lambda: tr.g_step(n)
    if d_step is tr.d_step:
        return lambda: tr.train_step([real])

    def iteration():  # Trainer.train_step with another D step (n_critic = 1)
        d_step(real)
        tr.g_step(n)
        tr.step += 1
    return iteration


def graphed_step(build, what: str, real: torch.Tensor):
    """The ``fastgan+graphs`` provider: ``build()`` makes a ``cuda_graphs=True`` trainer; its step
    (``_step_fn``) is called until the graphs it replays are captured (each kind on its
    ``WARMUP_STEPS + 1``-th use; an iteration on a lazy schedule meets its lazy kinds every k-th
    call). Returns (fn, extra) or, when the trainer runs eager steps, the reason."""
    import warnings

    from fastgan.train import graphs as graph_util

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = build()
    if tr.graphs is None:
        why = "; ".join(str(w.message) for w in caught) or "the trainer did not enable CUDA graphs"
        return f"CUDA graphs unavailable: {why}"
    warm = graph_util.WARMUP_STEPS + 2  # eager warm-up calls, the capture, one replay
    if what == "iter":
        warm *= max(tr.cfg.reg_interval, getattr(tr.cfg, "pl_interval", 1))
    fn = _warm(_step_fn(tr, what, real), warm)
    if not tr.graphs.captured:
        return f"CUDA graphs: nothing was captured after {warm} calls"
    return fn, {"config": f"Trainer(cuda_graphs=True): steps captured as CUDA graphs and replayed "
                          f"({', '.join(tr.graphs.captured)})"}


def _warm(fn, calls: int = WARMUP_CALLS):
    for _ in range(calls):
        fn()
    return fn


def _autocast(tr):
    if tr.amp and tr.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _func_d_step(tr):
    """The penalised D step with parameter gradients from one compiled torch.func graph."""
    from torch.func import functional_call, grad

    from fastgan.functional.losses import _d_loss_ref

    cfg = tr.cfg
    kind, loss_kind, gamma = cfg.penalty, cfg.loss, cfg.effective_gamma * cfg.reg_interval
    D = tr.D._orig_mod if hasattr(tr.D, "_orig_mod") else tr.D
    names = [name for name, _ in D.named_parameters()]
    plist = [p for _, p in D.named_parameters()]
    buffers = dict(D.named_buffers())

    def loss_fn(params, real, fake, eps):
        def logits(x):
            return functional_call(D, (params, buffers), (x,))

        if kind == "r1":
            def logit_sum(x):
                out = logits(x)
                return out.sum(), out
            g, real_logits = grad(logit_sum, has_aux=True)(real)
            penalty = gamma / 2 * g.flatten(1).float().square().sum(dim=1).mean()
        else:
            e = eps.reshape(-1, 1, 1, 1)
            x = (e * real.float() + (1 - e) * fake.float()).to(real.dtype)
            g = grad(lambda x: logits(x).sum())(x)
            penalty = gamma * ((torch.linalg.vector_norm(g.flatten(1).float(), dim=1) - 1.0) ** 2).mean()
            real_logits = logits(real)
        fake_logits = logits(fake)
        loss = _d_loss_ref(real_logits.float(), fake_logits.float(), loss_kind)
        r, f = real_logits.detach().float(), fake_logits.detach().float()
        stats = {"d_loss": loss.detach(), "penalty": penalty.detach(), "d_real": r.mean(), "d_fake": f.mean(),
                 "d_acc": 0.5 * ((r > 0).float().mean() + (f < 0).float().mean())}  # as Trainer.d_step returns
        return loss + penalty, stats

    # fullgraph: a graph break would silently run (parts of) this step eagerly under the name
    # "compile"; with fullgraph it raises, and the case falls back to "split" with the error kept
    grads_fn = compile_fn(lambda params, real, fake, eps: grad(loss_fn, has_aux=True)(params, real, fake, eps),
                          fullgraph=True)

    def d_step(real):
        n = real.shape[0]
        with torch.no_grad(), _autocast(tr):
            fake = tr.G(torch.randn(n, cfg.z_dim, device=tr.device, generator=tr.noise))
        fake = fake.to(real.dtype)
        eps = torch.rand(n, device=real.device, dtype=torch.float32, generator=tr.gp_eps) if kind == "wgan-gp" else None
        params = {name: p.detach() for name, p in zip(names, plist)}
        with _autocast(tr):
            grads, stats = grads_fn(params, real, fake, eps)
        for name, p in zip(names, plist):
            g = grads[name]
            # the layout autograd would give (channels_last weights on CUDA): the fused Adam
            # kernels walk param and grad memory in the same order
            p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
        tr.opt_d.step()
        tr.d_steps += 1
        return stats
    return d_step


class _SplitD(torch.nn.Module):
    """D for the ``split`` configuration: the compiled module, except for the penalty pass
    (a leaf input that requires grad: the interpolates or the real batch of R1), which runs
    the plain module so that its double backward works."""

    def __init__(self, plain, compiled):
        super().__init__()
        self.plain = plain
        self.compiled = compiled

    def forward(self, x):
        if x.requires_grad and x.is_leaf:
            return self.plain(x)
        return self.compiled(x)


def _compile_trainer(device, amp, res, width, batch, loss, penalty, split=False, backend=None):
    tr = _trainer(device, amp, res, width, batch, loss, penalty, fused=False)
    plain_d = tr.D
    more = {} if backend is None else {"backend": backend}
    tr.G = compile_fn(tr.G, **more)
    tr.D = compile_fn(plain_d, **more)
    if split:
        tr.D = _SplitD(plain_d, tr.D)
    return tr


def _probe_default(device, amp, res, width, batch, loss, penalty, what, real) -> tuple[str | None, str]:
    """Run torch.compile's default configuration on a penalty step, once per run and penalty
    kind: (its error text or None when it worked, the case it was probed on).

    The probe compiles with backend ``aot_eager``: the double-backward limit is AOTAutograd's,
    reached before any backend runs, so the error is the same as inductor's without an
    inductor compilation (tens of seconds of the run's budget). If the probe works, the case
    times the default configuration with the run's own backend."""
    from .harness import COMPILE, _error_text

    key = (COMPILE["backend"], penalty)
    if key not in _DEFAULT_PROBE:
        where = (f"{what} step, {res}x{res}, batch {batch}, {'bf16 autocast' if amp else 'float32'}, "
                 f"probed with backend aot_eager")
        try:
            tr = _compile_trainer(device, amp, res, width, batch, loss, penalty, backend="aot_eager")
            _step_fn(tr, what, real)()
            _DEFAULT_PROBE[key] = (None, where)
        except Exception as exc:
            _DEFAULT_PROBE[key] = (_error_text(exc), where)
    return _DEFAULT_PROBE[key]


def _make(what: str, loss: str, penalty: str, res: int, width: int, batch: int):
    def make(device, dtype):
        import fastgan
        from .harness import COMPILE, _error_text

        amp = dtype == torch.bfloat16
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"step cases run float32 or bf16 autocast, not {dtype}")
        if amp and device.type != "cuda":
            why = "bf16 steps are bf16 autocast on CUDA; the CPU runs the float32 cases"
            return {p: why for p in ("eager", "compile", "fastgan", "fastgan+graphs")}
        g = torch.Generator().manual_seed(res * 1000 + batch)
        real = (torch.rand(batch, 3, res, res, generator=g) * 2 - 1).to(device)
        if device.type == "cuda":
            real = real.contiguous(memory_format=torch.channels_last)
        args = (device, amp, res, width, batch, loss, penalty)

        def eager():
            tr = _trainer(*args, fused=False)
            return _warm(_step_fn(tr, what, real))

        def compiled():
            backend = COMPILE["backend"]
            if penalty == "none":
                tr = _compile_trainer(*args)
                return _warm(_step_fn(tr, what, real)), {
                    "config": f"default: torch.compile(G), torch.compile(D), mode default (no CUDA graphs), "
                              f"backend {backend}"}
            default_error, probed_on = _probe_default(*args, what, real)
            extra = {"compile_default_error": default_error, "compile_default_probed_on": probed_on}
            if default_error is None:
                tr = _compile_trainer(*args)
                extra["config"] = f"default: torch.compile(G), torch.compile(D), backend {backend}"
                return _warm(_step_fn(tr, what, real)), extra
            order = ["func", "split"] if COMPILE_PENALTY["first"] == "func" else ["split", "func"]
            failures = []
            for name in order:
                try:
                    if name == "func":
                        tr = _compile_trainer(*args)
                        fn = _step_fn(tr, what, real, d_step=_func_d_step(tr))
                        extra["config"] = (f"func: penalised D step as torch.compile(torch.func.grad(loss)) "
                                           f"(one graph incl. the input gradient); torch.compile(G); "
                                           f"backend {backend}")
                    else:
                        tr = _compile_trainer(*args, split=True)
                        fn = _step_fn(tr, what, real)
                        extra["config"] = (f"split: torch.compile(G), torch.compile(D) for the loss passes, "
                                           f"plain D for the penalty pass; backend {backend}")
                    return _warm(fn), extra
                except Exception as exc:
                    failures.append(f"{name}: {_error_text(exc)}")
            raise RuntimeError(f"unsupported: default: {default_error}; " + "; ".join(failures))

        def fused():
            tr = _trainer(*args, fused=True)
            return _warm(_step_fn(tr, what, real))

        def graphs():
            return graphed_step(lambda: _trainer(*args, fused=True, cuda_graphs=True), what, real)

        fns = {"eager": Lazy(eager), "compile": Lazy(compiled)}
        backend = fastgan.backend_for(real)
        # both fastgan providers time the Triton kernels; on another backend (Triton missing,
        # FASTGAN_BACKEND=eager) they would time the eager reference lines under fastgan's name
        no_triton = f"fastgan's Triton path needs CUDA and Triton (backend here: {backend})"
        fns["fastgan"] = Lazy(fused) if backend == "triton" else no_triton
        fns["fastgan+graphs"] = "CUDA graphs need a CUDA device" if device.type != "cuda" else (
            Lazy(graphs) if backend == "triton" else no_triton)
        return fns

    return make


# ----------------------------------------------------------------------------- the case list

def step_cases(quick: bool = True, device_type: str = "cuda") -> list[Case]:
    """The step cases. --quick on CUDA: the five kinds at 64x64, batch 64, bf16 (each provider
    compiles or captures per case, and torch.compile's cold compiles of G, D and the penalty
    graphs dominate the quick suite's time); --full: every kind at 32/64, batch 64/256,
    float32/bf16."""
    if device_type != "cuda":
        grid = [(CPU_TINY["res"], CPU_TINY["batch"], CPU_TINY["width"], "float32", list(STEP_KINDS))]
    elif quick:
        grid = [(64, 64, WIDTH, "bfloat16", list(STEP_KINDS))]
    else:
        grid = [(res, batch, WIDTH, dtype, list(STEP_KINDS))
                for res in (32, 64) for batch in (64, 256) for dtype in ("float32", "bfloat16")]
    cases = []
    for res, batch, width, dtype, kinds in grid:
        for kind in kinds:
            what, loss, penalty = STEP_KINDS[kind]
            nbytes, flops = step_cost(what, penalty, res, width, batch)
            model = f"dcgan{res}" + ("" if width == WIDTH else f"w{width}")
            cases.append(Case(
                case=f"step.{model}.{kind}.B{batch}", family="steps", shape=[batch, 3, res, res], dtype=dtype,
                bytes=nbytes, flops=flops, make=_make(what, loss, penalty, res, width, batch), images=batch,
                extra={"model": f"DCGAN {res}x{res}, width {width}, z {Z_DIM}", "loss": loss, "penalty": penalty,
                       "precision": "bf16 autocast" if dtype == "bfloat16" else "float32"}))
    return cases
