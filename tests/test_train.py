"""The trainer on the CPU: learning signal, fused vs plain equivalence, exact resume,
atomic and corrupted checkpoints, the CLI, and a 2-process gloo data-parallel run (signals and
other faults: test_train_faults.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan.train import CheckpointError, Trainer, TrainConfig, load_checkpoint, save_checkpoint
from fastgan.train import checkpoint as ckpt_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(tmp_path, **kw):
    base = dict(resolution=32, n_embedded=64, z_dim=16, g_width=8, d_width=8, batch_size=8, steps=4,
                device="cpu", out=str(tmp_path / "run"), progress=False, log_every=1, sample_every=1000,
                ckpt_every=1000, fused=False)
    base.update(kw)
    return TrainConfig(**base)


def params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.state_dict().values() if p.is_floating_point()])


def test_short_run_learns_something(tmp_path):
    cfg = tiny(tmp_path, steps=30, batch_size=16, lr_d=1e-3, lr_g=1e-3, penalty="none")
    summary = Trainer(cfg, log=lambda s: None).train()
    assert summary["status"] == "completed" and summary["step"] == 30
    log = [json.loads(line) for line in open(os.path.join(cfg.out, "log.jsonl"))]
    assert len(log) == 30
    for rec in log:
        assert "penalty" not in rec  # penalty "none": never computed, never logged
        for k in ("d_loss", "g_loss", "d_acc", "images_per_s", "step_ms"):
            assert rec[k] is not None and torch.isfinite(torch.tensor(float(rec[k]))), (k, rec)
    accs = [r["d_acc"] for r in log]
    assert max(accs) - min(accs) > 0.1, f"D accuracy never moved: {accs}"
    assert os.path.exists(os.path.join(cfg.out, "samples", "step_0000030.png"))
    assert os.path.exists(os.path.join(cfg.out, "checkpoint.pt"))
    res = json.load(open(os.path.join(cfg.out, "resources.json")))  # ResourceMonitor around the loop
    assert res["steps"] == 30 and res["images"] == 30 * 16 and res["wall_s"] > 0
    assert res["energy_j"] is None and res["gpu_unavailable_reason"]  # CPU: no NVML energy, and why
    assert summary["resources_file"].endswith("resources.json") and "images/s" in summary["resources"]


@pytest.mark.parametrize("loss,penalty", [("hinge", "wgan-gp"), ("wgan", "wgan-gp"), ("lsgan", "none"),
                                          ("ns", "r1")])
def test_every_loss_and_penalty_runs(tmp_path, loss, penalty):
    cfg = tiny(tmp_path, loss=loss, penalty=penalty, steps=2, reg_interval=1, n_critic=2)
    t = Trainer(cfg)
    t.train()
    assert t.d_steps == 4 and t.step == 2
    last = t.history[-1]
    assert all(torch.isfinite(torch.tensor(last[k])) for k in ("d_loss", "g_loss"))
    assert ("penalty" in last) == (penalty != "none")  # reg_interval 1: computed on every D step
    if penalty != "none":
        assert any(h["penalty"] > 0 for h in t.history)


@pytest.mark.parametrize("objective", [dict(penalty="r1", reg_interval=2),
                                       dict(loss="wgan", penalty="wgan-gp", n_critic=2)], ids=["r1", "wgan-gp"])
def test_resume_is_exact(tmp_path, objective):
    """Bitwise: lazy R1 across the resume, and WGAN-GP with n_critic 2 (whose interpolation
    weights come from the trainer's own generator, not the global one the DataLoader draws from)."""
    objective = dict(objective, g_width=4, d_width=4, batch_size=4, n_embedded=16)
    full = Trainer(tiny(tmp_path / "a", steps=4, **objective))
    full.train()
    first = Trainer(tiny(tmp_path / "b", steps=2, **objective))
    first.train()
    resumed = Trainer(tiny(tmp_path / "b", steps=4, **objective), resume=str(tmp_path / "b" / "run" / "checkpoint.pt"))
    assert resumed.step == 2
    resumed.train()
    for name in ("G", "D", "G_ema"):
        assert torch.equal(params(getattr(full, name)), params(getattr(resumed, name))), name
    assert [h["d_loss"] for h in full.history[2:]] == [h["d_loss"] for h in resumed.history]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    save_checkpoint({"config": {}, "step": 1, "G": {}, "D": {}, "G_ema": {}, "opt_g": {}, "opt_d": {},
                     "rng": {}}, path)

    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_module.torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"config": {}, "step": 2, "G": {}, "D": {}, "G_ema": {}, "opt_g": {}, "opt_d": {},
                         "rng": {}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1, "the previous checkpoint must survive a failed write"
    assert os.listdir(tmp_path) == ["c.pt"], "no temporary file left behind"


def test_corrupted_and_foreign_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(str(bad))
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a fastgan checkpoint"):
        load_checkpoint(str(foreign))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    # truncated real checkpoint
    t = Trainer(tiny(tmp_path, steps=1))
    t.train()
    data = open(t.cfg.out + "/checkpoint.pt", "rb").read()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(str(trunc))


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    t = Trainer(tiny(tmp_path, steps=1))
    t.train()
    state = load_checkpoint(t.cfg.out + "/checkpoint.pt")
    state["G"]["to_rgb.weight"] = torch.zeros(1)
    path = str(tmp_path / "edited.pt")
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, path)
    with pytest.raises(CheckpointError, match="does not fit these models"):
        Trainer(tiny(tmp_path, steps=2), resume=path)


def _cli(args, **kw):
    env = {k: v for k, v in os.environ.items() if k != "FASTGAN_BACKEND"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen([sys.executable, "-m", "fastgan", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


TINY_ARGS = ["--plain-torch", "--width", "8", "--z-dim", "16", "--batch-size", "8", "--no-progress",
             "--log-every", "1"]


def test_cli_train_sample_and_errors(tmp_path):
    out = tmp_path / "cli"
    p = _cli(["train", *TINY_ARGS, "--steps", "2", "--out", str(out)])
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    assert "completed at step 2" in stdout
    p = _cli(["sample", "--checkpoint", str(out / "checkpoint.pt"), "--n", "9", "--out", str(tmp_path / "g.png")])
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (3 * 34 + 2, 3 * 34 + 2)
    for args, msg in [(["train", "--data", str(tmp_path / "nope")], "no such file"),
                      (["train", "--steps", "0"], "steps must be a positive integer"),
                      (["sample", "--checkpoint", str(tmp_path / "g.png")], "not a readable checkpoint")]:
        p = _cli(args)
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 2, (args, stderr)
        assert msg in stderr and "Traceback" not in stderr, stderr


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from fastgan.train import Trainer, TrainConfig
out = sys.argv[1]
cfg = TrainConfig(resolution=32, n_embedded=64, z_dim=16, g_width=8, d_width=8, batch_size=8, steps=3,
                  device="cpu", out=out + "/run", progress=False, penalty="r1", reg_interval=1, fused=False)
t = Trainer(cfg)
t.train()
assert t.dist.world_size == 2
torch.save({"G": t.G.state_dict(), "D": t.D.state_dict()}, f"{out}/replica{t.dist.rank}.pt")
dist.destroy_process_group()
"""


def _free_port() -> int:
    """A TCP port free right now (the OS picks it): a fixed port collides with another process,
    e.g. a second pytest-xdist worker or a concurrent run on the same machine."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_keep_replicas_identical(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "FASTGAN_BACKEND"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    reps = [torch.load(str(tmp_path / f"replica{i}.pt"), weights_only=True) for i in range(2)]
    for name in ("G", "D"):
        for k in reps[0][name]:
            assert torch.equal(reps[0][name][k], reps[1][name][k]), (name, k)
    single = Trainer(TrainConfig(resolution=32, n_embedded=64, z_dim=16, g_width=8, d_width=8, batch_size=8,
                                 steps=1, device="cpu", out=str(tmp_path / "single"), progress=False, fused=False))
    moved = any(not torch.equal(reps[0]["D"][k], v) for k, v in single.D.state_dict().items()
                if v.is_floating_point())
    assert moved, "D never changed: the run did not train"
    assert load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))["step"] == 3


DDP_RESUME_SCRIPT = """
import sys, torch, torch.distributed as dist
from fastgan.train import Trainer, TrainConfig
out = sys.argv[1]

def run(folder, steps, resume=False):
    cfg = TrainConfig(resolution=32, n_embedded=64, z_dim=16, g_width=4, d_width=4, batch_size=8, steps=steps,
                      device="cpu", out=f"{out}/{folder}", progress=False, penalty="r1", reg_interval=2, fused=False)
    t = Trainer(cfg, resume=f"{out}/{folder}/checkpoint.pt" if resume else None)
    t.train()
    return t

straight = run("straight", 6)
run("resumed", 3)
resumed = run("resumed", 6, resume=True)
for name in ("G", "D"):
    for (k, a), b in zip(getattr(straight, name).state_dict().items(), getattr(resumed, name).state_dict().values()):
        assert torch.equal(a, b), (dist.get_rank(), name, k)
print("rank", dist.get_rank(), "resumed run equals the straight run")
dist.destroy_process_group()
"""


def test_ddp_resume_restores_every_ranks_random_streams(tmp_path):
    """torchrun, 2 gloo processes (each rank draws its own noise): 6 straight steps equal 3 steps
    + resume to 6, bitwise on every rank (issue 18: every rank got rank 0's streams back)."""
    script = tmp_path / "ddp_resume.py"
    script.write_text(DDP_RESUME_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "FASTGAN_BACKEND"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count("resumed run equals the straight run") == 2
    assert len(load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))["rng"]["per_rank"]) == 2


@pytest.mark.parametrize("penalty", ["r1", "wgan-gp"])
def test_fused_models_track_plain_torch_step_by_step(tmp_path, penalty):
    """Same seed, same data, same noise: the fused model (Triton kernels, interpreted here) and the
    plain-torch model give the same losses for 6 steps, within float32 tolerance."""
    kw = dict(steps=6, z_dim=8, g_width=4, d_width=4, batch_size=4, n_embedded=32, penalty=penalty,
              reg_interval=2, loss="ns" if penalty == "r1" else "wgan")
    plain = Trainer(tiny(tmp_path / "plain", fused=False, **kw))
    fused = Trainer(tiny(tmp_path / "fused", fused=True, **kw))
    fused.G.load_state_dict(plain.G.state_dict())
    fused.D.load_state_dict(plain.D.state_dict())
    fused.G_ema.load_state_dict(plain.G_ema.state_dict())
    assert fastgan.backend_for(torch.ones(1)) in ("interpret", "eager")
    plain.train()
    fused.train()
    for a, b in zip(plain.history, fused.history):
        assert a.get("penalty_step") == b.get("penalty_step")
        for k in ("d_loss", "g_loss", "penalty")[:3 if "penalty" in a else 2]:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), (a["step"], k, a[k], b[k])
    # Adam moves a parameter by about lr per step whatever its gradient's size, so rounding
    # differences in near-zero gradients can flip individual updates: bound by 2 * lr * steps.
    bound = 2 * plain.cfg.lr_g * plain.cfg.steps
    assert (params(plain.G) - params(fused.G)).abs().max().item() <= bound
    assert (params(plain.D) - params(fused.D)).abs().max().item() <= bound


def test_tensorboard_option(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install tensorboard"):
            Trainer(tiny(tmp_path, tensorboard=True))
        return
    t = Trainer(tiny(tmp_path, tensorboard=True, steps=2))
    t.train()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(t.cfg.out, "tb")))


def test_trains_from_a_folder_of_images_with_workers(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, 90)).save(folder / f"{i}.png")
    t = Trainer(tiny(tmp_path, data=str(folder), batch_size=4, steps=2, workers=None))
    assert len(t.dataset) == 8
    summary = t.train()
    assert summary["status"] == "completed" and t.step == 2


class _FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter: records the calls."""
    calls: list = []

    def __init__(self, logdir):
        self.logdir = logdir

    def add_scalar(self, tag, value, step):
        self.calls.append(("scalar", tag, value, step))

    def add_image(self, tag, img, step, dataformats="CHW"):
        self.calls.append(("image", tag, img, step, dataformats))

    def add_hparams(self, hparams, metrics, run_name=None):
        self.calls.append(("hparams", hparams, metrics, run_name))

    def close(self):
        self.calls.append(("close",))


def test_penalty_is_logged_only_where_computed_with_sample_images_and_hparams(tmp_path, monkeypatch):
    """Lazy R1 every 4th D step (steps 1 and 5 of 6), records every 2nd step: the records of steps 2
    and 6 carry the penalty of steps 1 and 5, step 4's has none (it used to log 0 on every record);
    TensorBoard gets the penalty at the steps that computed it, the sample grids and the config."""
    import types

    _FakeWriter.calls = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_FakeWriter))
    cfg = tiny(tmp_path, steps=6, log_every=2, sample_every=3, penalty="r1", reg_interval=4, tensorboard=True,
               xflip=True)
    Trainer(cfg).train()
    log = [json.loads(line) for line in open(os.path.join(cfg.out, "log.jsonl"))]
    assert [(r["step"], r.get("penalty_step")) for r in log] == [(2, 1), (4, None), (6, 5)]
    assert all(r["penalty"] > 0 for r in log if "penalty" in r) and "penalty" not in log[1]
    calls = _FakeWriter.calls
    assert [c[3] for c in calls if c[:2] == ("scalar", "penalty")] == [1, 5]
    assert [c[3] for c in calls if c[:2] == ("scalar", "d_loss")] == [2, 4, 6]
    images = [c for c in calls if c[0] == "image"]
    assert [(c[1], c[3], c[4]) for c in images] == [("samples", 3, "HWC"), ("samples", 6, "HWC")]
    assert images[0][2].dtype.name == "uint8" and images[0][2].shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    (hp,) = [c for c in calls if c[0] == "hparams"]
    assert hp[1]["reg_interval"] == 4 and hp[1]["xflip"] is True and hp[1]["crop"] == "center"
    assert all(isinstance(v, (bool, int, float, str)) for v in hp[1].values())
    assert set(hp[2]) == {"hparam/d_loss", "hparam/g_loss"} and hp[3] == "hparams" and calls[-1] == ("close",)
    # n_critic 2: R1 on D steps 0 and 4, the first of G steps 1 and 3; their penalty is reported
    t = Trainer(tiny(tmp_path / "nc", steps=3, n_critic=2, penalty="r1", reg_interval=4, g_width=4, d_width=4))
    t.train()
    assert [h.get("penalty_step") for h in t.history] == [1, None, 3]
    assert all(h["penalty"] > 0 for h in t.history if "penalty" in h)


def test_tensorboard_event_file_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny(tmp_path, steps=6, log_every=2, sample_every=3, penalty="r1", reg_interval=4, tensorboard=True)
    Trainer(cfg).train()
    acc = EventAccumulator(os.path.join(cfg.out, "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("penalty")] == [1, 5]
    assert [e.step for e in acc.Images("samples")] == [3, 6]
    assert os.path.isdir(os.path.join(cfg.out, "tb", "hparams"))
