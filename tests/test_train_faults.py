"""A training run under faults and bad input: the resume rules, SIGTERM and repeated Ctrl-C,
divergence, checkpoint integrity, the output folder's lock, leftovers of killed writes, and
one clear line (``fastgan <cmd>: error: ...``, no traceback) wherever the README promises one.
The CLI runs in this process (``fastgan.cli.main``) except where a real signal is the point."""
import json
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from fastgan import cli
from fastgan.train import CheckpointError, Trainer, TrainConfig, load_checkpoint, save_checkpoint

from .test_train import ROOT, _free_port, tiny

TINY = ["--plain-torch", "--width", "4", "--z-dim", "8", "--batch-size", "4", "--no-progress", "--log-every", "1",
        "--device", "cpu", "--sample-every", "1000"]


@pytest.fixture
def npz(tmp_path):
    """16 random 32x32 RGB images (a dataset that loads in no time)."""
    path = tmp_path / "data.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    return str(path)


def run_cli(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(err, command="train", *needles):
    assert err.startswith(f"fastgan {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def all_finite(state):
    return all(torch.isfinite(t).all() for k in ("G", "D", "G_ema") for t in state[k].values())


# ----------------------------------------------------------------------------- resume rules

def test_resume_takes_the_checkpoints_config_and_refuses_changes_it_cannot_make(tmp_path, capsys, npz):
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", *TINY, "--data", npz, "--steps", "1", "--out", out, "--loss", "hinge")
    assert rc == 0, err
    ckpt = out / "checkpoint.pt"
    # no --data, --loss or --width: the checkpoint's (the folder, hinge, width 4); --lr and --steps change
    rc, stdout, err = run_cli(capsys, "train", "--resume", ckpt, "--steps", "2", "--lr", "1e-3", "--no-progress")
    assert rc == 0, err
    assert f"resuming {ckpt} at step 1, steps 1 -> 2, lr_g 0.0002 -> 0.001, lr_d 0.0002 -> 0.001" in stdout
    assert f"16 images ({npz}" in stdout and "loss hinge" in stdout and "G width 4" in stdout
    state = load_checkpoint(str(ckpt))
    assert state["step"] == 2 and state["config"]["lr_g"] == 1e-3 and state["config"]["data"] == npz
    assert state["opt_g"]["param_groups"][0]["lr"] == state["opt_d"]["param_groups"][0]["lr"] == 1e-3
    for flags, needles in [(["--resolution", "64", "--data", str(tmp_path)], ["resolution 32 -> 64", "data "]),
                           (["--width", "8"], ["g_width 4 -> 8", "d_width 4 -> 8"]),
                           (["--loss", "ns", "--batch-size", "8"], ["loss 'hinge' -> 'ns'", "batch_size 4 -> 8"])]:
        rc, _, err = run_cli(capsys, "train", "--resume", ckpt, "--steps", "3", *flags)
        assert rc == 2
        assert_one_line(err, "train", "a resumed run keeps its checkpoint's model, data and objective", *needles)
    with pytest.raises(ValueError, match="loss 'hinge' -> 'ns'"):  # the API: cfg must match the checkpoint
        Trainer(TrainConfig.from_dict(dict(state["config"], loss="ns")), resume=str(ckpt))


# ----------------------------------------------------------------------------- signals

def _cli_process(args):
    env = {k: v for k, v in os.environ.items() if k != "FASTGAN_BACKEND"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen([sys.executable, "-m", "fastgan", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _wait_for_log(p, out, timeout=240):
    log = out / "log.jsonl"
    deadline = time.time() + timeout
    while not (log.exists() and log.stat().st_size > 0) and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    assert p.poll() is None, p.communicate()[1]


@pytest.mark.parametrize("sig,repeat,rc", [(signal.SIGTERM, False, 143), (signal.SIGINT, True, 130)],
                         ids=["sigterm", "repeated-sigint"])
def test_sigterm_and_repeated_ctrl_c_save_and_exit_cleanly(tmp_path, npz, sig, repeat, rc):
    """SIGTERM (a cluster's preemption) stops like Ctrl-C: checkpoint, exit 128 + 15. A Ctrl-C
    repeated until the process is gone (while it saves, prints and exits) still exits 130."""
    out = tmp_path / "sig"
    p = _cli_process(["train", *TINY, "--data", npz, "--steps", "100000", "--out", out])
    _wait_for_log(p, out)
    p.send_signal(sig)
    while repeat and p.poll() is None:
        time.sleep(0.1)
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            break
    stdout, stderr = p.communicate(timeout=240)
    assert p.returncode == rc, stderr
    assert "Traceback" not in stderr
    if not repeat:  # a repeated Ctrl-C may cut the closing lines short, never the checkpoint
        assert f"interrupted by {signal.Signals(sig).name}" in stdout
    assert 1 <= load_checkpoint(str(out / "checkpoint.pt"))["step"] < 100000


def _rank_pid(torchrun_pid, rank):
    """The pid of torchrun's worker process with RANK=``rank`` (read from /proc)."""
    with open(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children") as f:
        for pid in f.read().split():
            with open(f"/proc/{pid}/environ", "rb") as e:
                if f"RANK={rank}".encode() in e.read().split(b"\0"):
                    return int(pid)
    raise LookupError(f"no rank {rank} under {torchrun_pid}")


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="needs Linux /proc")
def test_torchrun_ctrl_c_to_one_rank_stops_every_rank_with_a_checkpoint(tmp_path, npz):
    """SIGINT to rank 1 only: both ranks stop at the same step, rank 0 writes the checkpoint (before,
    rank 1 left, rank 0 hung in the next all-reduce until torchrun killed it: no checkpoint)."""
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k != "FASTGAN_BACKEND"}
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port()), "-m", "fastgan", "train", *TINY,
                          "--data", npz, "--steps", "100000", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _wait_for_log(p, out)
    os.kill(_rank_pid(p.pid, 1), signal.SIGINT)
    stdout, stderr = p.communicate(timeout=300)
    assert stdout.count("interrupted by SIGINT") == 1, stdout + stderr  # rank 0 reports it
    assert "Traceback" not in stdout
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert 1 <= state["step"] < 100000


def test_batch_size_must_split_across_processes(tmp_path, monkeypatch):
    """Checked before the process group is joined: one line on every rank, no traceback, no hang."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="batch_size 8 must be divisible by the number of processes 3"):
        Trainer(tiny(tmp_path))


# ----------------------------------------------------------------------------- divergence

def test_divergence_stops_with_one_line_and_keeps_the_last_finite_checkpoint(tmp_path, capsys, npz):
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", *TINY, "--data", npz, "--steps", "2", "--out", out)
    assert rc == 0, err
    rc, stdout, err = run_cli(capsys, "train", "--resume", out / "checkpoint.pt", "--lr", "1e30", "--steps", "20",
                              "--ckpt-every", "1")
    assert rc == 1
    assert_one_line(err, "train", "the run diverged: non-finite", f"last finite checkpoint is {out}",
                    "(step 2)")
    state = load_checkpoint(str(out / "checkpoint.pt"))
    assert state["step"] == 2 and all_finite(state)
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    rc, _, err = run_cli(capsys, "train", *TINY, "--lr", "inf", "--out", out)
    assert rc == 2
    assert_one_line(err, "train", "lr_g must be a finite number > 0")


# ----------------------------------------------------------------------------- checkpoint integrity

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint of one step (read only by the tests)."""
    t = Trainer(tiny(tmp_path_factory.mktemp("ckpt"), steps=1, g_width=4, d_width=4, batch_size=4, n_embedded=16))
    t.train()
    return os.path.join(t.cfg.out, "checkpoint.pt")


def _largest_record(path):
    """(offset, size) of the largest stored tensor's bytes inside the checkpoint's zip archive."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len), info.file_size


def test_a_flipped_payload_byte_is_refused_on_load(checkpoint, tmp_path, capsys):
    offset, size = _largest_record(checkpoint)
    data = bytearray(open(checkpoint, "rb").read())
    data[offset + size // 2:offset + size // 2 + 64] = bytes(b ^ 0x5A for b in data[offset + size // 2:][:64])
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(str(bad))
    rc, _, err = run_cli(capsys, "sample", "--checkpoint", bad, "--out", tmp_path / "s.png")
    assert rc == 2
    assert_one_line(err, "sample", "checksum mismatch")
    rc, _, err = run_cli(capsys, "train", "--resume", bad)
    assert rc == 2
    assert_one_line(err, "train", "checksum mismatch")


@pytest.mark.parametrize("edit,match", [
    (lambda s: s["rng"].update(torch="not a tensor"), "malformed rng"),
    (lambda s: s["rng"].pop("torch"), "malformed rng"),
    (lambda s: s.update(rng=[1, 2]), "malformed rng"),
    (lambda s: s.update(fixed_z=torch.zeros(3)), "malformed rng or fixed-noise"),
    (lambda s: s.update(step=-1), "step must be a non-negative integer"),
    (lambda s: s.update(step=2.5), "step must be a non-negative integer"),
], ids=["rng-type", "rng-missing", "rng-list", "fixed-z", "step-negative", "step-float"])
def test_malformed_entries_are_one_line_errors(checkpoint, tmp_path, edit, match):
    state = load_checkpoint(checkpoint)
    edit(state)
    path = str(tmp_path / "edited.pt")
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version", "sha256")}, path)
    with pytest.raises(CheckpointError, match=match) as info:
        Trainer(TrainConfig.from_dict(state["config"]), resume=path)
    assert "\n" not in str(info.value)


def test_checkpoints_follow_the_umask(checkpoint, tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint(load_checkpoint(checkpoint), str(tmp_path / "u.pt"))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "u.pt").st_mode & 0o777 == 0o640


# ----------------------------------------------------------------------------- one clear line

def test_bad_flags_and_unwritable_outputs_are_one_line_errors(tmp_path, capsys, checkpoint):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["train", "--gamma", "inf"], "gamma must be a finite number"),
        (["train", "--device", "gpu"], "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["train", "--device", "cuda:abc"], "device must be auto, cpu, cuda or cuda:N"),
        (["train", *TINY, "--steps", "1", "--out", a_file], f"cannot write {a_file}"),
        (["train", *TINY, "--steps", "1", "--out", a_file / "run"], f"cannot write {a_file}"),
        (["sample", "--checkpoint", checkpoint, "--out", tmp_path], "a folder, not a file name"),
        (["sample", "--checkpoint", checkpoint, "--out", tmp_path / "s.gif"], "must end in .png"),
        (["bench", "--device", "cpu", "--json", a_file / "r.json"], "--json: cannot write"),
        (["bench", "--device", "cpu", "--json", tmp_path], "--json: cannot write"),
    ]
    for args, needle in cases:
        t0 = time.perf_counter()
        rc, _, err = run_cli(capsys, *args)
        assert rc == 2, (args, err)
        if args[0] == "bench":  # checked before any timing
            assert err.startswith("error: --json: ") and err.count("\n") == 1 and time.perf_counter() - t0 < 5
            assert needle in err
        else:
            assert_one_line(err, args[0], needle)
    rc, out, err = run_cli(capsys, "sample", "--checkpoint", checkpoint, "--n", "4", "--out", tmp_path / "s.jpg")
    assert rc == 0, err
    assert (tmp_path / "s.jpg").read_bytes()[:2] == b"\xff\xd8", "a .jpg is JPEG"


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, npz):
    """A write cut short by the system (here the file-size limit, RLIMIT_FSIZE: EFBIG; a full disk is
    ENOSPC on the same path) names the file and the reason; the previous checkpoint survives."""
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "train", *TINY, "--data", npz, "--steps", "1", "--out", out)
    assert rc == 0, err
    size = os.path.getsize(out / "checkpoint.pt")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))
    try:
        rc, _, err = run_cli(capsys, "train", "--resume", out / "checkpoint.pt", "--steps", "2", "--no-progress")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert rc == 2
    assert_one_line(err, "train", f"cannot write {out / 'checkpoint.pt'}: File too large",
                    "the file is over the size limit")
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 1
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert os.path.getsize(out / "config.json") > 0


# ----------------------------------------------------------------------------- the output folder

def test_a_second_run_on_the_same_out_is_refused_and_a_dead_runs_lock_is_not(tmp_path, capsys, npz):
    from fastgan.atomic import FolderLockedError

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fastgan.atomic import FolderLock\n"
                               "with FolderLock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)",
                               str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run_cli(capsys, "train", *TINY, "--data", npz, "--steps", "1", "--out", out)
        assert rc == 2
        assert_one_line(err, "train", f"{out} is in use by another run (pid {holder.pid} on ")
        with pytest.raises(FolderLockedError):
            Trainer(tiny(tmp_path, data=npz, out=str(out), g_width=4, d_width=4, batch_size=4)).train()
    finally:
        holder.kill()  # SIGKILL: the lock dies with its process
        holder.wait()
    rc, _, err = run_cli(capsys, "train", *TINY, "--data", npz, "--steps", "1", "--out", out)
    assert rc == 0, err


def test_stale_temporaries_are_removed_and_the_log_continues_from_the_resumed_step(tmp_path, npz):
    cfg = dict(data=npz, g_width=4, d_width=4, batch_size=4)
    first = Trainer(tiny(tmp_path, steps=2, **cfg))
    first.train()
    out = first.cfg.out
    mid = os.path.join(tmp_path, "mid.pt")
    os.replace(os.path.join(out, "checkpoint.pt"), mid)
    stale = [os.path.join(out, ".checkpoint.pt.0a1b2c3d.tmp"), os.path.join(out, "samples", ".x.png.deadbeef.tmp")]
    for f in stale + [os.path.join(out, "notes.tmp")]:
        open(f, "wb").write(b"\0" * 1000)
    Trainer(tiny(tmp_path, steps=4, **cfg), resume=mid).train()  # log: steps 1..4
    assert not any(os.path.exists(f) for f in stale) and os.path.exists(os.path.join(out, "notes.tmp"))
    Trainer(tiny(tmp_path, steps=3, **cfg), resume=mid).train()  # from step 2 again: steps 3 and 4 go
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "log.jsonl"))]
    assert steps == [1, 2, 3]
    Trainer(tiny(tmp_path, steps=1, **cfg)).train()  # a new run in the same folder: a new log
    assert [json.loads(line)["step"] for line in open(os.path.join(out, "log.jsonl"))] == [1]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_bench_exits_130(tmp_path):
    out = tmp_path / "b.json"
    env = {k: v for k, v in os.environ.items() if k != "FASTGAN_BACKEND"}
    p = subprocess.Popen([sys.executable, "-m", "fastgan", "bench", "--device", "cpu", "--families", "ops",
                          "--providers", "eager", "--dtypes", "float32", "--json", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                         preexec_fn=_default_sigint)  # a suite run as a background job passes SIGINT ignored
    deadline = time.time() + 240
    while not out.exists() and time.time() < deadline and p.poll() is None:  # rewritten after every case
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=240)
    assert p.returncode == 130, stderr
    assert json.loads(out.read_text())["interrupted"] is True
