"""fastgan.accelerate: DCGAN G/D (Sequential), an SNGAN-style D (fx rewrite, spectral and
weight norm), a model fx cannot trace; outputs and parameter gradients against the original
in train and eval mode, state_dict round trips, the report, unsupported configurations,
pickling / deepcopy / remove_parametrizations, torch.compile without graph breaks."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import fastgan
from fastgan.accelerate import AccelerateReport, is_fused

from .utils import assert_close

NZ, NGF, NDF, NC = 4, 4, 4, 3


def dcgan_generator():
    """The PyTorch examples DCGAN generator, scaled down: 1x1 -> 4 -> 8 -> 16."""
    return nn.Sequential(
        nn.ConvTranspose2d(NZ, NGF * 2, 4, 1, 0, bias=False), nn.BatchNorm2d(NGF * 2), nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF), nn.ReLU(True),
        nn.ConvTranspose2d(NGF, NC, 4, 2, 1, bias=False), nn.Tanh())


def dcgan_discriminator():
    """The PyTorch examples DCGAN discriminator, scaled down: 16 -> 8 -> 4 -> 1."""
    return nn.Sequential(
        nn.Conv2d(NC, NDF, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 2, 1, 4, 1, 0, bias=False), nn.Sigmoid())


class SNDiscriminator(nn.Module):
    """SNGAN-style D: activations called in forward, spectral norm (and one weight norm)."""

    def __init__(self):
        super().__init__()
        self.c1 = spectral_norm(nn.Conv2d(NC, 4, 3, 1, 1))
        self.c2 = spectral_norm(nn.Conv2d(4, 8, 4, 2, 1))
        self.blocks = nn.ModuleList([weight_norm(nn.Conv2d(8, 8, 3, 1, 1)), nn.Conv2d(8, 8, 4, 2, 1)])
        self.fc = spectral_norm(nn.Linear(8 * 4 * 4, 1))

    def forward(self, x):
        h = F.leaky_relu(self.c1(x), 0.1)
        h = F.leaky_relu(self.c2(h), negative_slope=0.1, inplace=True)
        h = torch.relu(self.blocks[0](h))
        h = self.blocks[1](h).tanh()
        return self.fc(h.flatten(1))


class Untraceable(nn.Module):
    """Data-dependent control flow in forward: fx cannot trace it; the Sequential inside is fused."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(NC, 4, 3, 1, 1), nn.LeakyReLU(0.2))
        self.c1 = nn.Conv2d(4, 4, 3, 1, 1)
        self.c2 = nn.Conv2d(4, 1, 4, 2, 1)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(self.c1(h)) if h.mean() > 0 else torch.tanh(self.c1(h))
        return torch.sigmoid(self.c2(h))


# (factory, input shape, expected replacements: name -> (pattern, act, alpha))
MODELS = {
    "dcgan_g": (dcgan_generator, (2, NZ, 1, 1), {
        "1": ("BatchNorm2d+ReLU", "relu", None), "4": ("BatchNorm2d+ReLU", "relu", None),
        "6": ("ConvTranspose2d+Tanh", "tanh", None),
        "0": ("ConvTranspose2d+BatchNorm2d", "linear", None), "3": ("ConvTranspose2d+BatchNorm2d", "linear", None)}),
    "dcgan_d": (dcgan_discriminator, (2, NC, 16, 16), {
        "0": ("Conv2d+LeakyReLU", "lrelu", 0.2), "3": ("BatchNorm2d+LeakyReLU", "lrelu", 0.2),
        "5": ("Conv2d+Sigmoid", "sigmoid", None), "2": ("Conv2d+BatchNorm2d", "linear", None)}),
    "sngan_d": (SNDiscriminator, (2, NC, 16, 16), {
        "c1": ("Conv2d(parametrized)+F.leaky_relu", "lrelu", 0.1),
        "c2": ("Conv2d(parametrized)+F.leaky_relu", "lrelu", 0.1),
        "blocks.0": ("Conv2d(parametrized)+torch.relu", "relu", None),
        "blocks.1": ("Conv2d+.tanh()", "tanh", None)}),
    "untraceable": (Untraceable, (2, NC, 8, 8), {"stem.0": ("Conv2d+LeakyReLU", "lrelu", 0.2)}),
}


# The equivalence checks run in float64, where the fused kernels and torch's ops agree to
# rounding (TOL[float64]); in float32 the two differ by rounding amplified by the models' final
# reductions (logits that are small differences of large sums). TF32 is switched off there.
F32_TOL = 1e-4


@pytest.fixture
def no_tf32():
    # saved and restored by hand: torch.backends.cuda.matmul resolves its attributes through
    # __getattr__, which some pytest versions' monkeypatch.setattr does not accept
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _make(name, device, dtype=torch.float64):
    factory, shape, expected = MODELS[name]
    model = factory().to(device=device, dtype=dtype)
    if name == "dcgan_g":  # non-trivial BN affine parameters
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model, torch.randn(shape, device=device, dtype=dtype), expected


def _step(model, x, dy_seed):
    """Forward, backward with a fixed upstream gradient; returns (y, {param name: grad})."""
    model.zero_grad(set_to_none=True)
    y = model(x)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)).to(y.device)
    y.backward(dy)
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_state(a, b, what, tol=None):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        if sa[k].is_floating_point():
            assert_close(sa[k], sb[k], sa[k].dtype, f"{what}: {k}", tol=tol)
        else:
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(MODELS))
def test_outputs_and_gradients_match_in_train_and_eval(name, dtype, device, no_tf32):
    model, x, expected = _make(name, device, dtype)
    tol = None if dtype == torch.float64 else F32_TOL
    acc, report = fastgan.accelerate(model, inplace=False, report=True)
    assert acc is not model and acc.fastgan_report is report
    assert {r.name: (r.pattern, r.act, r.alpha) for r in report.replaced} == expected
    assert all(r.gain == 1.0 for r in report.replaced)
    assert list(acc.state_dict()) == list(model.state_dict())
    for mode in ("train", "eval", "train"):
        model.train(mode == "train")
        acc.train(mode == "train")
        y_ref, g_ref = _step(model, x, 1)
        y, g = _step(acc, x, 1)
        assert y.dtype == dtype
        assert_close(y, y_ref, dtype, f"{name} {mode} output", tol)
        assert g.keys() == g_ref.keys()
        for k in g:
            assert_close(g[k], g_ref[k], dtype, f"{name} {mode} grad {k}", tol)
        # running statistics, num_batches_tracked and spectral-norm u/v evolve identically
        _assert_same_state(acc, model, f"{name} {mode}", tol)


@pytest.mark.parametrize("name", ["dcgan_g", "sngan_d"])
def test_state_dict_round_trips_both_ways(name, device):
    model, x, _ = _make(name, device)
    acc = fastgan.accelerate(model, inplace=False)
    other, _, _ = _make(name, device)  # fresh weights
    other_acc = fastgan.accelerate(other)
    other_acc.load_state_dict(model.state_dict())          # original checkpoint -> accelerated model
    model.eval()
    other_acc.eval()
    assert_close(other_acc(x), model(x), torch.float64, "original -> accelerated")
    fresh, _, _ = _make(name, device)
    fresh.load_state_dict(acc.state_dict())                 # accelerated checkpoint -> original model
    fresh.eval()
    acc.eval()
    assert_close(fresh(x), acc(x), torch.float64, "accelerated -> original")


def test_sngan_parametrizations_stay_in_place(device):
    model, x, _ = _make("sngan_d", device)
    acc = fastgan.accelerate(model)
    c1 = acc.c1
    assert is_fused(c1) and parametrize.is_parametrized(c1, "weight")
    assert "c1.parametrizations.weight.original" in acc.state_dict()
    assert "c1.parametrizations.weight.0._u" in acc.state_dict()
    # the fused op reads the parametrized weight: changing `original` changes the output
    acc.eval()
    y0 = acc(x)
    with torch.no_grad():
        c1.parametrizations.weight.original.add_(torch.randn_like(c1.parametrizations.weight.original))
    assert not torch.allclose(acc(x), y0)
    # remove_parametrizations leaves a fused plain convolution that computes the same
    w = c1.weight.detach().clone()
    parametrize.remove_parametrizations(c1, "weight")
    assert is_fused(c1) and not parametrize.is_parametrized(c1)
    assert torch.equal(c1.weight, w)
    y1 = acc(x)
    ref = F.leaky_relu(F.conv2d(x, w, c1.bias, padding=1), 0.1)
    assert_close(c1(x), ref, torch.float64, "unparametrized fused conv")
    assert torch.isfinite(y1).all()


def test_untraceable_model_is_reported_not_partially_rewritten(device):
    model, x, _ = _make("untraceable", device)
    acc, report = fastgan.accelerate(model, report=True)
    assert type(acc) is Untraceable, "the forward was not rewritten"
    assert not is_fused(acc.c1) and not is_fused(acc.c2)
    (left,) = [s for s in report.left if s.name == ""]
    assert "cannot trace" in left.reason and "c1" in left.reason and "c2" in left.reason
    assert "Untraceable.forward" in str(report)


def test_nothing_to_fuse_returns_an_equal_copy(device):
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.Conv2d(1, 2, 3), nn.Dropout()).to(device)
    acc, report = fastgan.accelerate(model, inplace=False, report=True)
    assert acc is not model and report.nothing_fused
    assert "nothing to fuse" in str(report)
    # every conv / linear / norm / activation module left as is is listed, with the reason (issue 13)
    assert {s.name: s.pattern for s in report.left} == {"0": "Linear", "2": "Conv2d"}
    assert report.coverage == (0, 2) and "0 of 2 conv/linear/norm modules fused" in str(report)
    assert [type(m) for m in acc.modules()] == [type(m) for m in model.modules()]
    _assert_same_state(acc, model, "copy")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_unsupported_configurations_are_left_and_reported(device, no_tf32):
    shared = nn.Conv2d(2, 2, 3, padding=1)
    hooked = nn.Conv2d(2, 2, 3, padding=1)
    hooked.register_forward_hook(lambda m, i, o: None)

    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.ReLU(),      # 0, 1
        nn.Conv2d(2, 2, 3, padding=1), nn.ELU(alpha=0.5),                       # 2, 3
        shared, nn.ReLU(),                                                       # 4, 5
        nn.Sequential(shared),                                                   # 6
        hooked, nn.Tanh(),                                                       # 7, 8
        MyConv(2, 2, 1), nn.Sigmoid(),                                           # 9, 10
        nn.Conv2d(2, 2, 4, padding="same"), nn.SiLU(),                           # 11, 12 (asymmetric same)
        nn.Conv2d(2, 2, 3, padding="same", groups=2), nn.ELU(),                  # 13, 14 fused
        nn.Conv2d(2, 2, 3, padding=1), nn.Softplus(beta=2.0),                    # 15, 16
        nn.Conv2d(2, 2, 3, padding=1), nn.Softplus(), nn.Identity(),             # 17, 18 fused, 19
    ).to(device)
    x = torch.randn(1, 2, 6, 6, device=device)
    y_ref = model(x)
    acc, report = fastgan.accelerate(model, report=True)
    left = {s.name: s.reason for s in report.left}
    assert "padding_mode='reflect'" in left["0"]
    assert "ELU(alpha=0.5)" in left["2"]
    assert "more than one place" in left["4"]
    assert "forward hooks" in left["7"]
    assert "overrides forward" in left["9"]
    assert "asymmetric" in left["11"]
    assert "Softplus(beta=2.0" in left["15"]
    assert {r.name: r.act for r in report.replaced} == {"13": "elu", "17": "softplus"}
    for i in (0, 2, 4, 7, 9, 11, 15):
        assert not is_fused(acc[i])
    assert isinstance(acc[1], nn.ReLU) and isinstance(acc[18], nn.Identity)
    assert_close(acc(x), y_ref, torch.float32, "partially fused model", F32_TOL)


def test_bad_input_and_arguments():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastgan.accelerate(lambda x: x)
    with pytest.raises(TypeError, match="dtype"):
        fastgan.accelerate(nn.ReLU(), dtype=torch.int32)
    with pytest.raises(TypeError, match="inplace"):
        fastgan.accelerate(nn.ReLU(), inplace=1)
    with pytest.raises(TypeError, match="batch_norm"):
        fastgan.accelerate(nn.ReLU(), batch_norm=None)


def test_inplace_dtype_and_idempotence(device):
    model, x, _ = _make("dcgan_d", device)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    same = fastgan.accelerate(model, inplace=True)
    assert same is model and all(a is b for a, b in zip(convs, (m for m in model.modules()
                                                                 if isinstance(m, nn.Conv2d))))
    assert is_fused(model[0])
    model(x).sum().backward()
    opt.step()  # the optimizer built before the call still owns the parameters
    again, report = fastgan.accelerate(model, report=True)
    assert report.nothing_fused and report.left == [] and report.coverage == (4, 4)  # (the conv before the BN too)
    double = fastgan.accelerate(dcgan_discriminator().to(device), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())
    assert double(x.double()).dtype == torch.float64


def test_deepcopy_and_pickle(device):
    model, x, _ = _make("dcgan_g", device)
    acc = fastgan.accelerate(model).eval()
    buf = io.BytesIO()
    torch.save(acc, buf)  # fused modules pickle through their original class
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert is_fused(loaded[6]) and type(loaded[6]) is type(acc[6])
    assert_close(loaded(x), acc(x), torch.float64, "pickled")
    sn = fastgan.accelerate(_make("sngan_d", device)[0]).eval()
    twin = copy.deepcopy(sn)
    assert is_fused(twin.c1) and twin.c1 is not sn.c1
    xs = torch.randn(1, NC, 16, 16, device=device, dtype=torch.float64)
    assert_close(twin(xs), sn(xs), torch.float64, "deepcopy")
    with pytest.raises(RuntimeError):
        torch.save(sn, io.BytesIO())


def test_r1_penalty_through_accelerated_discriminator(device):
    """Second order through the fused convolutions (gradient penalty) equals the original."""
    model, x, _ = _make("sngan_d", device)
    acc = fastgan.accelerate(model, inplace=False)
    model.eval()
    acc.eval()
    grads = []
    for m in (model, acc):
        m.zero_grad(set_to_none=True)
        penalty = fastgan.functional.gradient_penalty(m, x, kind="r1", gamma=1.0)
        penalty.backward()
        grads.append((penalty.detach(), {n: p.grad for n, p in m.named_parameters()}))
    assert_close(grads[1][0], grads[0][0], torch.float64, "penalty")
    assert grads[0][1]["c1.parametrizations.weight.original"] is not None
    for k, ref in grads[0][1].items():
        if ref is None:  # fc.bias does not change the input gradient
            assert grads[1][1][k] is None, k
        else:
            assert_close(grads[1][1][k], ref, torch.float64, f"penalty grad {k}")


def test_penalty_through_batch_norm_is_exact(device):
    """A penalty through the fused training-mode batch norm gives torch's penalty and parameter
    gradients, with .backward() and with autograd.grad (issue 13: autograd.grad returned wrong or
    missing gradients without an error); batch_norm=False keeps torch's batch norm, equally exact."""
    model, x, _ = _make("dcgan_d", device)
    fused, report = fastgan.accelerate(model, inplace=False, report=True)
    assert "3" in [r.name for r in report.replaced]  # the batch norm is fused
    plain_bn, report = fastgan.accelerate(model, inplace=False, batch_norm=False, report=True)
    assert [r.name for r in report.replaced] == ["0", "5"] and type(plain_bn[3]) is nn.BatchNorm2d
    results = []
    for m in (model, fused, plain_bn):
        params = list(m.parameters())
        via_grad = torch.autograd.grad(fastgan.functional.gradient_penalty(m, x, kind="r1", gamma=1.0), params)
        m.zero_grad(set_to_none=True)
        penalty = fastgan.functional.gradient_penalty(m, x, kind="r1", gamma=1.0)
        penalty.backward()
        results.append((penalty.detach(), via_grad, [p.grad for p in params]))
    for got in results[1:]:
        assert_close(got[0], results[0][0], torch.float64, "penalty")
        for a, b, r in zip(got[1], got[2], results[0][2]):
            assert_close(a, r, torch.float64, "penalty grad (autograd.grad)", tol=1e-8)
            assert_close(b, r, torch.float64, "penalty grad (.backward)", tol=1e-8)


@pytest.mark.parametrize("name", ["dcgan_g", "dcgan_d", "sngan_d"])
def test_compile_fullgraph_matches_eager(name, device):
    torch._dynamo.reset()
    model, x, _ = _make(name, device)
    acc = fastgan.accelerate(model)
    twin = copy.deepcopy(acc)
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)  # fullgraph: a break would raise
    for mode in (True, False):
        acc.train(mode)
        twin.train(mode)
        y_ref, g_ref = _step(acc, x, 2)
        y, _ = _step(compiled, x, 2)
        g = {n: p.grad for n, p in twin.named_parameters()}
        assert_close(y, y_ref, torch.float64, f"compiled {name} output")
        for k in g_ref:
            assert_close(g[k], g_ref[k], torch.float64, f"compiled {name} grad {k}")
    _assert_same_state(twin, acc, "compiled")
    explain = torch._dynamo.explain(copy.deepcopy(acc))(x)
    assert explain.graph_break_count == 0
    code = "\n".join(g.code for g in explain.graphs)
    assert "torch.ops.fastgan." in code


def test_compile_untraceable_model_breaks_only_on_its_own_control_flow(device):
    torch._dynamo.reset()
    model, x, _ = _make("untraceable", device)
    acc = fastgan.accelerate(model)
    explain = torch._dynamo.explain(acc)(x)
    reasons = " ".join(str(r.reason) for r in explain.break_reasons)
    assert explain.graph_break_count >= 1 and "fastgan" not in reasons
    compiled = torch.compile(copy.deepcopy(acc), backend="aot_eager")
    assert_close(compiled(x), acc(x), torch.float64, "compiled untraceable")


def test_readme_wgan_gp_before_and_after_agree(device):
    """The README's hand-written WGAN-GP lines and their fastgan replacements (accelerated D,
    d_loss / g_loss / gradient_penalty) give the same losses and gradients."""
    from fastgan.functional import d_loss, g_loss, gradient_penalty
    D, real, _ = _make("sngan_d", device)
    D.eval()  # spectral norm: no power iteration, so both runs see one weight
    fake = torch.randn_like(real)
    eps = torch.rand(real.shape[0], device=device, dtype=real.dtype)
    # before
    D.zero_grad(set_to_none=True)
    e = eps.view(-1, 1, 1, 1)
    x_hat = (e * real + (1 - e) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    gp = 10.0 * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    loss_d = D(fake).mean() - D(real).mean() + gp
    loss_d.backward()
    loss_g = -D(fake).mean()
    before = (loss_d.detach(), loss_g.detach(), [p.grad.clone() for p in D.parameters()])
    # after
    D_fast = fastgan.accelerate(D, inplace=False)
    D_fast.zero_grad(set_to_none=True)
    loss_d = d_loss(D_fast(real), D_fast(fake), kind="wgan") + gradient_penalty(
        D_fast, real, fake, kind="wgan-gp", gamma=10.0, eps=eps)
    loss_d.backward()
    loss_g = g_loss(D_fast(fake), kind="wgan")
    after = (loss_d.detach(), loss_g.detach(), [p.grad for p in D_fast.parameters()])
    assert_close(after[0], before[0], torch.float64, "loss_d")
    assert_close(after[1], before[1], torch.float64, "loss_g")
    for a, r in zip(after[2], before[2]):
        assert_close(a, r, torch.float64, "D grads")


def test_report_str_lists_everything():
    report = AccelerateReport()
    assert "nothing to fuse" in str(report)
    acc, report = fastgan.accelerate(dcgan_discriminator(), report=True)
    text = str(report)
    assert "0: Conv2d+LeakyReLU -> fused act=lrelu, alpha=0.2, gain=1" in text
    assert "removed 1" in text


def test_optimizer_built_before_accelerate_trains_the_model(device):
    """The common line `G = fastgan.accelerate(G)` rewrites G in place (issue 18: a deep copy by
    default left an optimizer built before it training nothing, silently)."""
    model, x, _ = _make("dcgan_g", device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model = fastgan.accelerate(model)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_shared_blocks_stay_shared_in_place_and_copies_are_reported(device):
    """Two encoders sharing a block (UNIT): in place the sharing survives; a copy says what it
    separated (issue 13)."""
    shared = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.LeakyReLU(0.2))
    e1 = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), shared).to(device)
    e2 = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), shared).to(device)
    copy_, report = fastgan.accelerate(e1, inplace=False, report=True)
    assert copy_[2] is not e2[2] and report.copied == ["2"]
    assert "copied" in str(report)
    same, report = fastgan.accelerate(e1, report=True)
    assert same[2] is e2[2] and is_fused(e2[2][0]) and not report.copied
    x = torch.randn(1, 3, 5, 5, device=device, dtype=e2[0].weight.dtype)
    ref = F.leaky_relu(F.conv2d(F.relu(e2[0](x)), shared[0].weight, shared[0].bias, padding=1), 0.2)
    assert_close(e2(x), ref, torch.float32, "the other encoder through the shared fused block", F32_TOL)


def test_restore_is_the_exact_inverse(device):
    """fastgan.restore(accelerate(m)) is m again: torch's classes, the activation modules back in
    their slots, the user forwards fx rewrote, parametrizations kept."""
    for name in ("dcgan_g", "dcgan_d", "sngan_d"):
        model, x, _ = _make(name, device)
        original = copy.deepcopy(model)
        fastgan.restore(fastgan.accelerate(model))
        assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()], name
        assert list(model.state_dict()) == list(original.state_dict())
        assert not any(is_fused(m) for m in model.modules())
        model.eval()
        original.eval()
        assert_close(model(x), original(x), torch.float64, f"{name} restored")
    sn, x, _ = _make("sngan_d", device)
    fastgan.restore(fastgan.accelerate(sn))
    assert parametrize.is_parametrized(sn.c1, "weight") and type(sn.c1).__bases__[0] is nn.Conv2d


def test_module_tools_see_the_torch_model(device):
    """SyncBatchNorm conversion keeps the folded activation (it was dropped: 7.7e-2 off), and
    torch.fx.symbolic_trace traces an accelerated model (fused modules are leaves)."""
    model, x, _ = _make("dcgan_g", device)
    model.eval()
    ref = copy.deepcopy(model)(x)
    fastgan.accelerate(model)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert_close(converted(x), ref, torch.float64, "after convert_sync_batchnorm")
    d, xd, _ = _make("dcgan_d", device)
    ref_d = copy.deepcopy(d)(xd)
    traced = torch.fx.symbolic_trace(fastgan.accelerate(d))
    assert any(n.op == "call_module" for n in traced.graph.nodes)
    assert_close(traced(xd), ref_d, torch.float64, "fx-traced accelerated model")


def test_conv_before_a_fused_batch_norm_computes_its_statistics(device):
    """Conv2d -> BatchNorm2d -> act in a Sequential: the conv's epilogue computes the batch
    statistics' partials (counted: no statistics pass, one merge), outputs as the torch model's
    (test_outputs_and_gradients_match_in_train_and_eval); restore removes the flag."""
    from collections import Counter
    from fastgan.benchmarks.launches import count_launches
    model, x, _ = _make("dcgan_d", device)
    acc = fastgan.accelerate(model, inplace=False)
    assert acc[2].bn_partials and is_fused(acc[2])
    counts = Counter()
    with count_launches(counts):
        acc(x)
    if fastgan.backend_for(x) != "eager":
        assert counts["triton._bn_stats_kernel"] == 0 and counts["triton._bn_finalize_kernel"] == 1, dict(counts)
    fastgan.restore(acc)
    assert type(acc[2]) is nn.Conv2d and "bn_partials" not in acc[2].__dict__


def test_conv_before_instance_norm_and_a_norm_without_activation(device):
    """A residual-block Sequential (CycleGAN's, SRGAN's): Conv -> InstanceNorm2d -> ReLU -> Conv ->
    InstanceNorm2d, and Conv -> BatchNorm2d with no activation after the norm: every conv and
    norm is fused (the norms without an activation with a linear epilogue), the convs compute
    their norm's statistics (no statistics pass, counted), and outputs, gradients and running
    statistics equal the torch model's in train and eval mode (float64)."""
    from collections import Counter
    from fastgan.benchmarks.launches import count_launches
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.InstanceNorm2d(4, affine=True), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, 1, 1), nn.InstanceNorm2d(4),
                          nn.Conv2d(4, 5, 3, 1, 1, bias=False), nn.BatchNorm2d(5)).to(device).double()
    x = torch.randn(2, 3, 16, 16, device=device, dtype=torch.float64)
    acc, report = fastgan.accelerate(model, inplace=False, report=True)
    assert report.coverage == (6, 6) and report.left == []
    assert (acc[0].bn_partials, acc[3].bn_partials, acc[5].bn_partials) == ("instance", "instance", True)
    assert {r.name: r.act for r in report.replaced if r.name in ("4", "6")} == {"4": "linear", "6": "linear"}
    counts = Counter()
    with count_launches(counts):
        acc(x)
    model(x)  # the same running-statistics update
    if fastgan.backend_for(x) != "eager":
        assert counts["triton._bn_stats_kernel"] == 0 and counts["triton._bn_finalize_kernel"] == 3, dict(counts)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        acc.train(mode == "train")
        y_ref, g_ref = _step(model, x, 2)
        y, g = _step(acc, x, 2)
        assert_close(y, y_ref, torch.float64, f"{mode} output")
        for k in g:
            if k in ("0.bias", "3.bias"):  # the instance norm removes it (no running stats): 0 up to rounding
                assert g[k].abs().max() < 1e-10 * g["0.weight"].abs().max()
                assert g_ref[k].abs().max() < 1e-10 * g_ref["0.weight"].abs().max()
            else:
                assert_close(g[k], g_ref[k], torch.float64, f"{mode} grad {k}")
        _assert_same_state(acc, model, mode)
