"""CUDA-graph training steps (fastgan.train.graphs, TrainConfig(cuda_graphs=True)).

CPU tests: the documented eager fallbacks (bitwise the same as cuda_graphs=False), the input
validation of capture_step, the fallback reasons, the in-place checkpoint helpers, the flag.
GPU tests (@pytest.mark.gpu, run by benchmarks/gpu_check.sh): run
``test_gpu_autograd_grad_create_graph_captures_in_one_graph`` first: it is the primitive the rest
relies on (autograd.grad(create_graph=True) + backward + optimizer step captured in one graph).
"""
import copy
import gc
import io
import re
import traceback

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.cli import _train_config, build_parser
from fastgan.train import CaptureError, Trainer, TrainConfig, capture_step, load_checkpoint, save_checkpoint
from fastgan.train import graphs as G
from fastgan.train.trainer import D_STATS, G_STATS

from .test_train import tiny




def flat(m):
    return torch.cat([p.detach().reshape(-1).float() for p in m.state_dict().values() if p.is_floating_point()])


# ----------------------------------------------------------------------------- CPU: trainer fallback

@pytest.mark.parametrize("loss,penalty,reg_interval", [("ns", "r1", 2), ("wgan", "wgan-gp", 1)])
def test_cuda_graphs_on_cpu_warns_and_is_bitwise_eager(tmp_path, loss, penalty, reg_interval):
    kw = dict(loss=loss, penalty=penalty, reg_interval=reg_interval, steps=4)
    with pytest.warns(RuntimeWarning, match=re.escape(G.CPU_FALLBACK_MESSAGE)):
        graphed = Trainer(tiny(tmp_path / "g", cuda_graphs=True, **kw))
    assert G.CPU_FALLBACK_MESSAGE == "cuda_graphs=True needs a CUDA device; running eager steps"
    assert graphed.graphs is None
    graphed.train()
    eager = Trainer(tiny(tmp_path / "e", cuda_graphs=False, **kw))
    eager.train()
    for name in ("G", "D", "G_ema"):
        assert torch.equal(flat(getattr(graphed, name)), flat(getattr(eager, name))), name
    keys = D_STATS + G_STATS
    assert [[h.get(k) for k in keys] for h in graphed.history] == [[h.get(k) for k in keys] for h in eager.history]
    assert torch.equal(graphed.noise.get_state(), eager.noise.get_state())
    assert load_checkpoint(graphed.cfg.out + "/checkpoint.pt")["config"]["cuda_graphs"] is True


def test_config_and_cli_flag(tmp_path):
    with pytest.raises(ValueError, match="cuda_graphs must be True or False"):
        tiny(tmp_path, cuda_graphs="yes")
    cfg = tiny(tmp_path, cuda_graphs=True)
    assert TrainConfig.from_dict(cfg.to_dict()).cuda_graphs is True
    parser = build_parser()
    assert _train_config(parser.parse_args(["train", "--cuda-graphs"]))[0].cuda_graphs is True
    assert _train_config(parser.parse_args(["train"]))[0].cuda_graphs is False


def test_set_lr_and_load_state_dict_eager(tmp_path):
    t = Trainer(tiny(tmp_path))
    t.set_lr(lr_g=1e-3)
    assert t.opt_g.param_groups[0]["lr"] == 1e-3 and t.opt_d.param_groups[0]["lr"] == t.cfg.lr_d
    with pytest.raises(ValueError, match="lr_d must be a number > 0"):
        t.set_lr(lr_d=0)
    batches = [torch.stack([t.dataset[j][0] for j in range(i * 8, i * 8 + 8)]) for i in range(4)]
    for b in batches[:2]:
        t.train_step([b])
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    for b in batches[2:]:
        t.train_step([b])
    after = flat(t.D).clone(), flat(t.G).clone()
    buf.seek(0)
    t.load_state_dict(torch.load(buf, weights_only=True))
    assert t.step == 2
    for b in batches[2:]:
        t.train_step([b])
    assert torch.equal(flat(t.D), after[0]) and torch.equal(flat(t.G), after[1])


def _emulate_graph_mode(t):
    """The trainer's graph-mode bookkeeping on a CPU: CapturedStep falls back to eager calls, so
    this runs everything but the capture itself (static real buffer, one step per kind,
    zero_grad(set_to_none=False), the stats buffer)."""
    t.graphs = G.TrainerGraphs(t)
    return t


@pytest.mark.filterwarnings("ignore:capture_step")
@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_graph_mode_step_logic_on_cpu_is_bitwise_eager(tmp_path, fused):
    kw = dict(penalty="r1", reg_interval=3, n_critic=2, fused=fused)
    if fused:  # the Triton interpreter: keep it short (one iteration: an R1 and a plain D step, a G step)
        kw.update(batch_size=2, g_width=4, d_width=4, reg_interval=2)
    n = kw.get("batch_size", 8)
    tg = _emulate_graph_mode(Trainer(tiny(tmp_path / "g", **kw)))
    te = Trainer(tiny(tmp_path / "e", **kw))
    batches = [torch.stack([te.dataset[j][0] for j in range(i * n, i * n + n)]) for i in range(8)]
    for i in range(3 if not fused else 1):
        sg = tg.train_step(batches[2 * i:2 * i + 2])
        se = te.train_step(batches[2 * i:2 * i + 2])
        assert list(sg) == list(se)
        assert all(torch.equal(sg[k], se[k]) for k in se), (i, sg, se)
    assert sorted(tg.graphs.steps) == ["d", "d_r1", "g"] == sorted(tg.graph_kinds) and tg.d_steps == te.d_steps
    assert not tg.graphs_ready and not te.graphs_ready  # nothing is captured on a CPU
    for name in ("G", "D", "G_ema"):
        assert torch.equal(flat(getattr(tg, name)), flat(getattr(te, name))), name
    if fused:
        return
    with pytest.raises(ValueError, match=r"real batch of shape \(7, 3, 32, 32\) differs from the captured shape"):
        tg.train_step([batches[0][:7], batches[1]])
    with pytest.raises(TypeError, match="dtype torch.float64 differs"):
        tg.train_step([batches[0].double(), batches[1]])
    with pytest.raises(ValueError, match="G step batch 4 differs"):
        tg.g_step(4)
    tg.opt_d.param_groups[0]["lr"] = 1e-4  # replaced, not changed in place: the graphs would not see it
    with pytest.raises(RuntimeError, match="Trainer.set_lr"):
        tg.train_step(batches[:2])


# ----------------------------------------------------------------------------- CPU: capture_step

def _linear_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def step(x, y):
        calls.append(1)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return {"loss": loss, "w": (model.weight, None)}

    return model, step, calls


def test_capture_step_on_cpu_runs_eagerly_with_the_documented_warning():
    model, step_fn, calls = _linear_step()
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = torch.randn(5, 4), torch.randn(5, 1)
    with pytest.warns(RuntimeWarning, match=re.escape(G.CAPTURE_STEP_CPU_MESSAGE)):
        step = capture_step(step_fn, x, y, warmup=2)
    assert G.CAPTURE_STEP_CPU_MESSAGE == \
        "capture_step: the inputs are not on a CUDA device; running fn eagerly (no CUDA graph)"
    assert not step.graphed and not step.captured and step.graph is None
    for i in range(4):
        xi, yi = torch.randn(5, 4), torch.randn(5, 1)
        out = step(xi, yi)
        ref_loss = F.mse_loss(ref(xi), yi)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        assert torch.equal(out["loss"], ref_loss.detach())
        assert out["loss"].grad_fn is None and not out["w"][0].requires_grad and out["w"][1] is None
    assert torch.equal(model.weight, ref.weight) and len(calls) == 4 and step.calls == 4


def test_capture_step_validates_inputs_before_running():
    _, step_fn, calls = _linear_step()
    x, y = torch.randn(5, 4), torch.randn(5, 1)
    with pytest.warns(RuntimeWarning):
        step = capture_step(step_fn, x, y)
    cases = [
        ((x,), TypeError, "expected 2 input"),
        ((x, y, y), TypeError, "expected 2 input"),
        ((torch.randn(4, 4), y), ValueError, r"input 0 has shape \(4, 4\) but the step was captured for \(5, 4\)"),
        ((x, y.double()), TypeError, "input 1 has dtype torch.float64 but the step was captured for torch.float32"),
        ((x, torch.empty(5, 1, device="meta")), ValueError, "input 1 is on meta but the step was captured for cpu"),
        ((x, 3.0), TypeError, "input 1 must be a torch.Tensor, got float"),
        ((x.clone().requires_grad_(True), y), ValueError, "input 0 requires grad"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            step(*args)
    assert calls == [], "validation must happen before fn runs"


def test_capture_step_argument_errors():
    f = lambda x: x * 2  # noqa: E731
    x = torch.randn(3)
    with pytest.raises(TypeError, match="fn must be callable"):
        capture_step(3, x)
    with pytest.raises(ValueError, match="warmup must be an int >= 1"):
        capture_step(f, x, warmup=0)
    with pytest.raises(ValueError, match="capture_error_mode"):
        capture_step(f, x, capture_error_mode="loose")
    with pytest.raises(ValueError, match="one device"):
        capture_step(f, x, torch.empty(3, device="meta"))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        capture_step(f, [1, 2])
    with pytest.warns(RuntimeWarning):
        bad = capture_step(lambda x: (x, 1.5), x)
    with pytest.raises(TypeError, match=r"output\[1\]: a captured step may return tensors"):
        bad(x)


class _RecordingCapture:
    """Stands in for torch.cuda.graph on a CPU: records whether the garbage collector was
    enabled inside the captured region (torch >= 2.9 no longer collects before capturing, and
    an old CUDAGraph freed mid-capture would spoil the capture)."""

    seen: list = []
    fail_on_exit = False

    def __init__(self, graph, pool=None, stream=None, capture_error_mode="global"):
        self.mode = capture_error_mode

    def __enter__(self):
        _RecordingCapture.seen.append(("enter", gc.isenabled(), self.mode))

    def __exit__(self, exc_type, exc, tb):
        _RecordingCapture.seen.append(("exit", gc.isenabled(), self.mode))
        if exc is not None and _RecordingCapture.fail_on_exit:  # as capture_end after a failed capture
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        return False


def test_capture_holds_the_garbage_collector_and_explains_failures(monkeypatch):
    """CapturedStep._capture, with torch.cuda's capture primitives replaced by recorders (the
    real capture needs a GPU: tests/test_graphs.py's @gpu tests): the collector is off exactly
    during the capture and back on afterwards, also when the step fails, and a failure becomes
    a CaptureError naming the root cause."""

    class _Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "graph", _RecordingCapture)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream())

    def make(fn):
        step = object.__new__(G.CapturedStep)
        step.fn, step.name, step.generators, step.before_capture = fn, "probe", (), None
        step.capture_error_mode, step.pool, step.stream, step.device = "thread_local", None, _Stream(), None
        step.static_inputs, step.graph = (torch.ones(2),), None
        return step

    assert gc.isenabled()
    _RecordingCapture.seen = []
    ok = make(lambda x: x * 3)
    ok._capture()
    assert _RecordingCapture.seen == [("enter", False, "thread_local"), ("exit", False, "thread_local")]
    assert gc.isenabled() and ok.captured and torch.equal(ok.static_outputs, torch.full((2,), 3.0))

    def host_read(x):
        if x.sum() > 0:  # a host read: fails under a real capture
            raise RuntimeError("operation not permitted when stream is capturing")
        return x

    bad = make(host_read)
    with pytest.raises(CaptureError, match="probe: CUDA graph capture failed: RuntimeError: operation not permitted"):
        bad._capture()
    assert gc.isenabled() and not bad.captured
    gc.disable()
    try:
        make(lambda x: x)._capture()
        assert not gc.isenabled(), "a collector the caller disabled stays disabled"
    finally:
        gc.enable()

    def ctrl_c(x):
        raise KeyboardInterrupt

    monkeypatch.setattr(_RecordingCapture, "fail_on_exit", True)
    with pytest.raises(KeyboardInterrupt, match="interrupted during CUDA graph capture"):
        make(ctrl_c)._capture()  # capture_end's error must not turn Ctrl-C into a CaptureError
    assert gc.isenabled()


# ----------------------------------------------------------------------------- CPU: fallback reasons, helpers

def test_graph_blocker_reasons():
    cuda = torch.device("cuda")
    assert G.graph_blocker(torch.device("cpu")) == G.CPU_FALLBACK_MESSAGE
    assert "data-parallel runs (world_size 2)" in G.graph_blocker(cuda, world_size=2)
    clean = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert G.graph_blocker(cuda, 1, {"D": clean}) is None
    hooked = copy.deepcopy(clean)
    hooked[0].register_forward_hook(lambda m, i, o: None)
    why = G.graph_blocker(cuda, 1, {"D": hooked})
    assert "D: module '0' has forward hooks" in why and why.endswith("running eager steps")
    param_hook = copy.deepcopy(clean)
    param_hook[0].weight.register_hook(lambda g: g)
    assert "parameter '0.weight' has gradient hooks" in G.graph_blocker(cuda, 1, {"D": param_hook})
    bn = nn.Sequential(nn.BatchNorm2d(4, momentum=None))
    assert "momentum=None" in G.graph_blocker(cuda, 1, {"G": bn})


def test_optimizer_state_helpers_copy_in_place():
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(4, 3)).square().mean().backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for _ in range(2):
        model(torch.randn(4, 3)).square().mean().backward()
        opt.step()
    objs = [v for p in model.parameters() for v in opt.state[p].values()]
    G.load_optimizer_state_inplace_(opt, saved)
    for p, pid in zip(model.parameters(), saved["param_groups"][0]["params"]):
        for k, v in opt.state[p].items():
            assert torch.equal(v, saved["state"][pid][k]), k
    now = [v for p in model.parameters() for v in opt.state[p].values()]
    assert len(now) == len(objs) and all(v is o for v, o in zip(now, objs)), "the same tensor objects"
    bad = copy.deepcopy(saved)
    bad["param_groups"][0]["betas"] = (0.5, 0.9)
    with pytest.raises(ValueError, match="betas"):
        G.load_optimizer_state_inplace_(opt, bad)
    fresh = torch.optim.Adam(nn.Linear(3, 2).parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="has stepped"):
        G.load_optimizer_state_inplace_(fresh, saved)
    # tensor lr: filled in place; portable state: float lr, capturable False
    lr = G.make_optimizer_capturable_(opt)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(1e-2)
    opt.param_groups[0]["lr"].fill_(3e-3)
    port = G.portable_optimizer_state(opt.state_dict())
    assert port["param_groups"][0]["lr"] == pytest.approx(3e-3) and port["param_groups"][0]["capturable"] is False
    G.load_optimizer_state_inplace_(opt, saved)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(1e-2)


# ----------------------------------------------------------------------------- GPU

gpu = pytest.mark.gpu


@pytest.fixture
def exact_cuda():
    """fp32 without TF32 and deterministic cuDNN, restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    yield torch.device("cuda")
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def _two_layer_d(kind):
    if kind == "torch":
        return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 8, 1, 0), nn.Flatten(0))
    from fastgan.nn import Conv2dAct

    return nn.Sequential(Conv2dAct(3, 8, 4, 2, 1, act="lrelu", alpha=0.2, gain=1.0), Conv2dAct(8, 1, 8, 1, 0),
                         nn.Flatten(0))


def _penalty_step(D, opt, x):
    """logistic loss + R1 through autograd.grad(create_graph=True), backward, Adam step."""
    xr = x.detach().requires_grad_(True)
    logits = D(xr)
    (grad,) = torch.autograd.grad(logits.sum(), xr, create_graph=True)
    loss = F.softplus(-logits).mean() + 5.0 * grad.square().sum(dim=[1, 2, 3]).mean()
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()
    return loss.detach()


@gpu
@pytest.mark.parametrize("kind", ["torch", "fastgan"])
def test_gpu_autograd_grad_create_graph_captures_in_one_graph(exact_cuda, kind):
    """RUN THIS FIRST ON A GPU. The primitive itself, with plain torch.cuda.graph (no fastgan
    helper): a 2-layer D, its input gradient with create_graph=True, the penalised loss's
    backward and a capturable Adam step, captured in ONE graph and replayed; every step must
    match the same computation run eagerly on a copy of D."""
    dev = exact_cuda
    torch.manual_seed(0)
    D_graph = _two_layer_d(kind).to(dev)
    D_eager = copy.deepcopy(D_graph)
    opt_graph = torch.optim.Adam(D_graph.parameters(), lr=1e-2, capturable=True)
    opt_eager = torch.optim.Adam(D_eager.parameters(), lr=1e-2, capturable=True)
    xs = [torch.randn(4, 3, 16, 16, device=dev) for _ in range(8)]
    static_x = torch.empty_like(xs[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: 3 real steps on a side stream
        for x in xs[:3]:
            static_x.copy_(x)
            _penalty_step(D_graph, opt_graph, static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _penalty_step(D_graph, opt_graph, static_x)
    losses = []
    for x in xs[3:]:
        static_x.copy_(x)
        graph.replay()
        losses.append(static_loss.clone())
    ref = []
    for x in xs:
        ref.append(_penalty_step(D_eager, opt_eager, x))
    torch.cuda.synchronize()
    for got, want in zip(losses, ref[3:]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(losses[0], losses[1]), "replays must see the new inputs"
    for (name, p), q in zip(D_graph.named_parameters(), D_eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@gpu
@pytest.mark.parametrize("kind", ["torch", "fastgan"])
def test_gpu_capture_step_penalties_match_eager(exact_cuda, kind):
    """capture_step on a D step with fastgan.functional.gradient_penalty (r1, and wgan-gp whose
    eps comes from the default CUDA generator inside the graph)."""
    dev = exact_cuda
    from fastgan import functional as FG

    for pen in ("r1", "wgan-gp"):
        torch.manual_seed(0)
        D1 = _two_layer_d(kind).to(dev)
        D2 = copy.deepcopy(D1)
        o1 = torch.optim.Adam(D1.parameters(), lr=1e-2, capturable=True)
        o2 = torch.optim.Adam(D2.parameters(), lr=1e-2, capturable=True)

        def make(D, opt):
            def step(real, fake):
                p = FG.gradient_penalty(D, real, fake, kind=pen, gamma=10.0)
                loss = FG.d_loss(D(real), D(fake), kind="ns") + p
                opt.zero_grad(set_to_none=False)
                loss.backward()
                opt.step()
                return loss.detach(), p.detach()
            return step

        reals = [torch.randn(4, 3, 16, 16, device=dev) for _ in range(7)]
        fakes = [torch.randn(4, 3, 16, 16, device=dev) for _ in range(7)]
        step = capture_step(make(D1, o1), reals[0], fakes[0], warmup=3)
        torch.cuda.manual_seed(123)
        got = [tuple(t.clone() for t in step(r, f)) for r, f in zip(reals, fakes)]
        assert step.captured
        torch.cuda.manual_seed(123)
        eager = make(D2, o2)
        want = [eager(r, f) for r, f in zip(reals, fakes)]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        for p, q in zip(D1.parameters(), D2.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@gpu
def test_gpu_replays_advance_the_rng_like_eager_calls(exact_cuda):
    dev = exact_cuda
    gen = torch.Generator(device=dev).manual_seed(7)

    def draw():
        return torch.randn(4, 8, device=dev, generator=gen), torch.rand(4, device=dev)

    step = capture_step(draw, warmup=2, generators=[gen], device=dev)
    torch.cuda.manual_seed(11)
    got = [tuple(t.clone() for t in step()) for _ in range(6)]
    assert step.captured
    for a, b in zip(got, got[1:]):
        assert not torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1]), "a replay must draw new numbers"
    state_graph = (gen.get_state(), torch.cuda.get_rng_state())
    gen.manual_seed(7)
    torch.cuda.manual_seed(11)
    want = [draw() for _ in range(6)]
    for g, w in zip(got, want):
        assert torch.equal(g[0], w[0]) and torch.equal(g[1], w[1]), "replays must draw what eager calls draw"
    assert torch.equal(state_graph[0], gen.get_state()) and torch.equal(state_graph[1], torch.cuda.get_rng_state())


def _gpu_cfg(tmp_path, **kw):
    base = dict(resolution=32, n_embedded=64, z_dim=16, g_width=8, d_width=8, batch_size=8, steps=1000,
                device="cuda", amp=False, out=str(tmp_path / "run"), progress=False, log_every=1,
                sample_every=100000, ckpt_every=100000, cuda_graphs=True)
    base.update(kw)
    return TrainConfig(**base)


def _batches(trainer, n, batch=8):
    data = trainer.dataset
    out = []
    for i in range(n):
        idx = [(i * batch + j) % len(data) for j in range(batch)]
        out.append(torch.stack([data[j][0] for j in idx]).pin_memory())
    return out


def _run_pair(tmp_path, steps, n_critic=1, **kw):
    """The same run three ways: graphed; eager with the graphed optimizer settings; cuda_graphs=False."""
    tg = Trainer(_gpu_cfg(tmp_path / "g", n_critic=n_critic, **kw))
    te = Trainer(_gpu_cfg(tmp_path / "e", n_critic=n_critic, **kw))
    te.graphs = None  # eager steps, same (capturable, tensor-lr) optimizers
    tp = Trainer(_gpu_cfg(tmp_path / "p", n_critic=n_critic, **{**kw, "cuda_graphs": False}))
    assert tg.graphs is not None and tp.graphs is None
    batches = _batches(tg, steps * n_critic)
    hist = {"g": [], "e": [], "p": []}
    cuda_rng = torch.cuda.get_rng_state()  # the default generator (WGAN-GP's eps) is shared: one run at a time
    for key, t in (("g", tg), ("e", te), ("p", tp)):
        torch.cuda.set_rng_state(cuda_rng)
        for i in range(steps):
            stats = t.train_step(batches[i * n_critic:(i + 1) * n_critic])
            hist[key].append(torch.stack([stats[k].float() for k in D_STATS + G_STATS]))
    torch.cuda.synchronize()
    return tg, te, tp, hist


def _assert_same_run(a, b, hist_a, hist_b, rtol, atol):
    for name in ("G", "D", "G_ema"):
        torch.testing.assert_close(flat(getattr(a, name)), flat(getattr(b, name)), rtol=rtol, atol=atol, msg=name)
    torch.testing.assert_close(torch.stack(hist_a), torch.stack(hist_b), rtol=rtol, atol=atol)


@gpu
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("loss,penalty", [("ns", "r1"), ("wgan", "wgan-gp")])
def test_gpu_trainer_graphs_match_eager_fp32(tmp_path, exact_cuda, fused, loss, penalty):
    tg, te, tp, hist = _run_pair(tmp_path, 12, fused=fused, loss=loss, penalty=penalty, reg_interval=2)
    assert tg.graphs.captured == (["d", "d_r1", "g"] if penalty == "r1" else ["d", "g"]) and tg.graphs_ready
    _assert_same_run(tg, te, hist["g"], hist["e"], rtol=1e-5, atol=1e-6)
    _assert_same_run(tg, tp, hist["g"], hist["p"], rtol=1e-4, atol=1e-5)  # float lr, non-capturable Adam
    assert torch.equal(tg.noise.get_state(), te.noise.get_state()), "same noise consumption"
    assert tg.d_steps == te.d_steps == 12


@gpu
def test_gpu_lazy_r1_schedule_matches_eager(tmp_path, exact_cuda):
    """R1 every 3rd D step (its own graph), two D steps per G step."""
    tg, te, _, hist = _run_pair(tmp_path, 10, n_critic=2, penalty="r1", reg_interval=3)
    assert tg.graphs.captured == ["d", "d_r1", "g"]
    _assert_same_run(tg, te, hist["g"], hist["e"], rtol=1e-5, atol=1e-6)
    pen = torch.stack(hist["g"])[:, D_STATS.index("penalty")]
    assert (pen != 0).any(), "the R1 graph must have run (the last D step of some iterations is an R1 step)"


@gpu
def test_gpu_trainer_graphs_match_eager_bf16(tmp_path, exact_cuda):
    """bf16 autocast; deterministic cuDNN (exact_cuda) so that both runs use the same algorithms
    (d_acc moves in steps of 1/batch: one logit flipping sign would exceed any tight tolerance)."""
    tg, te, _, hist = _run_pair(tmp_path, 12, amp=True, penalty="r1", reg_interval=2)
    _assert_same_run(tg, te, hist["g"], hist["e"], rtol=2e-2, atol=2e-3)


@gpu
def test_gpu_no_memory_growth_over_200_replays(tmp_path):
    t = Trainer(_gpu_cfg(tmp_path, penalty="r1", reg_interval=2))
    batch = _batches(t, 1)
    for _ in range(12):
        t.train_step(batch)
    assert t.graphs.captured == ["d", "d_r1", "g"]
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(200):
        t.train_step(batch)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before <= 64 * 1024


@gpu
def test_gpu_checkpoint_loads_in_place_after_capture(tmp_path, exact_cuda):
    t = Trainer(_gpu_cfg(tmp_path, penalty="r1", reg_interval=2))
    batches = _batches(t, 16)
    for b in batches[:12]:
        t.train_step([b])
    graphs = {k: s.graph for k, s in t.graphs.steps.items()}
    path = str(tmp_path / "mid.pt")
    save_checkpoint(t.state_dict(), path)
    for b in batches[12:]:
        t.train_step([b])
    torch.cuda.synchronize()
    after = [flat(t.G).clone(), flat(t.D).clone(), flat(t.G_ema).clone()]
    params = [p for p in t.D.parameters()]
    t.load_state_dict(load_checkpoint(path))
    assert t.step == 12 and [p for p in t.D.parameters()] == params
    for b in batches[12:]:
        t.train_step([b])
    torch.cuda.synchronize()
    assert {k: s.graph for k, s in t.graphs.steps.items()} == graphs, "no recapture"
    for a, b in zip(after, [flat(t.G), flat(t.D), flat(t.G_ema)]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # exact unless a kernel reduces with atomics
    # the checkpoint of a graphed run resumes eagerly (float lr, capturable=False)
    state = load_checkpoint(path)
    assert isinstance(state["opt_d"]["param_groups"][0]["lr"], float)
    Trainer(_gpu_cfg(tmp_path / "cpu", device="cpu", amp=False, cuda_graphs=False, fused=False, penalty="r1",
                     reg_interval=2), resume=path)


@gpu
def test_gpu_set_lr_needs_no_recapture(tmp_path, exact_cuda):
    tg = Trainer(_gpu_cfg(tmp_path / "g"))
    te = Trainer(_gpu_cfg(tmp_path / "e"))
    te.graphs = None
    batches = _batches(tg, 20)
    for t in (tg, te):
        for i, b in enumerate(batches):
            if i == 14:
                t.set_lr(lr_g=1e-3, lr_d=5e-5)
            t.train_step([b])
    torch.cuda.synchronize()
    for name in ("G", "D"):
        torch.testing.assert_close(flat(getattr(tg, name)), flat(getattr(te, name)), rtol=1e-5, atol=1e-6)
    tg.opt_d.param_groups[0]["lr"] = 1e-4
    with pytest.raises(RuntimeError, match="set_lr"):
        tg.train_step([batches[0]])


@gpu
def test_gpu_graph_errors_are_clear(tmp_path):
    t = Trainer(_gpu_cfg(tmp_path, penalty="none"))
    batches = _batches(t, 5)
    with pytest.raises(ValueError, match=r"real batch of shape \(7, 3, 32, 32\) differs"):
        t.train_step([batches[0]])
        t.train_step([batches[1][:7]])
    t.D.register_forward_hook(lambda m, i, o: None)
    with pytest.raises(CaptureError, match="forward hooks"):
        for b in batches:
            t.train_step([b])
    step = capture_step(lambda x: x * 2, torch.zeros(3, device="cuda"), warmup=1)
    step(torch.ones(3, device="cuda"))
    torch.testing.assert_close(step(torch.ones(3, device="cuda")), torch.full((3,), 2.0, device="cuda"))
    with pytest.raises(ValueError, match="shape"):
        step(torch.ones(4, device="cuda"))
    with pytest.raises(ValueError, match="is on cpu"):
        step(torch.ones(3))


@gpu
def test_gpu_train_loop_logs_every_step_asynchronously(tmp_path):
    t = Trainer(_gpu_cfg(tmp_path, steps=20, penalty="r1", reg_interval=2))
    summary = t.train()
    assert summary["status"] == "completed" and [h["step"] for h in t.history] == list(range(1, 21))
    for h in t.history:  # lazy R1 every 2nd D step: the penalty on odd steps only
        assert ("penalty" in h) == (h["step"] % 2 == 1)
        assert all(torch.isfinite(torch.tensor(h[k])) for k in D_STATS + G_STATS + ("step_ms",) if k in h)
    resumed = Trainer(_gpu_cfg(tmp_path, steps=22, penalty="r1", reg_interval=2),
                      resume=str(tmp_path / "run" / "checkpoint.pt"))
    assert resumed.step == 20 and resumed.graphs is not None
    resumed.train()
    assert resumed.step == 22
    assert fastgan.train.graphs.WARMUP_STEPS == 3


# ----------------------------------------------------------------------------- StyleGAN2's four graphs

def _sg2_cfg(tmp_path, **kw):
    """A tiny StyleGAN2 on the lazy schedule: R1 and path length every 2nd step, DiffAugment."""
    base = dict(model="stylegan2", resolution=16, n_embedded=16, z_dim=16, channel_base=64, channel_max=16,
                mapping_layers=2, batch_size=4, steps=100, device="cpu", out=str(tmp_path / "run"), progress=False,
                sample_every=10 ** 6, ckpt_every=10 ** 6, fused=False, reg_interval=2, pl_interval=2,
                augment="diffaug")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.filterwarnings("ignore:capture_step", "ignore:cuda_graphs=True needs a CUDA device")
@pytest.mark.parametrize("augment", ["diffaug", "ada"])
def test_stylegan2_graph_mode_step_logic_on_cpu_is_bitwise_eager(tmp_path, augment):
    """StyleGAN2's graph bookkeeping (CapturedStep runs eagerly on a CPU): four kinds, D and G
    stats slots with the path-length values, the lazy schedules picking the graphs; ADA in its
    capturable form (both trainers are cuda_graphs ones, whose eager fallback uses it too), its p
    moving (adjusted every 4 D steps)."""
    kw = dict(augment=augment, cuda_graphs=True, ada_p=0.5, ada_kimg=0.05)
    tg = _emulate_graph_mode(Trainer(_sg2_cfg(tmp_path / "g", **kw)))
    te = Trainer(_sg2_cfg(tmp_path / "e", **kw))
    assert tg.graphs.g_names == G_STATS + ("pl_penalty", "pl_mean")
    assert tg.graph_kinds == ("d", "d_r1", "g", "g_pl")
    batches = [torch.stack([te.dataset[j][0] for j in range(i * 4, i * 4 + 4)]) for i in range(4)]
    kinds = []
    for b in batches:
        kinds.append(tg.g_graph_kind())
        sg, se = tg.train_step([b]), te.train_step([b])
        assert list(sg) == list(se) and all(torch.equal(sg[k], se[k]) for k in se), (sg, se)
    assert kinds == ["g_pl", "g", "g_pl", "g"]  # path length on G steps 0, 2
    assert sorted(tg.graphs.steps) == ["d", "d_r1", "g", "g_pl"]
    assert [s.calls for _, s in sorted(tg.graphs.steps.items())] == [2, 2, 2, 2]
    for name in ("G", "D", "G_ema"):
        assert torch.equal(flat(getattr(tg, name)), flat(getattr(te, name))), name
    assert torch.equal(tg.pl_mean, te.pl_mean) and torch.equal(tg.noise.get_state(), te.noise.get_state())
    if augment == "ada":
        assert tg.ada.capturable and tg.ada.state_dict() == te.ada.state_dict() and tg.ada.p != 0.5


def test_stylegan2_graph_kinds_and_blockers(tmp_path):
    def kinds(**kw):
        return Trainer(_sg2_cfg(tmp_path, **kw)).graph_kinds

    assert kinds(penalty="r1+r2") == ("d", "g", "g_pl")
    assert kinds(reg_interval=1, pl_interval=1) == ("d_r1", "g_pl")
    assert kinds(penalty="none", pl_weight=0.0) == ("d", "g")
    # ADA: capturable with cuda_graphs (here the CPU's fallback warning, eager steps), not without
    with pytest.warns(RuntimeWarning, match=re.escape(G.CPU_FALLBACK_MESSAGE)):
        t = Trainer(_sg2_cfg(tmp_path / "ada", augment="ada", cuda_graphs=True))
    assert t.graphs is None and t.ada.capturable
    assert not Trainer(_sg2_cfg(tmp_path / "ada2", augment="ada")).ada.capturable
    with pytest.warns(RuntimeWarning, match="no captured conditional steps yet"):
        Trainer(_sg2_cfg(tmp_path / "cond", conditional=True, cuda_graphs=True))


def _sg2_gpu_pair(tmp_path, steps, **kw):
    """A StyleGAN2 run graphed and eager (the same capturable optimizers), in turn from one RNG state."""
    cfg = dict(device="cuda", amp=False, cuda_graphs=True, resolution=32, channel_base=256, channel_max=32,
               batch_size=8, n_embedded=64)
    cfg.update(kw)
    tg, te = Trainer(_sg2_cfg(tmp_path / "g", **cfg)), Trainer(_sg2_cfg(tmp_path / "e", **cfg))
    te.graphs = None
    assert tg.graphs is not None
    batches = _batches(tg, steps)
    hist = {"g": [], "e": []}
    names = tg.stat_names[0] + tg.stat_names[1]
    for key, t in (("g", tg), ("e", te)):
        for b in batches:
            stats = t.train_step([b])
            hist[key].append(torch.stack([stats[k].float() for k in names]))
    torch.cuda.synchronize()
    return tg, te, hist


@gpu
@pytest.mark.parametrize("fused,augment", [(True, "diffaug"), (False, "diffaug"), (True, "ada"), (False, "ada")])
def test_gpu_stylegan2_graphs_match_eager(tmp_path, exact_cuda, fused, augment):
    """The four StyleGAN2 graphs (D, D + lazy R1, G, G + lazy path length) against eager steps:
    weights, EMA, pl_mean, every logged value, the noise generator's consumption and (ADA, its
    capturable form in both) p, adjusted inside the D graph."""
    tg, te, hist = _sg2_gpu_pair(tmp_path, 4 * (G.WARMUP_STEPS + 2), fused=fused, augment=augment, ada_p=0.3,
                                 ada_kimg=0.1)
    assert tg.graphs.captured == ["d", "d_r1", "g", "g_pl"] and tg.graphs_ready
    _assert_same_run(tg, te, hist["g"], hist["e"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tg.pl_mean, te.pl_mean, rtol=1e-5, atol=1e-7)
    assert torch.equal(tg.noise.get_state(), te.noise.get_state()), "same noise consumption"
    if augment == "ada":
        assert tg.ada.state_dict() == te.ada.state_dict() and tg.ada.p != 0.3


@gpu
def test_gpu_stylegan2_graphs_bf16_blocks(tmp_path, exact_cuda):
    """amp: the top resolutions in bfloat16 with the conv clamp, graphed against eager."""
    tg, te, hist = _sg2_gpu_pair(tmp_path, 4 * (G.WARMUP_STEPS + 2), amp=True, fused=True)
    assert tg.graphs_ready
    _assert_same_run(tg, te, hist["g"], hist["e"], rtol=2e-2, atol=2e-3)


@pytest.mark.filterwarnings("ignore:cuda_graphs=True needs a CUDA device")
@pytest.mark.parametrize("model", ["dcgan", "stylegan2"])
def test_steps_copy_nothing_from_the_host_after_warm_up(tmp_path, monkeypatch, model):
    """A captured step must not build device tensors from host data (``torch.tensor(..., device=)``
    copies from pageable memory: a replay would read freed memory). After one warm-up iteration
    (where constants are made once and cached), the steps of a cuda_graphs trainer, every lazy
    kind included (StyleGAN2: ADA's capturable form, path length), make none. The DCGAN runs
    fastgan's ops (their launchers in the Triton interpreter), the StyleGAN2 plain torch (its
    fused ops' launchers make no tensors from host data either: no torch.tensor call in them)."""
    if model == "dcgan":
        t = Trainer(tiny(tmp_path, cuda_graphs=True, penalty="r1", reg_interval=2, batch_size=2, g_width=4,
                         d_width=4))
    else:
        t = Trainer(_sg2_cfg(tmp_path, cuda_graphs=True, augment="ada", ada_p=0.5))
    n = t.cfg.batch_size
    batches = [torch.stack([t.dataset[j][0] for j in range(i * n, i * n + n)]) for i in range(3)]
    t.train_step([batches[0]])
    copies = []

    def spy(make):
        def made(*args, **kwargs):
            if kwargs.get("device") is not None:
                copies.append("".join(traceback.format_stack(limit=4)[:-1]))
            return make(*args, **kwargs)
        return made

    monkeypatch.setattr(torch, "tensor", spy(torch.tensor))
    monkeypatch.setattr(torch, "as_tensor", spy(torch.as_tensor))
    for b in batches[1:]:  # the lazy kinds (R1, path length) come every 2nd step
        t.train_step([b])
    assert not copies, copies[0]
