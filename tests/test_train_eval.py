"""fastgan train --eval-every and fastgan plot: metric records in log.jsonl that leave the training
records, the random streams and the resume untouched; config errors; the curves PNG (the CLI runs
in this process; tiny plain-torch DCGANs)."""
import json
import os

import numpy as np
import pytest
import torch

from fastgan.apps import RunEvaluator
from fastgan.apps.evaluate import evaluate
from fastgan.cli import main
from fastgan.train import Trainer, TrainConfig, load_checkpoint
from fastgan.train import curves

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = ("step_ms", "images_per_s", "time_s", "eval_s", "s_per_kimg")


def tiny(out, **kw):
    base = dict(resolution=32, n_embedded=32, z_dim=8, g_width=4, d_width=4, batch_size=4, steps=4, device="cpu",
                out=str(out), progress=False, log_every=1, sample_every=1000, ckpt_every=1000, fused=False,
                penalty="r1", reg_interval=2)
    base.update(kw)
    return TrainConfig(**base)


def records(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def untimed(recs):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.state_dict().values() if p.is_floating_point()])


class GlobalDraws:
    """The shipped evaluator, plus draws from the global CPU generator (an evaluator that is
    careless with random numbers): the trainer must keep them out of the training stream."""

    def __init__(self, cfg):
        self.inner = RunEvaluator.from_config(cfg, kid_subsets=5)

    def __call__(self, trainer):
        torch.rand(100)
        return self.inner(trainer)


def _run(cfg, resume=None, evaluate=True):
    t = Trainer(cfg, resume=resume, log=lambda s: None, evaluator=GlobalDraws(cfg) if evaluate else None)
    t.summary = t.train()
    t.rng_after = torch.get_rng_state()
    return t


def test_eval_records_leave_training_and_its_resume_exact(tmp_path):
    """Every 2 steps and at the end (step 5): one eval record after that step's training record.
    The training records and weights equal a run without evaluations; a run stopped at step 2 and
    resumed with evaluations gives the same log (the eval records included) and the same weights."""
    plain = _run(tiny(tmp_path / "plain", steps=5), evaluate=False)
    full = _run(tiny(tmp_path / "full", steps=5, eval_every=2, eval_n=12))
    log = records(full.cfg.out)
    assert [(r["step"], r.get("kind")) for r in log] == [(1, None), (2, None), (2, "eval"), (3, None), (4, None),
                                                         (4, "eval"), (5, None), (5, "eval")]
    evals = [r for r in log if r.get("kind") == "eval"]
    for r in evals:
        assert r["fid"] > 0 and r["kid"] is not None and r["n_fake"] == 12 and r["n_real"] == 12
        assert r["features"] == "shapes" and r["eval_s"] > 0 and "d_loss" not in r
    assert untimed(full.history) == untimed(plain.history) and untimed(full.eval_history) == untimed(evals)
    for name in ("G", "D", "G_ema"):
        assert torch.equal(params(getattr(full, name)), params(getattr(plain, name))), name
    assert torch.equal(full.rng_after, plain.rng_after)  # the global stream too, as the checkpoints hold it
    assert torch.equal(load_checkpoint(os.path.join(full.cfg.out, "checkpoint.pt"))["rng"]["torch"], plain.rng_after)
    assert full.summary["eval"]["step"] == 5 and full.summary["eval"]["fid"] == evals[-1]["fid"]
    assert plain.summary["eval"] is None

    first = _run(tiny(tmp_path / "resumed", steps=2, eval_every=2, eval_n=12))
    resumed = _run(tiny(tmp_path / "resumed", steps=5, eval_every=2, eval_n=12),
                   resume=os.path.join(first.cfg.out, "checkpoint.pt"))
    assert resumed.step == 5 and [r["step"] for r in resumed.eval_history] == [4, 5]
    assert untimed(records(resumed.cfg.out)) == untimed(log)
    for name in ("G", "D", "G_ema"):
        assert torch.equal(params(getattr(resumed, name)), params(getattr(full, name))), name


def test_last_eval_record_equals_fastgan_eval_of_the_checkpoint(tmp_path):
    t = Trainer(tiny(tmp_path, steps=2, eval_every=2, eval_n=16), log=lambda s: None,
                evaluator=RunEvaluator(metrics="fid,kid,pr", n=16, kid_subsets=5))
    t.train()
    doc = evaluate(os.path.join(t.cfg.out, "checkpoint.pt"), metrics="fid,kid,pr", n=16, device="cpu",
                   kid_subsets=5)
    rec = t.eval_history[-1]
    assert rec["step"] == doc["step"] == 2
    assert set(doc["metrics"]) == {"fid", "kid", "kid_std", "precision", "recall"} and doc["metrics"]["kid_std"] is None
    for k, v in doc["metrics"].items():
        assert rec[k] == (v if v is None else pytest.approx(v, rel=1e-9, abs=1e-12)), k


def test_eval_images_in_eval_mode_without_grad_and_mode_restored(tmp_path):
    t = Trainer(tiny(tmp_path), log=lambda s: None)
    seen = []
    t.G_ema.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    t.G_ema.train()
    images = t.eval_images(torch.randn(3, 8))
    assert seen == [(False, False)] and t.G_ema.training and torch.is_grad_enabled()
    assert images.shape == (3, 3, 32, 32) and images.device.type == "cpu" and images.abs().max() <= 1
    t.G_ema.eval()
    t.eval_images(torch.randn(1, 8))
    assert not t.G_ema.training


@pytest.mark.parametrize("kw,needle", [
    (dict(eval_every=0), "eval_every must be a positive integer"),
    (dict(eval_every=-3), "eval_every must be a positive integer"),
    (dict(eval_metrics="fid,is"), "unknown metric is; choose from fid, kid, pr"),
    (dict(eval_metrics=" , "), "no metric given"),
    (dict(eval_n=1), "eval_n 1 is too few images for fid, kid: at least 2"),
    (dict(eval_n=3, eval_metrics="fid,pr"), "eval_n 3 is too few images for pr: at least 4"),
], ids=["zero", "negative", "unknown", "empty", "n-fid-kid", "n-pr"])
def test_eval_config_errors(kw, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(device="cpu", **kw)


def test_eval_needs_an_evaluator_and_cli_errors_are_one_line(tmp_path, capsys):
    cfg = tiny(tmp_path, eval_every=2)
    assert cfg.eval_metrics == "fid,kid" and TrainConfig(device="cpu", eval_metrics="KID, fid,kid").eval_metrics \
        == "kid,fid"
    with pytest.raises(ValueError, match="needs an evaluator"):
        Trainer(cfg)
    with pytest.raises(ValueError, match="eval_every is None"):
        Trainer(tiny(tmp_path), evaluator=RunEvaluator())
    one = tmp_path / "one.npz"
    np.savez(one, images=np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
    for args, needle in ((["--eval-every", "0"], "eval_every must be a positive integer"),
                         (["--eval-every", "2", "--eval-metrics", "fid,bogus"], "unknown metric bogus"),
                         (["--eval-every", "2", "--eval-n", "1"], "eval_n 1 is too few images"),
                         (["--eval-every", "2", "--data", one], "the training data has 1 images; fid, kid need")):
        rc = main([str(a) for a in ["train", "--device", "cpu", "--out", tmp_path / "x", "--no-progress", "--steps",
                                    "1", "--batch-size", "1", "--width", "4", *args]])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("fastgan train: error: ") and err.count("\n") == 1, err
        assert needle in err, err


# ----------------------------------------------------------------------------- fastgan plot

def _write_log(path, lines):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "log.jsonl"), "w") as f:
        f.write("".join(line + "\n" for line in lines))


def test_read_log_splits_records_and_errors_clearly(tmp_path):
    run = tmp_path / "run"
    good = [json.dumps({"step": 1, "d_loss": 1.0, "g_loss": 0.5, "penalty": 0.1, "penalty_step": 1}),
            json.dumps({"step": 2, "kind": "eval", "fid": 3.0, "kid": 0.1, "kid_std": None})]
    _write_log(run, good + ['{"step": 3, "d_lo'])  # the last write cut short: skipped, as resume does
    train, evals = curves.read_log(str(run))
    assert [r["step"] for r in train] == [1] and [r["fid"] for r in evals] == [3.0]
    assert curves.read_log(str(run / "log.jsonl")) == (train, evals)
    with pytest.raises(curves.PlotError, match="no such file"):
        curves.read_log(str(tmp_path / "nowhere"))
    _write_log(run, [good[0], "not json at all", good[1]])
    with pytest.raises(curves.PlotError, match=r"log.jsonl:2: not a log record"):
        curves.read_log(str(run))
    _write_log(run, [json.dumps({"d_loss": 1.0})])
    with pytest.raises(curves.PlotError, match=r"log.jsonl:1: not a log record .*KeyError"):
        curves.read_log(str(run))
    _write_log(run, [])
    with pytest.raises(curves.PlotError, match="no records yet"):
        curves.read_log(str(run))


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, capsys, monkeypatch):
    _write_log(tmp_path / "run", [json.dumps({"step": 1, "d_loss": 1.0, "g_loss": 0.5})])
    monkeypatch.setattr(curves, "matplotlib_missing", lambda: "ModuleNotFoundError: No module named 'matplotlib'")
    assert main(["plot", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastgan plot: error: plotting needs matplotlib") and "fastgan[plot]" in err
    assert not (tmp_path / "run" / "curves.png").exists()
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_train_writes_curves_with_metrics_and_plot_redraws(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, data = tmp_path / "run", str(tmp_path / "data.npz")
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
    args = ["train", "--data", data, "--device", "cpu", "--plain-torch", "--steps", "2", "--batch-size", "4",
            "--width", "4", "--z-dim", "8", "--no-progress", "--log-every", "1", "--sample-every", "1000",
            "--eval-every", "1", "--eval-n", "8", "--eval-metrics", "fid,kid,pr", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert f"curves: {out / 'curves.png'}" in stdout and "last evaluation (step 2): FID " in stdout
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 150_000
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    os.remove(out / "curves.png")
    assert main(["plot", str(out), "--out", str(tmp_path / "c.png")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'c.png'}" and (tmp_path / "c.png").exists()
    assert main(args[:-2] + ["--out", str(tmp_path / "quiet"), "--no-plot"]) == 0
    assert "curves:" not in capsys.readouterr().out and not (tmp_path / "quiet" / "curves.png").exists()


def test_stylegan2_evaluates_without_touching_its_noise(tmp_path):
    """StyleGAN2's G_ema takes noise inputs: the evaluation draws them from a generator of its own,
    so the training records and weights equal a run without evaluations."""
    base = dict(model="stylegan2", resolution=16, n_embedded=16, z_dim=16, channel_base=64, channel_max=16,
                mapping_layers=2, batch_size=4, steps=2, reg_interval=2, pl_interval=2)
    plain = _run(tiny(tmp_path / "plain", **base), evaluate=False)
    full = _run(tiny(tmp_path / "full", eval_every=1, eval_n=8, **base))
    assert [r["step"] for r in full.eval_history] == [1, 2] and all(r["fid"] > 0 for r in full.eval_history)
    assert untimed(full.history) == untimed(plain.history)
    assert torch.equal(params(full.G_ema), params(plain.G_ema)) and torch.equal(full.noise.get_state(),
                                                                                plain.noise.get_state())
    z = torch.randn(2, 16)
    assert torch.equal(full.eval_images(z, noise_seed=3), full.eval_images(z, noise_seed=3))
    assert not torch.equal(full.eval_images(z, noise_seed=3), full.eval_images(z, noise_seed=4))
