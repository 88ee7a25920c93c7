"""The StyleGAN2 model: the fused network (Triton interpreter) against the same network in plain
torch (float64 copies, DESIGN.md's float32 bound), state_dict interchange, truncation, style
mixing, the R1 penalty through the fused D, and clear errors for impossible configurations."""
import math

import pytest
import torch

import fastgan
import fastgan.functional as FG
from fastgan.models.stylegan2 import build_stylegan2, channels_at, minibatch_stddev

from .utils import TOL, assert_close, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(resolution=16, z_dim=16, w_dim=16, channel_base=64, channel_max=16, mapping_layers=2)


def pair(**kw):
    """(G, D) fused and (G, D) plain with the fused models' parameters, the plain ones in float64."""
    cfg = dict(TINY, **kw)
    Gf, Df = build_stylegan2(**cfg, fused=True)
    Gp, Dp = build_stylegan2(**cfg, fused=False)
    Gp.load_state_dict(Gf.state_dict())
    Dp.load_state_dict(Df.state_dict())
    return (Gf, Df), (Gp.double(), Dp.double())


def test_channel_rule():
    assert [channels_at(r, 64, 16) for r in (4, 8, 16)] == [16, 8, 4]
    G, D = build_stylegan2(**TINY, fused=False)
    assert G.synthesis.b16.conv0.weight.shape == (4, 8, 3, 3) and G.synthesis.b16.conv1.weight.shape == (4, 4, 3, 3)
    assert G.synthesis.b8.conv0.weight.shape == (8, 16, 3, 3)
    assert D.b16.conv1.weight.shape == (8, 4, 3, 3) and D.b4.fc.weight.shape == (16, 16 * 16)
    assert G.num_ws == 6


def test_fused_matches_plain_outputs_and_gradients():
    """G and D with class conditioning (embedding, projection): images, logits and every
    parameter gradient of sum(D(G(z, c), c) * g), fused float32 against plain float64."""
    (Gf, Df), (Gp, Dp) = pair(c_dim=3)
    z, c = torch.randn(2, 16), torch.eye(3)[[0, 2]]
    g = torch.randn(2)
    img_f = Gf(z, c, noise_mode="const")
    logits_f = Df(img_f, c)
    (logits_f * g).sum().backward()
    img_p = Gp(z.double(), c.double(), noise_mode="const")
    logits_p = Dp(img_p, c.double())
    (logits_p * g.double()).sum().backward()
    assert img_f.dtype == torch.float32 and img_f.shape == (2, 3, 16, 16)
    assert_close(img_f, img_p, torch.float32, "images")
    assert_close(logits_f, logits_p, torch.float32, "logits")
    for (mf, mp) in ((Gf, Gp), (Df, Dp)):
        for (name, a), (_, b) in zip(mf.named_parameters(), mp.named_parameters()):
            assert b.grad is not None and b.grad.abs().sum() > 0, name
            assert_close(a.grad, b.grad, torch.float32, f"gradient of {name}")


def test_r1_through_fused_d_matches_plain():
    """R1 = gamma / 2 mean ||dD/dx||^2 (double backward through the fused D) and its gradient
    with respect to D's parameters, against the plain float64 D with the eager penalty."""
    (_, Df), (_, Dp) = pair()
    real = torch.randn(4, 3, 16, 16)
    pen_f = FG.gradient_penalty(Df, real, kind="r1", gamma=2.0)
    pen_f.backward()
    with fastgan.use_backend("eager"):
        pen_p = FG.gradient_penalty(Dp, real.double(), kind="r1", gamma=2.0)
        pen_p.backward()
    assert pen_p.item() > 0
    assert_close(pen_f, pen_p, torch.float32, "R1")
    for (name, a), (_, b) in zip(Df.named_parameters(), Dp.named_parameters()):
        if b.grad is None:  # parameters R1 does not reach (none in this D)
            assert a.grad is None, name
            continue
        assert_close(a.grad, b.grad, torch.float32, f"R1 gradient of {name}")


def test_path_length_double_backward_matches_plain():
    """The path-length term's second order through the fused synthesis network: J = d sum(G(w) y) / dw
    (inside no_weight_gradients, as the trainer takes it), then d sum(J^2) / d(parameters)."""
    from fastgan.functional.gradfix import no_weight_gradients

    (Gf, _), (Gp, _) = pair()
    ws = torch.randn(2, Gf.num_ws, 16)
    y = torch.randn(2, 3, 16, 16) / 16
    out = []
    for G, dtype in ((Gf, torch.float32), (Gp, torch.float64)):
        w = ws.to(dtype).requires_grad_(True)
        with no_weight_gradients():
            img = G.synthesis(w, noise_mode="const")
            (jac,) = torch.autograd.grad((img * y.to(dtype)).sum(), w, create_graph=True)
        jac.square().sum().backward()
        out.append((jac, {n: p.grad for n, p in G.synthesis.named_parameters()}))
    (jf, gf), (jp, gp) = out
    assert_close(jf, jp, torch.float32, "J")
    reached = 0
    for name, ref in gp.items():
        if ref is None or not ref.any():  # additive terms (the RGB biases) do not change J
            assert gf[name] is None or not gf[name].any(), name
            continue
        reached += 1
        assert_close(gf[name], ref, torch.float32, f"path-length gradient of {name}")
    assert reached >= len(gp) - 3


def test_bf16_top_resolutions(monkeypatch):
    """num_bf16_res=2: G's 8 and 16 blocks and D's 16 and 8 blocks in bfloat16 (on CUDA; here the
    device rule is widened to the CPU so that the interpreter runs the bf16 kernels); the outputs
    stay float32 and near the float64 network (a whole network of bf16 ops: 2.5x the one-op bound)."""
    import fastgan.models.stylegan2 as sg

    (Gf, Df), (Gp, Dp) = pair(num_bf16_res=2)
    assert [Gf.synthesis.b4.use_bf16, Gf.synthesis.b8.use_bf16, Df.b16.use_bf16] == [False, True, True]
    z = torch.randn(2, 16)
    with torch.no_grad():
        img_p = Gp(z.double(), noise_mode="const")
        logits_p = Dp(img_p)
        monkeypatch.setattr(sg, "BF16_DEVICES", ("cuda", "cpu"))
        img = Gf(z, noise_mode="const")
        logits = Df(img)
    assert img.dtype == logits.dtype == torch.float32
    assert_close(img, img_p, torch.bfloat16, "bf16 images", tol=2.5 * TOL[torch.bfloat16])
    assert_close(logits, logits_p, torch.bfloat16, "bf16 logits", tol=5 * TOL[torch.bfloat16])
    monkeypatch.setattr(sg, "BF16_DEVICES", ("cuda",))  # off CUDA the flag changes nothing
    with torch.no_grad():
        img32 = Gf(z, noise_mode="const")
    assert_close(img32, img_p, torch.float32, "float32 images")
    assert rel_err(img, img32) > 1e-4, "the bf16 blocks did not run in bf16"


def test_state_dicts_load_across():
    Gf, Df = build_stylegan2(**TINY, c_dim=2, fused=True)
    Gp, Dp = build_stylegan2(**TINY, c_dim=2, fused=False)
    for f, p in ((Gf, Gp), (Df, Dp)):
        sf, sp = f.state_dict(), p.state_dict()
        assert list(sf) == list(sp)
        assert all(sf[k].shape == sp[k].shape for k in sf)
        p.load_state_dict(sf)  # strict, both ways
        f.load_state_dict(sp)
    assert "mapping.w_avg" in Gf.state_dict() and "synthesis.b8.conv0.noise_const" in Gf.state_dict()
    # parameters are equalised-lr: N(0, 1) (the mapping's scaled by 1 / lr_mul), biases zero
    # but the affine layers' (1)
    assert Gf.mapping.fc0.weight.std().item() == pytest.approx(100, rel=0.2)
    assert torch.all(Gf.synthesis.b8.conv0.affine.bias == 1)


def test_truncation_and_w_avg():
    G, _ = build_stylegan2(**TINY, fused=False)
    z = torch.randn(4, 16)
    ws = G.mapping(z, update_emas=True)
    assert torch.allclose(G.mapping.w_avg, (1 - 0.995) * ws[:, 0].mean(0))
    G.mapping.w_avg.copy_(torch.randn(16))
    avg = G.mapping.w_avg
    # psi 0: every sample's ws is w_avg, so every image is the same (const noise)
    assert torch.allclose(G.mapping(z, truncation_psi=0.0), avg.expand(4, G.num_ws, 16))
    imgs = G(z, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(imgs, imgs[:1].expand_as(imgs), atol=1e-6)
    # psi 0.5 on the first 2 layers only: w_avg + 0.5 (w - w_avg) there, w elsewhere
    half = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(half[:, :2], avg + 0.5 * (ws[:, :2] - avg), atol=1e-6)
    assert torch.equal(half[:, 2:], ws[:, 2:])
    assert torch.equal(G.mapping(z, truncation_psi=1.0), ws)


def test_style_mixing():
    G, _ = build_stylegan2(**TINY, fused=False)
    z1, z2 = torch.randn(2, 16), torch.randn(2, 16)
    w1, w2 = G.mapping(z1), G.mapping(z2)
    mixed = G.mix_styles(w1, z2, cutoff=3)
    assert torch.equal(mixed[:, :3], w1[:, :3]) and torch.equal(mixed[:, 3:], w2[:, 3:])
    # the coarse layers (b4, b8's first conv) follow z1: changing z2 changes only the fine layers' input
    a = G.synthesis(mixed, noise_mode="const")
    b = G.synthesis(G.mix_styles(w1, torch.randn(2, 16), cutoff=3), noise_mode="const")
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="cutoff must be in"):
        G.mix_styles(w1, z2, cutoff=G.num_ws)


def test_minibatch_stddev():
    x = torch.randn(4, 3, 2, 2)
    y = minibatch_stddev(x, group_size=2)
    # groups: samples {0, 2} and {1, 3}; std over the group, averaged over channels and pixels
    ref = x.reshape(2, 2, 3, 2, 2).std(dim=0, unbiased=False).mean(dim=(1, 2, 3))
    assert torch.allclose(y[:, 3, 0, 0], ref.repeat(2), atol=1e-6) and torch.equal(y[:, :3], x)
    with pytest.raises(ValueError, match="divisible"):
        minibatch_stddev(torch.randn(6, 3, 2, 2), group_size=4)


@pytest.mark.parametrize("kw, match", [
    (dict(resolution=24), "power of two"),
    (dict(resolution=8), "from 16 to 1024"),
    (dict(resolution=2048), "from 16 to 1024"),
    (dict(channel_base=8), "channel_base 8 gives 0 channels"),
    (dict(channel_max=0), "channel_max must be a positive int"),
    (dict(c_dim=-1), "c_dim must be an int >= 0"),
])
def test_bad_configurations_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        build_stylegan2(**dict(TINY, **kw), fused=False)


def test_bad_inputs_are_clear_errors():
    G, D = build_stylegan2(**TINY, c_dim=2, fused=False)
    with pytest.raises(ValueError, match=r"z must have shape \[N, 16\]"):
        G(torch.randn(2, 8), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"c must have shape \[2, 2\]"):
        G(torch.randn(2, 16))
    with pytest.raises(ValueError, match=r"images must have shape \[N, 3, 16, 16\]"):
        D(torch.randn(2, 3, 8, 8), torch.zeros(2, 2))


# ----------------------------------------------------------------------------- the trainer

def sg_config(tmp_path, **kw):
    from fastgan.train import TrainConfig

    base = dict(model="stylegan2", resolution=16, n_embedded=16, z_dim=16, channel_base=64, channel_max=16,
                mapping_layers=2, batch_size=4, steps=3, device="cpu", out=str(tmp_path / "run"), progress=False,
                log_every=1, sample_every=1000, ckpt_every=1000, fused=False, reg_interval=2, pl_interval=2)
    base.update(kw)
    return TrainConfig(**base)


def test_stylegan2_config_defaults_and_errors(tmp_path):
    from fastgan.train import TrainConfig

    cfg = TrainConfig(model="stylegan2", resolution=64, batch_size=8, device="cpu")
    assert (cfg.reg_interval, cfg.lr_g, cfg.betas, cfg.pl_interval, cfg.style_mixing) == (16, 2.5e-3, (0.0, 0.99), 4,
                                                                                          0.9)
    assert cfg.effective_gamma == pytest.approx(0.0002 * 64 ** 2 / 8)
    assert (cfg.channel_base, cfg.channel_max) == (1024, 64)
    dc = TrainConfig(device="cpu")  # the DCGAN defaults are unchanged
    assert (dc.model, dc.reg_interval, dc.lr_g, dc.betas, dc.effective_gamma) == ("dcgan", 4, 2e-4, (0.5, 0.999), 1.0)
    for kw, match in ((dict(resolution=8), "power of two from 16 to 1024"),
                      (dict(resolution=48), "power of two from 16 to 1024"),
                      (dict(channel_base=8), "channel_base 8 gives no channels"),
                      (dict(style_mixing=1.5), "style_mixing must be"),
                      (dict(batch_size=6), "multiple of 4"),
                      (dict(model="stylegan3"), "model must be one of"),
                      (dict(penalty="wgan-gp"), "takes penalty r1, r1\\+r2 or none"),
                      (dict(model="dcgan", resolution=32, penalty="r1+r2"), "stylegan2 only"),
                      (dict(model="dcgan", resolution=32, augment="diffaug"), "stylegan2 only")):
        with pytest.raises(ValueError, match=match):
            sg_config(tmp_path, **kw)


def test_ema_half_life():
    from fastgan.train.stylegan2 import ema_half_life_beta

    # after ema_kimg * 1000 images in batches, the old weights' share is 1/2
    beta = ema_half_life_beta(32, 10 ** 9, 10.0, 0.05)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    assert ema_half_life_beta(32, 0, 10.0, 0.05) == 0.0          # ramp-up: G_ema starts as G
    assert ema_half_life_beta(32, 20_000, 10.0, 0.05) == pytest.approx(0.5 ** (32 / 1000))
    assert ema_half_life_beta(32, 0, 10.0, None) == pytest.approx(0.5 ** (32 / 10_000))


def test_stylegan2_trains_and_resumes_exactly(tmp_path):
    """Plain-torch models (the fused ones are compared with them above), DiffAugment on: 3 steps
    with lazy R1 and path length (both every 2nd step) give finite, moving losses; a run stopped
    after step 1 and resumed reaches the uninterrupted run's weights, EMA and pl_mean bitwise."""
    from fastgan.train import Trainer
    from fastgan.train.stylegan2 import StyleGAN2Trainer

    full = Trainer(sg_config(tmp_path / "a", augment="diffaug"))
    assert isinstance(full, StyleGAN2Trainer)
    summary = full.train()
    assert summary["status"] == "completed" and len(full.history) == 3
    for h in full.history:
        assert all(math.isfinite(h[k]) for k in ("d_loss", "g_loss", "penalty", "pl_penalty") if k in h), h
    assert [h["kimg"] for h in full.history] == [0.004, 0.008, 0.012] and full.history[-1]["s_per_kimg"] > 0
    assert len({h["d_acc"] for h in full.history}) > 1  # D's accuracy moves
    # lazy R1 on d_steps 0 and 2: a record carries the penalty only where it was computed
    assert full.history[0]["penalty"] > 0 and "penalty" not in full.history[1] and full.history[2]["penalty"] > 0
    assert full.history[0]["pl_penalty"] > 0 and full.history[1]["pl_penalty"] == 0
    assert full.pl_mean.item() > 0 and torch.any(full.G.mapping.w_avg != 0)
    assert not torch.equal(full.G_ema.synthesis.b16.torgb.weight, full.G.synthesis.b16.torgb.weight)
    first = Trainer(sg_config(tmp_path / "b", steps=1, augment="diffaug"))
    first.train()
    resumed = Trainer(sg_config(tmp_path / "b", augment="diffaug"),
                      resume=str(tmp_path / "b" / "run" / "checkpoint.pt"))
    assert resumed.step == 1
    resumed.train()
    for name in ("G", "D", "G_ema"):
        a, b = getattr(full, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(full.pl_mean, resumed.pl_mean)
    assert [h["g_loss"] for h in full.history[1:]] == [h["g_loss"] for h in resumed.history]
    with torch.no_grad():  # D sees augmented images
        x = torch.randn(4, 3, 16, 16)
        assert not torch.allclose(full._disc(x), full.D(x))


def test_cli_trains_and_samples_stylegan2(tmp_path, capsys):
    from fastgan.cli import main

    out = str(tmp_path / "run")
    argv = ["train", "--model", "stylegan2", "--resolution", "16", "--steps", "1", "--batch-size", "4",
            "--channel-base", "64", "--channel-max", "16", "--z-dim", "16", "--mapping-layers", "1",
            "--plain-torch", "--device", "cpu", "--no-progress", "--out", out]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "16x16 StyleGAN2 (channel_base 64, channel_max 16" in printed and "penalty r1 (gamma 0.0128)" in printed
    grid = str(tmp_path / "grid.png")
    assert main(["sample", "--checkpoint", out + "/checkpoint.pt", "--n", "4", "--out", grid,
                 "--truncation-psi", "0.5"]) == 0
    from PIL import Image

    assert Image.open(grid).size == (2 + 2 * 18, 2 + 2 * 18)
    assert main(argv[:5] + ["--channel-base", "8", "--out", str(tmp_path / "bad")]) == 2
    assert "channel_base 8 gives no channels at 16x16" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --resolution 8: not a choice
        main(["train", "--model", "stylegan2", "--resolution", "8"])


# ----------------------------------------------------------------------------- DiffAugment

def test_diffaug_is_differentiable_twice():
    from fastgan.train.augment import diff_augment

    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda t: diff_augment(t, torch.Generator().manual_seed(3))  # noqa: E731  (the same draw every call)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_diffaug_translation_and_cutout():
    from fastgan.train.augment import diff_augment

    n, h, w = 16, 16, 16
    ramp = (torch.arange(h)[:, None] * 100 + torch.arange(w)[None] + 1).float().expand(n, 1, h, w)
    y = diff_augment(ramp, torch.Generator().manual_seed(0), policy=("translation",))
    shifts = set()
    for i in range(n):  # every kept pixel moved by the same (dy, dx), at most 1/8 of the size; zeros elsewhere
        kept = y[i, 0] != 0
        d = (y[i, 0] - ramp[i, 0])[kept].unique()
        assert d.numel() == 1
        dy, dx = divmod(int(d.item()) + 2 * 100 + 2, 100)
        dy, dx = dy - 2, dx - 2
        assert abs(dy) <= 2 and abs(dx) <= 2 and kept.sum() == (h - abs(dy)) * (w - abs(dx))
        shifts.add((dy, dx))
    assert len(shifts) > 4
    y = diff_augment(torch.ones(n, 3, h, w), torch.Generator().manual_seed(0), policy=("cutout",))
    holes = (y[:, 0] == 0).sum(dim=(1, 2))
    assert torch.all(holes <= 8 * 8) and torch.any(holes == 8 * 8) and torch.all(holes > 0)
    assert torch.equal(y[:, 0], y[:, 2])  # one hole through every channel
    with pytest.raises(ValueError, match="unknown DiffAugment transform"):
        diff_augment(ramp, policy=("flip",))


def test_r1_plus_r2_on_every_step(tmp_path):
    """--penalty r1+r2: both penalties on every D step (each larger than zero), whose sum is what
    the two gradient penalties give on the same D, batches and augmentation draw."""
    from fastgan.train import Trainer

    t = Trainer(sg_config(tmp_path, penalty="r1+r2", steps=2, pl_weight=0.0))
    assert t.cfg.effective_gamma == pytest.approx(0.0002 * 16 ** 2 / 4)
    real = next(iter(torch.utils.data.DataLoader(t.dataset, batch_size=4)))[0]
    state = t.noise.get_state()
    fake = t._fake(4).detach()
    expected = sum(FG.gradient_penalty(t.D, real, fake, kind=k, gamma=t.cfg.effective_gamma).item()
                   for k in ("r1", "r2"))
    t.noise.set_state(state)
    stats = [t._d_update(real, r1=False) for _ in range(2)]
    assert stats[0]["penalty"].item() == pytest.approx(expected, rel=1e-6)
    assert stats[1]["penalty"].item() > 0
    logged = Trainer(sg_config(tmp_path / "log", penalty="r1+r2", steps=2, pl_weight=0.0))
    logged.train()  # every record carries the step's penalty
    assert [h["penalty_step"] for h in logged.history] == [1, 2] and all(h["penalty"] > 0 for h in logged.history)


@pytest.mark.long  # 445 s on this 2-core machine (loaded): FASTGAN_LONG_TESTS=1
def test_fused_and_plain_trainers_track_each_other(tmp_path):
    """The fused trainer (Triton interpreter) and the plain-torch one, from the same weights and
    seeds, on the same data: 4 steps with lazy R1 and path length (steps 0 and 2), style mixing
    and ADA at p = 0.5 (every transform group) give the same losses, penalties, augmentation p and
    weights, to float32 rounding amplified by four Adam steps."""
    from fastgan.train import Trainer

    kw = dict(steps=4, augment="ada", ada_p=0.5, ada_kimg=0.05)
    plain = Trainer(sg_config(tmp_path / "plain", **kw))
    fused = Trainer(sg_config(tmp_path / "fused", fused=True, **kw))
    for name in ("G", "D", "G_ema"):
        getattr(fused, name).load_state_dict(getattr(plain, name).state_dict())
    plain.train()
    fused.train()
    keys = ("d_loss", "g_loss", "penalty", "pl_penalty", "augment_p")
    for hp, hf in zip(plain.history, fused.history, strict=True):
        assert [k in hp for k in keys] == [k in hf for k in keys]
        for k in keys:
            if k in hp:
                assert hf[k] == pytest.approx(hp[k], rel=2e-3, abs=1e-5), (hp["step"], k, hp[k], hf[k])
    assert plain.history[0]["penalty"] > 0 and plain.history[0]["pl_penalty"] > 0
    for name in ("G", "D", "G_ema"):
        a, b = getattr(plain, name).state_dict(), getattr(fused, name).state_dict()
        for k in a:
            if a[k].is_floating_point():
                assert rel_err(b[k], a[k]) < 1e-3, (name, k, rel_err(b[k], a[k]))
