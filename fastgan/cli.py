"""The ``fastgan`` command: train, sample, bench, info (argparse, thin)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

_INTERPRETER_PROBE = r"""
import torch, fastgan
from fastgan.functional import bias_act, resolve_act
from fastgan.functional.bias_act import _bias_act_ref
x = torch.randn(2, 3, 5, 7)
b = torch.randn(3)
y = bias_act(x, b, act="lrelu")
assert fastgan.backend_for(x) == "interpret"
err = (y.double() - _bias_act_ref(x.double(), b.double(), 1, resolve_act("lrelu"))).abs().max().item()
assert err < 1e-5, err
print("ok")
"""


def _interpreter_works() -> str:
    """Run a tiny bias_act kernel in a fresh interpreter-mode process (the mode is fixed at import)."""
    env = dict(os.environ, FASTGAN_BACKEND="interpret", TRITON_INTERPRET="1")
    try:
        r = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE], env=env, capture_output=True,
                           text=True, timeout=300)
    except Exception as exc:
        return f"no ({type(exc).__name__}: {exc})"
    if r.returncode == 0 and r.stdout.strip().endswith("ok"):
        return "yes (bias_act kernel matches the reference)"
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return f"no ({tail})"


def cmd_info(args) -> int:
    import platform

    import torch

    import fastgan
    from fastgan import backend, nvml

    rows = [("fastgan", fastgan.__version__), ("python", platform.python_version()), ("torch", torch.__version__)]
    try:
        import triton

        rows.append(("triton", triton.__version__))
    except Exception as exc:
        rows.append(("triton", f"not importable ({type(exc).__name__}: {exc})"))
    rows.append(("cuda (torch build)", torch.version.cuda or "none (CPU build)"))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, "
                                      f"{p.multi_processor_count} SMs"))
    else:
        rows.append(("cuda devices", "none"))
    ok, reason = nvml.status()
    rows.append(("NVML", "available" if ok else f"unavailable: {reason}"))
    rows.append(("driver", nvml.driver_version() or "unknown"))
    forced = backend.forced_backend()
    rows.append(("FASTGAN_BACKEND", os.environ.get("FASTGAN_BACKEND") or "(unset: automatic)"))
    for dev in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        try:
            chosen = backend.backend_for(torch.empty(0, device=dev))
        except Exception as exc:
            chosen = f"error: {exc}"
        rows.append((f"backend for {dev} tensors", chosen + (f" (forced: {forced})" if forced else "")))
    rows.append(("triton interpreter works", _interpreter_works() if not args.no_probe else "not checked"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def cmd_bench(args) -> int:
    from fastgan.benchmarks.run import main_with_args

    return main_with_args(args)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _train_config(args):
    from fastgan.train import TrainConfig

    import torch

    on_gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    width = args.width if args.width is not None else (64 if on_gpu else 32)
    steps = args.steps if args.steps is not None else (10000 if on_gpu else 1500)
    fields = dict(data=args.data, resolution=args.resolution, z_dim=args.z_dim, g_width=width,
                  d_width=width, fused=not args.plain_torch, loss=args.loss, penalty=args.penalty,
                  gamma=args.gamma, reg_interval=args.reg_interval, n_critic=args.n_critic,
                  batch_size=args.batch_size, steps=steps, lr_g=args.lr, lr_d=args.lr, seed=args.seed,
                  device=args.device, out=args.out, sample_every=args.sample_every, ckpt_every=args.ckpt_every,
                  log_every=args.log_every, progress=not args.no_progress, tensorboard=args.tensorboard,
                  workers=args.workers, amp=None if args.amp == "auto" else args.amp == "on", cuda_graphs=args.cuda_graphs)
    if args.betas is not None:
        fields["betas"] = tuple(args.betas)
    elif args.penalty == "wgan-gp" or args.loss == "wgan":
        fields["betas"] = (0.0, 0.9)  # the WGAN-GP paper's Adam settings
    return TrainConfig(**fields)


def cmd_train(args) -> int:
    from fastgan.data import DataError
    from fastgan.train import CheckpointError, Trainer

    try:
        cfg = _train_config(args)
        resume = args.resume
        if resume == "auto":
            resume = os.path.join(cfg.out, "checkpoint.pt")
        trainer = Trainer(cfg, resume=resume)
    except (ValueError, DataError, CheckpointError) as exc:
        raise CliError(str(exc)) from None
    c = trainer.cfg
    if trainer.dist.is_main:
        print(f"fastgan train: {c.resolution}x{c.resolution} DCGAN (G width {c.g_width}, D width {c.d_width}, "
              f"{'fastgan modules' if c.fused else 'plain torch modules'}), loss {c.loss}, penalty {c.penalty}"
              f"{f' (gamma {c.effective_gamma})' if c.penalty != 'none' else ''}, batch {c.batch_size}, "
              f"device {trainer.device}{' bf16' if trainer.amp else ''}, "
              f"{len(trainer.dataset)} images ({c.data or 'embedded shapes'}), "
              f"steps {trainer.step} -> {c.steps}, out {c.out}", flush=True)
    summary = trainer.train()
    if trainer.dist.is_main:
        ips = summary["images_per_s"]
        print(f"{summary['status']} at step {summary['step']} ({summary['steps_run']} steps in "
              f"{summary['elapsed_s']:.1f} s, {ips:.0f} images/s); last losses: D {summary['d_loss']:.4f}, "
              f"G {summary['g_loss']:.4f}; checkpoint {summary['checkpoint']}; samples in {summary['samples']}"
              if summary["steps_run"] else f"nothing to do: already at step {summary['step']}")
        if summary.get("resources"):
            print(f"resources: {summary['resources']} ({summary['resources_file']})")
        if summary["status"] == "interrupted":
            print(f"interrupted: resume with --resume {summary['checkpoint']}")
    from fastgan.train import distributed

    distributed.shutdown(trainer.dist)
    return 130 if summary["status"] == "interrupted" else 0


def cmd_sample(args) -> int:
    import torch

    from fastgan.models import Generator
    from fastgan.train import CheckpointError, TrainConfig, load_checkpoint, save_image_grid

    if args.n < 1:
        raise CliError("--n must be >= 1")
    try:
        state = load_checkpoint(args.checkpoint)
        cfg = TrainConfig.from_dict(state["config"])
        G = Generator(cfg.z_dim, cfg.resolution, cfg.g_width, fused=cfg.fused)
        G.load_state_dict(state["G" if args.no_ema else "G_ema"])
    except (CheckpointError, ValueError, RuntimeError) as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    G.eval()
    z = torch.randn(args.n, cfg.z_dim, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        images = G(z)
    save_image_grid(images, args.out)
    print(f"wrote {args.n} samples from step {state['step']} to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgan", description="fastgan: fast GAN training on NVIDIA GPUs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser(
        "train", help="train a DCGAN (default: on the embedded shapes dataset)",
        description="Train a DCGAN with fastgan's fused ops. Defaults: the embedded shapes dataset at 32x32, "
                    "the non-saturating loss with lazy R1, batch 64; 1500 steps of a width-32 model on the CPU "
                    "(a few minutes on 2 cores, shapes become visible), 10000 steps of width 64 on a GPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--data", default=None, help="folder of PNG/JPEG images or an .npz array (default: embedded shapes)")
    train.add_argument("--resolution", type=int, default=32, choices=[32, 64], help="image size")
    train.add_argument("--steps", type=int, default=None,
                       help="total G steps; resume continues up to this (default: 10000 on CUDA, 1500 on the CPU)")
    train.add_argument("--batch-size", type=int, default=64, help="global batch size (split across processes)")
    train.add_argument("--loss", default="ns", choices=["ns", "hinge", "wgan", "lsgan"], help="GAN loss")
    train.add_argument("--penalty", default="r1", choices=["none", "r1", "wgan-gp"], help="gradient penalty on D")
    train.add_argument("--gamma", type=float, default=None, help="penalty weight (default: r1 1.0, wgan-gp 10)")
    train.add_argument("--reg-interval", type=int, default=4, help="lazy R1: penalise every k-th D step with gamma*k")
    train.add_argument("--n-critic", type=int, default=1, help="D steps per G step")
    train.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate of G and D")
    train.add_argument("--betas", type=float, nargs=2, default=None,
                       help="Adam betas (default 0.5 0.999; 0.0 0.9 with wgan / wgan-gp)")
    train.add_argument("--width", type=int, default=None,
                       help="base channel width of G and D (default: 64 on CUDA, 32 on the CPU)")
    train.add_argument("--z-dim", type=int, default=128, help="latent size")
    train.add_argument("--plain-torch", action="store_true", help="build the models from plain torch modules")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="bf16 autocast (auto: on CUDA)")
    train.add_argument("--cuda-graphs", action="store_true",
                       help="capture the D and G steps (gradient penalty included) in CUDA graphs; CUDA, one process")
    train.add_argument("--seed", type=int, default=0, help="random seed (runs are deterministic on the CPU)")
    train.add_argument("--out", default="runs/fastgan", help="output folder: checkpoint, samples, log.jsonl")
    train.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                       help="resume from CHECKPOINT (without a value: OUT/checkpoint.pt)")
    train.add_argument("--sample-every", type=int, default=250, help="write a sample grid every N steps")
    train.add_argument("--ckpt-every", type=int, default=500, help="write the checkpoint every N steps")
    train.add_argument("--log-every", type=int, default=10, help="log losses every N steps")
    train.add_argument("--workers", type=int, default=None,
                       help="DataLoader worker processes (default: 0 for in-memory data, up to 8 for image folders)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--tensorboard", action="store_true", help="also log scalars to OUT/tb (needs tensorboard)")
    train.set_defaults(func=cmd_train)

    sample = sub.add_parser("sample", help="write a grid of samples from a checkpoint",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sample.add_argument("--checkpoint", required=True, help="a checkpoint written by fastgan train")
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--out", default="samples.png", help="PNG file to write")
    sample.add_argument("--seed", type=int, default=0, help="noise seed")
    sample.add_argument("--no-ema", action="store_true", help="use G instead of its moving average")
    sample.set_defaults(func=cmd_sample)

    info = sub.add_parser("info", help="versions, devices, NVML and the backend that would run")
    info.add_argument("--no-probe", action="store_true", help="skip the Triton-interpreter check (a subprocess)")
    info.set_defaults(func=cmd_info)

    from fastgan.benchmarks.run import add_arguments

    bench = sub.add_parser("bench", help="time fastgan against eager PyTorch and torch.compile",
                           description="Time cases for eager, torch.compile and fastgan in one run; "
                                       "print a Markdown table and optionally write the JSON document.")
    add_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"fastgan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
