"""ADA's augmentation pipeline (fastgan.train.ada): each transform twice differentiable w.r.t. the
image (gradcheck / gradgradcheck in float64; the geometric group through the Triton kernels too),
the fastgan ops against plain torch, known answers, the adaptive p controller, exact resume of
p in a tiny StyleGAN2 run, and clear errors."""
import json
import math

import pytest
import torch

import fastgan
from fastgan.train.ada import (BLIT, COLOR, GEOMETRIC, SYM6, TRANSFORMS, AdaController, ada_augment, apply_params,
                               sample_params)

from .utils import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def gen(device, seed=3):
    return torch.Generator(device=device).manual_seed(seed)


def image(device, n=2, c=3, s=8):
    return torch.randn(n, c, s, s, dtype=F64, device=device)


def test_sym6_filter_is_orthogonal_with_six_vanishing_moments():
    """g sums to 1, sum_k g[k] g[k + 2l] = delta_l / 2 (so the 2x down/up pair is the identity),
    and its high-pass mirror has 6 vanishing moments: sum_k (-1)^k k^m g[k] = 0 for m < 6."""
    g = torch.tensor(SYM6, dtype=F64)
    k = torch.arange(12, dtype=F64)
    assert abs(g.sum().item() - 1) < 1e-15
    for lag in range(6):
        assert abs((g[:12 - 2 * lag] * g[2 * lag:]).sum().item() - (0.5 if lag == 0 else 0)) < 1e-15, lag
    for m in range(6):
        assert abs(((-1) ** k * k ** m * g).sum().item()) < 1e-15 * 11 ** m, m


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_is_twice_differentiable(name, device):
    """p = 1, one fixed draw: gradcheck and gradgradcheck (fast mode) w.r.t. the image, through
    fastgan's ops (their eager references here) and, for the geometric ones, plain torch."""
    x = image(device, n=4).requires_grad_(True)
    with fastgan.use_backend("eager"):
        for fused in (True, False) if name in GEOMETRIC else (True,):
            def fn(t):
                return ada_augment(t, 1.0, gen(device), transforms=(name,), fused=fused)

            assert (fn(x) - x).abs().max() > 1e-3, f"{name} left the image unchanged"
            assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
            assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)


def test_whole_pipeline_full_gradgradcheck(device):
    """Every transform at p = 1 in one pipeline: the full (not fast-mode) first and second order."""
    x = image(device, n=1, s=4).requires_grad_(True)

    def fn(t):
        return ada_augment(t, 1.0, gen(device, 5))

    with fastgan.use_backend("eager"):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_geometric_group_through_triton_kernels(device):
    """The geometric group (one affine map: reflect pad, upfirdn2d up, grid_sample, upfirdn2d
    down) on the test backend, i.e. the Triton kernels (interpreted on the CPU, about 0.2 s a
    launch): the second order here; the first is compared with plain torch below."""
    x = image(device, n=1).requires_grad_(True)

    def fn(t):
        return ada_augment(t, 1.0, gen(device), transforms=GEOMETRIC)

    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True, check_undefined_grad=False)


def test_fused_matches_plain_torch(device):
    """The same draw through fastgan's kernels and through F.conv2d / F.grid_sample: output and
    input gradient agree within DESIGN.md's float64 bound."""
    x = image(device)
    prm = sample_params(2, 8, 1.0, gen(device, 7), device)
    assert prm.flip.any() or prm.rot90.any() or prm.shift.any()
    dy = torch.randn(2, 3, 8, 8, dtype=F64, device=device)
    out = []
    for fused in (True, False):
        xi = x.clone().requires_grad_(True)
        y = apply_params(xi, prm, fused=fused)
        (dx,) = torch.autograd.grad(y, xi, dy)
        out.append((y, dx))
    (yf, dxf), (yp, dxp) = out
    assert_close(yf, yp, F64, "augmented images")
    assert_close(dxf, dxp, F64, "image gradient")


def test_p0_is_the_identity(device):
    x = image(device)
    g = gen(device)
    state = g.get_state()
    assert ada_augment(x, 0.0, g) is x
    assert torch.equal(g.get_state(), state)  # nothing drawn
    # p > 0 where no sample draws a transform (all gates closed): the image exactly, all groups
    prm = sample_params(2, 8, 1e-12, gen(device), device)
    assert not prm.flip.any() and not prm.rot90.any() and not prm.shift.any()
    assert torch.equal(apply_params(x, prm), x)


def test_blits_are_exact_permutations(device):
    """x-flip = torch.flip, a k-quarter turn = torch.rot90(k), the integer shift moves every pixel
    by (dx, dy), reflected at the border; every value exact."""
    x = image(device, n=16, s=8)
    prm = sample_params(16, 8, 1.0, gen(device), device, transforms=("xflip",))
    y = apply_params(x, prm)
    assert 0 < prm.flip.sum() < 16
    for i in range(16):
        assert torch.equal(y[i], x[i].flip(2) if prm.flip[i] else x[i])
    prm = sample_params(16, 8, 1.0, gen(device), device, transforms=("rotate90",))
    y = apply_params(x, prm)
    assert set(prm.rot90.tolist()) == {0, 1, 2, 3}
    for i in range(16):
        assert torch.equal(y[i], torch.rot90(x[i], int(prm.rot90[i]), dims=(1, 2)))
    prm = sample_params(16, 8, 1.0, gen(device), device, transforms=("xint",))
    y = apply_params(x, prm)
    assert prm.shift.abs().max() == 1 and (prm.shift != 0).any()  # round(U(-1/8, 1/8) * 8)
    reflect = [1, 0, 1, 2, 3, 4, 5, 6, 7, 6]  # index i + 1 of the mirrored row i = -1 .. 8
    for i in range(16):
        dx, dy = prm.shift[i].tolist()
        rows = torch.tensor([reflect[r - dy + 1] for r in range(8)], device=device)
        cols = torch.tensor([reflect[c - dx + 1] for c in range(8)], device=device)
        assert torch.equal(y[i], x[i][:, rows][:, :, cols])


def test_geometric_known_answers(device):
    """Through the resampler (another sample of the batch moves, so it runs): the identity map
    gives the image back to rounding, every pixel (the wavelet pair is orthogonal; the reflect
    padding covers the filters), and so does a 1-pixel translation (reflected at the border). A
    quarter turn equals torch.rot90 on a smooth image up to the filter: the up- and the
    downsampling then act along different axes, which is exact only for pure translations."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    smooth = torch.stack([torch.sin(0.4 * xx + 0.3 * yy), torch.cos(0.25 * yy - 0.2 * xx), xx * yy / 100])
    x = torch.stack([smooth.to(F64), torch.randn(3, 16, 16, dtype=F64)]).to(device)

    eye = torch.eye(3, dtype=F64, device=device)
    nudge = eye.clone()
    nudge[1, 2] = 1e-3  # sample 1 moves (so the resampler runs) but reaches no further than sample 0

    def run(m0, i):
        prm = sample_params(2, 16, 1.0, gen(device), device, transforms=("xfrac",))
        prm.geom = torch.stack([m0, nudge])
        with fastgan.use_backend("eager"):
            return apply_params(x[[i, 1 - i]], prm)[0]

    assert_close(run(eye, 1), x[1], F64, "identity map", tol=1e-13)
    shift = eye.clone()
    shift[0, 2] = -1.0  # M^-1 reads one pixel to the left: the content moves right
    y = run(shift, 1)
    assert_close(y[:, :, 1:], x[1, :, :, :-1], F64, "one-pixel shift", tol=1e-13)
    assert_close(y[:, :, 0], x[1, :, :, 1], F64, "reflected column", tol=1e-13)
    quarter = eye.clone()
    quarter[:2, :2] = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)  # M^-1 = R(-pi/2)
    y, ref = run(quarter, 0), torch.rot90(x[0], -1, dims=(1, 2))
    assert_close(y[:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], F64, "quarter turn (interior)", tol=1e-2)


def test_padding_covers_the_filters(device, monkeypatch):
    """The reflect padding reaches every input pixel the resampling reads: 8 more pixels a side
    change nothing (a random draw of the geometric group, rotations and zooms included)."""
    from fastgan.train import ada

    x = image(device, n=4, s=16)
    prm = sample_params(4, 16, 1.0, gen(device, 1), device, transforms=GEOMETRIC)
    with fastgan.use_backend("eager"):
        y = apply_params(x, prm)
        monkeypatch.setattr(ada, "_PAD_SLACK", ada._PAD_SLACK + 8)
        assert_close(y, apply_params(x, prm), F64, "with more padding", tol=1e-13)


def test_color_transforms(device):
    """Luma flip is an involution; brightness adds one value per image; hue rotation, saturation
    and luma flip keep a grey image grey (they act about the luma axis)."""
    x = image(device, n=8)
    prm = sample_params(8, 8, 1.0, gen(device), device, transforms=("lumaflip",))
    assert 0 < (prm.color[:, 0, 0] != 1).sum() < 8
    y = apply_params(x, prm)
    assert (y - x).abs().max() > 0.1
    assert_close(apply_params(y, prm), x, F64, "luma flip twice")
    prm = sample_params(8, 8, 1.0, gen(device), device, transforms=("brightness",))
    d = apply_params(x, prm) - x
    assert torch.allclose(d, d[:, :1, :1, :1].expand_as(d), atol=1e-15) and d.abs().max() > 0.01
    grey = torch.ones(8, 3, 8, 8, dtype=F64, device=device) * torch.rand(8, 1, 1, 1, dtype=F64, device=device)
    prm = sample_params(8, 8, 1.0, gen(device), device, transforms=("hue", "saturation", "lumaflip"))
    y = apply_params(grey, prm)
    assert torch.allclose(y, y[:, :1].expand_as(y), atol=1e-12)
    assert_close(y.abs(), grey, F64, "grey level")  # the luma flip negates it, nothing else changes it


# ----------------------------------------------------------------------------- capturable form

def test_capturable_form_matches_the_host_read_form(device):
    """p as a 0-d tensor: the same draw (p = 1, every transform) gives the host-read form's
    images to rounding although the batch is padded by the maximum; a sample with the identity
    map keeps its pixels exactly; the second order holds; p = 0 draws and changes nothing."""
    x = image(device, n=4, s=8)
    p1 = torch.ones((), dtype=F64, device=device)
    with fastgan.use_backend("eager"):
        y_host = ada_augment(x, 1.0, gen(device, 9))
        y_cap = ada_augment(x, p1, gen(device, 9))
        assert_close(y_cap, y_host, F64, "maximum padding", tol=1e-12)
        prm = sample_params(4, 8, 1.0, gen(device, 2), device, transforms=GEOMETRIC)
        prm.geom[1] = torch.eye(3, dtype=F64, device=device)
        y = apply_params(x, prm, capturable=True)
        assert torch.equal(y[1], x[1]) and (y[0] - x[0]).abs().max() > 1e-3
        xg = image(device, n=1, s=4).requires_grad_(True)
        assert torch.autograd.gradgradcheck(lambda t: ada_augment(t, p1, gen(device, 5)), (xg,), fast_mode=True)
        g = gen(device)
        state = g.get_state()
        assert torch.equal(ada_augment(x, torch.zeros((), dtype=F64, device=device), g), x)
        assert not torch.equal(g.get_state(), state)  # drawn: a graph replays the same work at any p
    with pytest.raises(ValueError, match="0-d floating-point tensor"):
        ada_augment(x, torch.ones(1, device=device))


def test_capturable_controller_moves_p_exactly_as_the_host_form():
    """The device arithmetic (no host read) against the host form, over random logits and
    several intervals, p clamped at 0 and 1 on the way; state_dicts load across the forms."""
    torch.manual_seed(0)
    logits = [torch.randn(8) * 2 + (3.0 if i < 12 else -3.0) for i in range(30)]
    host = AdaController(batch_size=8, target=0.6, kimg=0.05, p=0.7)
    cap = AdaController(batch_size=8, target=0.6, kimg=0.05, p=0.7, capturable=True)
    seen = set()
    for i, t in enumerate(logits):
        host.accumulate(t)
        cap.accumulate(t)
        assert cap.p == host.p and cap.last_r == host.last_r and cap.state_dict() == host.state_dict(), i
        seen.add(host.p)
    assert {0.0, 1.0} <= seen  # both clamps reached
    assert isinstance(cap.p_arg, torch.Tensor) and cap.p_arg.dim() == 0 and host.p_arg == host.p
    for a, b in ((host, AdaController(8, capturable=True)), (cap, AdaController(8))):
        b.load_state_dict(a.state_dict())
        assert b.state_dict() == a.state_dict()
    tensors = cap._state, cap._acc
    cap.load_state_dict(host.state_dict())
    assert (cap._state, cap._acc) == tensors  # in place: a captured graph keeps reading them


# ----------------------------------------------------------------------------- adaptive p

def test_controller_moves_p_by_the_step_per_interval():
    c = AdaController(batch_size=4, target=0.6, kimg=1.0, p=0.0)
    step = 4 * 4 / 1000
    assert c.step_size == pytest.approx(step)
    pos, neg = torch.full((4, 1), 2.0), torch.full((4, 1), -2.0)
    for i in range(3):
        c.accumulate(pos)
        assert c.p == 0.0  # adjusted only every 4th D step
    c.accumulate(pos)
    assert c.p == pytest.approx(step) and c.last_r == 1.0
    for _ in range(4):
        c.accumulate(pos)
    assert c.p == pytest.approx(2 * step)
    for _ in range(4):  # r = mean sign over the interval: 3 positive steps of 4 -> 0.5 < 0.6: falls
        c.accumulate(pos if _ else neg)
    assert c.last_r == 0.5 and c.p == pytest.approx(step)
    for _ in range(8):  # negative: falls, and stops at 0
        c.accumulate(neg)
    assert c.p == 0.0
    c = AdaController(batch_size=64, target=0.6, kimg=0.1, p=0.9)
    for _ in range(4):
        c.accumulate(pos[:, 0])
    assert c.p == 1.0  # clamped at 1


def test_controller_state_round_trip():
    a = AdaController(batch_size=4, target=0.6, kimg=1.0, p=0.3)
    logits = [torch.randn(4) + 0.5 for _ in range(7)]
    for t in logits[:6]:
        a.accumulate(t)
    b = AdaController(batch_size=4, target=0.6, kimg=1.0, p=0.0)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and b.state_dict()["steps"] == 2
    for c in (a, b):
        c.accumulate(logits[6])
        c.accumulate(-logits[6])
    assert a.state_dict() == b.state_dict()


# ----------------------------------------------------------------------------- the trainer

def sg_config(tmp_path, **kw):
    from fastgan.train import TrainConfig

    base = dict(model="stylegan2", resolution=16, n_embedded=16, z_dim=16, channel_base=64, channel_max=16,
                mapping_layers=2, batch_size=4, steps=2, n_critic=2, device="cpu", out=str(tmp_path / "run"),
                progress=False, log_every=1, sample_every=1000, ckpt_every=1000, fused=False, reg_interval=2,
                pl_interval=2, augment="ada", ada_p=0.5, ada_kimg=0.1)
    base.update(kw)
    return TrainConfig(**base)


def test_stylegan2_ada_resumes_p_exactly(tmp_path):
    """2 steps of 2 D steps (one adjustment of p, by 4 * 4 / 100): a run stopped after step 1
    (its accumulators half full) and resumed ends with the uninterrupted run's p, accumulators
    and weights, bitwise; log.jsonl and the progress line carry p."""
    from fastgan.train import Trainer

    full = Trainer(sg_config(tmp_path / "a"))
    full.train()
    assert [h["augment_p"] for h in full.history][0] == 0.5
    assert full.ada.p in (0.5 - 0.16, 0.5 + 0.16) and full.history[-1]["augment_p"] == full.ada.p
    logged = [json.loads(line) for line in open(tmp_path / "a" / "run" / "log.jsonl")]
    assert [r["augment_p"] for r in logged] == [h["augment_p"] for h in full.history]
    assert full.progress_fields(full.history[-1])["p"] == f"{full.ada.p:.3f}"
    first = Trainer(sg_config(tmp_path / "b", steps=1))
    first.train()
    assert first.ada.state_dict()["steps"] == 2 and first.ada.p == 0.5
    resumed = Trainer(sg_config(tmp_path / "b"), resume=str(tmp_path / "b" / "run" / "checkpoint.pt"))
    assert resumed.ada.state_dict() == first.ada.state_dict()
    resumed.train()
    assert resumed.ada.state_dict() == full.ada.state_dict()
    for name in ("G", "D", "G_ema"):
        a, b = getattr(full, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    with torch.no_grad():  # D sees augmented images
        x = torch.randn(4, 3, 16, 16)
        assert not torch.allclose(full._disc(x), full.D(x))


@pytest.mark.parametrize("kw, match", [
    (dict(ada_target=0.0), "ada_target .* strictly between 0 and 1"),
    (dict(ada_target=1.0), "ada_target .* strictly between 0 and 1"),
    (dict(ada_kimg=0), "ada_kimg .* > 0"),
    (dict(ada_kimg=-5.0), "ada_kimg .* > 0"),
    (dict(ada_kimg=math.inf), "ada_kimg .* > 0"),
    (dict(ada_p=-0.1), r"ada_p .* in \[0, 1\]"),
    (dict(ada_p=1.5), r"ada_p .* in \[0, 1\]"),
    (dict(model="dcgan", resolution=32), "stylegan2 only"),
])
def test_bad_ada_config_is_a_clear_error(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        sg_config(tmp_path, **kw)


def test_cli_flags(tmp_path, capsys):
    from fastgan.cli import _train_config, build_parser, main

    args = build_parser().parse_args(["train", "--model", "stylegan2", "--resolution", "16", "--augment", "ada",
                                      "--ada-target", "0.7", "--ada-kimg", "100", "--ada-p", "0.25"])
    cfg, _ = _train_config(args)
    assert (cfg.augment, cfg.ada_target, cfg.ada_kimg, cfg.ada_p) == ("ada", 0.7, 100.0, 0.25)
    assert main(["train", "--model", "stylegan2", "--resolution", "16", "--augment", "ada", "--ada-target", "1.5",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "ada_target (--ada-target) must be a number strictly between 0 and 1" in capsys.readouterr().err


def test_bad_pipeline_inputs(device):
    x = image(device)
    for p in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
            ada_augment(x, p)
    with pytest.raises(ValueError, match="square"):
        ada_augment(x[..., :6], 0.5)
    with pytest.raises(ValueError, match="RGB"):
        ada_augment(x[:, :1], 0.5, transforms=COLOR)
    with pytest.raises(ValueError, match="unknown ADA transforms"):
        ada_augment(x, 0.5, transforms=("cutout",))
    with fastgan.use_backend("eager"):  # without the colour transforms any channel count goes
        assert ada_augment(x[:, :1], 1.0, gen(device), transforms=BLIT + GEOMETRIC).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="kimg"):
        AdaController(4, kimg=0)
