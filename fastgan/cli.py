"""The ``fastgan`` command: train, plot, sample, generate, eval, augment-eval, inpaint, bench, info (argparse,
thin)."""
from __future__ import annotations

import argparse
import os
import signal
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
    """Run a tiny bias_act kernel in a fresh interpreter-mode process (the mode is fixed at import).
    The probe imports the fastgan that is running (its folder first on PYTHONPATH) from an empty
    working folder, so that a ``fastgan/`` or ``triton/`` folder in the caller's working folder
    (``python -c`` puts it first on sys.path) is not what it imports."""
    import tempfile

    import fastgan

    env = dict(os.environ, FASTGAN_BACKEND="interpret", TRITON_INTERPRET="1")
    parent = os.path.dirname(os.path.dirname(os.path.abspath(fastgan.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        with tempfile.TemporaryDirectory(prefix="fastgan-info-") as cwd:
            r = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE], env=env, capture_output=True,
                               text=True, timeout=300, cwd=cwd)
    except Exception as exc:
        return f"no ({type(exc).__name__}: {exc})"
    if r.returncode == 0 and r.stdout.strip().endswith("ok"):
        return "yes (bias_act kernel matches the reference)"
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return f"no ({tail})"


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        name = None
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"


def _git_commit(folder: str) -> str:
    """The commit of the git checkout whose top level is ``folder`` ("+ local changes" when its
    tracked files differ), or "none (not a git checkout)"."""
    def git(*args):
        r = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        top = git("rev-parse", "--show-toplevel")
        if top is None or os.path.realpath(top) != os.path.realpath(folder):
            return "none (not a git checkout)"
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return (git("rev-parse", "HEAD") or "unknown") + (" + local changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "none (git not available)"


INFO_ENV = ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")  # and every FASTGAN_* variable


def info_rows(probe: bool = True) -> list[tuple[str, object]]:
    """What ``fastgan info`` reports, as (key, value) rows; a value is a string or, for the
    environment, a dict of the variables that are set."""
    import platform

    import numpy
    import PIL
    import torch

    import fastgan
    from fastgan import backend, nvml
    from fastgan.backend import conv_dispatch

    package = os.path.dirname(os.path.abspath(fastgan.__file__))
    rows = [("fastgan", fastgan.__version__), ("fastgan path", package),
            ("fastgan commit", _git_commit(os.path.dirname(package))),
            ("python", platform.python_version()), ("os", platform.platform()), ("cpu", _cpu_name()),
            ("torch", torch.__version__), ("numpy", numpy.__version__), ("Pillow", PIL.__version__)]
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
    rows.append(("environment", {k: v for k, v in sorted(os.environ.items())
                                 if k.startswith("FASTGAN_") or k in INFO_ENV}))
    for dev in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        try:
            chosen = backend.backend_for(torch.empty(0, device=dev))
        except Exception as exc:
            chosen = f"error: {exc}"
        rows.append((f"backend for {dev} tensors", chosen + (f" (forced: {forced})" if forced else "")))
    cache = conv_dispatch.cache_path()
    rows.append(("conv dispatch cache", cache + ("" if os.path.exists(cache) else " (not written yet)")))
    rows.append(("triton interpreter works", _interpreter_works() if probe else "not checked"))
    return rows


def cmd_info(args) -> int:
    import json

    rows = info_rows(probe=not args.no_probe)
    if args.json:
        print(json.dumps(dict(rows), indent=2))
        return 0
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        if isinstance(v, dict):
            v = ", ".join(f"{name}={value}" for name, value in v.items()) or "(none of FASTGAN_*, " + \
                ", ".join(INFO_ENV) + " set)"
        print(f"{k:<{width}}  {v}")
    return 0


def cmd_bench(args) -> int:
    from fastgan.benchmarks.run import main_with_args

    return main_with_args(args)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# flags that set several TrainConfig fields
_SHARED_FLAGS = {"lr": ("lr_g", "lr_d"), "width": ("g_width", "d_width")}


def _given_fields(args) -> dict:
    """The TrainConfig fields of the flags given on the command line (argparse holds no defaults
    of its own, ``default=argparse.SUPPRESS``, so every other field keeps its default: TrainConfig's
    for a new run, the checkpoint's for a resumed one)."""
    from fastgan.train import TrainConfig

    fields = set(TrainConfig.defaults())
    return {field: value for name, value in vars(args).items() for field in _SHARED_FLAGS.get(name, (name,))
            if field in fields}


def _train_config(args):
    """(config, checkpoint to resume or None). Resuming: the checkpoint's config with the flags
    given, which may change only what a resumed run can change (``TrainConfig.resumed``)."""
    from fastgan.train import TrainConfig
    from fastgan.train.checkpoint import read_config

    given = _given_fields(args)
    if args.resume is None:
        return TrainConfig(**given), None
    resume = args.resume
    if resume == "auto":
        resume = os.path.join(given.get("out", TrainConfig.defaults()["out"]), "checkpoint.pt")
    return TrainConfig.from_dict(read_config(resume)).resumed(given)[0], resume


def _run_errors():
    """The exceptions that are a clear one-line reason to stop (no traceback)."""
    from fastgan.atomic import FolderLockedError
    from fastgan.data import DataError
    from fastgan.train import CheckpointError

    return ValueError, DataError, CheckpointError, FolderLockedError


def _eval_errors():
    from fastgan.apps.features import FeatureError
    from fastgan.apps.metrics import MetricError

    return MetricError, FeatureError


def cmd_train(args) -> int:
    from fastgan.atomic import write_error
    from fastgan.train import Trainer, distributed

    errors = _run_errors()
    try:
        cfg, resume = _train_config(args)
        evaluator = None
        if cfg.eval_every is not None:  # a resumed run keeps its checkpoint's --eval-every
            from fastgan.apps import RunEvaluator

            errors += _eval_errors()
            evaluator = RunEvaluator.from_config(cfg)
        trainer = Trainer(cfg, resume=resume, evaluator=evaluator)
        c = trainer.cfg
        if evaluator is not None and trainer.dist.is_main:
            evaluator.prepare(trainer)  # the real features now: data too small for the metrics fails here
        if trainer.dist.is_main:
            note = getattr(trainer.dataset, "note", None)
            cond = (f", conditional on {trainer.n_classes} classes ({', '.join(trainer.classes[:8])}"
                    f"{', ...' if trainer.n_classes > 8 else ''})" if trainer.n_classes else "")
            model = (f"StyleGAN2 (channel_base {c.channel_base}, channel_max {c.channel_max}, z/w {c.z_dim}, "
                     f"path length {c.pl_weight} every {c.pl_interval}, style mixing {c.style_mixing}, EMA half-life "
                     f"{c.ema_kimg} kimg" if c.model == "stylegan2" else
                     f"DCGAN (G width {c.g_width}, D width {c.d_width}")
            print(f"fastgan train: {c.resolution}x{c.resolution} {model}, "
                  f"{'fastgan modules' if c.fused else 'plain torch modules'}), loss {c.loss}, penalty {c.penalty}"
                  f"{f' (gamma {c.effective_gamma})' if c.penalty != 'none' else ''}"
                  f"{f', augment {c.augment}' if c.augment != 'none' else ''}"
                  f"{f' (target {c.ada_target}, kimg {c.ada_kimg}, p {c.ada_p})' if c.augment == 'ada' else ''}, "
                  f"batch {c.batch_size}, "
                  f"device {trainer.device}{' bf16' if trainer.amp else ''}, "
                  f"{len(trainer.dataset)} images ({c.data or 'embedded shapes'}{f'; {note}' if note else ''}), "
                  f"steps {trainer.step} -> {c.steps}{cond}, out {c.out}", flush=True)
            if evaluator is not None:
                print(f"evaluating G_ema every {c.eval_every} steps: {c.eval_metrics} of {c.eval_n} generated vs "
                      f"{evaluator.real_features.shape[0]} training images, {evaluator.extractor.note}", flush=True)
        summary = trainer.train()
    except errors as exc:
        raise CliError((str(exc).splitlines() or [type(exc).__name__])[0]) from None
    except OSError as exc:
        raise CliError(write_error(exc)) from None
    status = summary["status"]
    if trainer.dist.is_main:
        ips = summary["images_per_s"]
        print(f"{status} at step {summary['step']} ({summary['steps_run']} steps in "
              f"{summary['elapsed_s']:.1f} s, {ips:.0f} images/s); last losses: D {summary['d_loss']:.4f}, "
              f"G {summary['g_loss']:.4f}; checkpoint {summary['checkpoint']}; samples in {summary['samples']}"
              if summary["steps_run"] else f"nothing to do: already at step {summary['step']}")
        if summary.get("resources"):
            print(f"resources: {summary['resources']} ({summary['resources_file']})")
        if summary.get("eval"):
            print(f"last evaluation (step {summary['eval']['step']}): " + _eval_line(summary["eval"]))
        if status == "interrupted":  # no plot: an interrupted run exits at once (`fastgan plot` draws it later)
            print(f"interrupted by {summary['signal']}: resume with --resume {summary['checkpoint']}")
        elif not args.no_plot:
            _plot_at_end(c.out)
    distributed.shutdown(trainer.dist)
    if status == "diverged":
        kept = summary["checkpoint_step"]
        print(f"fastgan train: error: the run diverged: {summary['diverged']}; "
              + (f"the last finite checkpoint is {summary['checkpoint']} (step {kept})" if kept is not None
                 else "no checkpoint was written") + "; try a lower --lr", file=sys.stderr)
        return 1
    return 128 + signal.Signals[summary["signal"]] if status == "interrupted" else 0


def _eval_line(rec: dict) -> str:
    """An evaluation record's metrics in one line."""
    if rec.get("error"):
        return rec["error"]
    parts = [f"{label} {rec[k]:{fmt}}" + (f" +- {rec['kid_std']:.4g}" if k == "kid" and rec.get("kid_std") is not None
                                          else "")
             for k, label, fmt in (("fid", "FID", ".4g"), ("kid", "KID", ".4g"), ("precision", "precision", ".3f"),
                                   ("recall", "recall", ".3f")) if rec.get(k) is not None]
    return ", ".join(parts) + f" ({rec.get('features')} features, {rec.get('n_fake')} vs {rec.get('n_real')} images)"


def _plot_at_end(out: str) -> None:
    """``fastgan train``'s curves.png, when matplotlib is there; never fails the run."""
    from fastgan.train.curves import PlotError, matplotlib_missing, plot_run

    if matplotlib_missing():
        print("no curves.png: matplotlib is not installed (pip install 'fastgan[plot]'; fastgan plot RUN draws "
              "it later)")
        return
    try:
        print(f"curves: {plot_run(out)}")
    except (PlotError, OSError, RuntimeError) as exc:
        print(f"no curves.png: {(str(exc).splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)


def cmd_plot(args) -> int:
    from fastgan.atomic import write_error
    from fastgan.train.curves import PlotError, plot_run

    try:
        path = plot_run(args.run, args.out)
    except PlotError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(write_error(exc)) from None
    print(f"wrote {path}")
    return 0


def cmd_sample(args) -> int:
    import torch

    from fastgan.atomic import check_writable, write_error
    from fastgan.models import Generator, build_stylegan2
    from fastgan.train import CheckpointError, TrainConfig, load_checkpoint, save_image_grid
    from fastgan.train.trainer import image_format

    if args.n < 1:
        raise CliError("--n must be >= 1")
    try:
        check_writable(args.out)
        image_format(args.out)
    except ValueError as exc:
        raise CliError(f"--out {exc}") from None
    except OSError as exc:
        raise CliError(f"--out: {write_error(exc)}") from None
    try:
        state = load_checkpoint(args.checkpoint)
        cfg = TrainConfig.from_dict(state["config"])
        k = len(state.get("classes") or []) if cfg.conditional else 0  # conditional: one column per class
        if cfg.model == "stylegan2":
            G = build_stylegan2(cfg.resolution, cfg.z_dim, cfg.z_dim, k, cfg.channel_base, cfg.channel_max,
                                cfg.mapping_layers, fused=cfg.fused)[0]
        else:
            G = Generator(cfg.z_dim, cfg.resolution, cfg.g_width, fused=cfg.fused, n_classes=k)
        G.load_state_dict(state["G" if args.no_ema else "G_ema"])
    except (CheckpointError, ValueError, RuntimeError) as exc:
        raise CliError(str(exc).splitlines()[0]) from None
    G.eval()
    z = torch.randn(args.n, cfg.z_dim, generator=torch.Generator().manual_seed(args.seed))
    labels = torch.arange(args.n) % k if k else None
    with torch.no_grad():
        if cfg.model == "stylegan2":
            c = None if labels is None else torch.nn.functional.one_hot(labels, k).float()
            images = G(z, c, truncation_psi=args.truncation_psi, noise_mode="const")
        else:
            images = G(z) if labels is None else G(z, labels)
    save_image_grid(images, args.out, nrow=k or None)
    print(f"wrote {args.n} samples from step {state['step']} to {args.out}")
    return 0


def _app_errors():
    """The exceptions of fastgan.apps that are one-line user errors."""
    from fastgan.apps.augment import AugmentError
    from fastgan.apps.features import FeatureError
    from fastgan.apps.generate import GenerateError
    from fastgan.apps.inpaint import InpaintError
    from fastgan.apps.metrics import MetricError

    return _run_errors() + (MetricError, FeatureError, GenerateError, InpaintError, AugmentError)


def cmd_eval(args) -> int:
    from fastgan.apps.evaluate import evaluate, format_result
    from fastgan.atomic import atomic_write_json, check_writable, write_error
    from fastgan.data import DataError, data_error_line

    try:
        if args.json:
            check_writable(args.json)
        doc = evaluate(args.checkpoint, data=args.data, metrics=args.metrics, n=args.n, seed=args.seed,
                       batch_size=args.batch_size, ema=not args.no_ema, inception_weights=args.inception_weights,
                       device=args.device, progress=not args.no_progress, kid_subsets=args.kid_subsets,
                       kid_subset_size=args.kid_subset_size)
        print(f"fastgan eval: {doc['checkpoint']} (step {doc['step']}, {doc['weights']}): {doc['n_fake']} generated vs "
              f"{doc['n_real']} real images ({doc['data']}); {doc['features_note']}")
        print(format_result(doc))
        if args.json:
            atomic_write_json(args.json, doc)
            print(f"wrote {args.json}")
    except DataError as exc:
        raise CliError(data_error_line(exc)) from None
    except _app_errors() as exc:
        raise CliError((str(exc).splitlines() or [type(exc).__name__])[0]) from None
    except OSError as exc:
        raise CliError(write_error(exc)) from None
    return 0


def cmd_generate(args) -> int:
    from fastgan.apps.generate import generate
    from fastgan.atomic import write_error

    try:
        if args.n is None and args.per_class is None:
            raise CliError("give --n N (or, for a conditional checkpoint, --per-class N)")
        manifest = generate(args.checkpoint, args.n, args.out, fmt=args.format, seed=args.seed,
                            batch_size=args.batch_size, resume=args.resume, ema=not args.no_ema, device=args.device,
                            progress=not args.no_progress, log=print, truncation=args.truncation,
                            klass=args.klass, per_class=args.per_class)
    except _app_errors() as exc:
        raise CliError((str(exc).splitlines() or [type(exc).__name__])[0]) from None
    except OSError as exc:
        raise CliError(write_error(exc)) from None
    sel = manifest.get("selection") or {}
    what = (f" of class {sel['class']}" if "class" in sel else
            f", {sel['per_class']} of each of {len(manifest['classes'])} classes" if "per_class" in sel else
            f", classes in turn ({len(manifest['classes'])})" if sel else "")
    print(f"wrote {manifest['count']} images{what} ({manifest['image_format']}) from step {manifest['step']} to "
          f"{args.out}; manifest {manifest['manifest']}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def cmd_augment_eval(args) -> int:
    from fastgan.apps.augment import augment_eval, format_table
    from fastgan.atomic import atomic_write_json, check_writable, write_error

    try:
        if args.json:
            check_writable(args.json)
        doc = augment_eval(args.checkpoint, k=args.k, m=args.m, seeds=args.seeds, steps=args.steps,
                           batch_size=args.batch_size, n_test=args.n_test, ema=not args.no_ema,
                           truncation=args.truncation, generated_only=args.generated_only, device=args.device,
                           progress=not args.no_progress)
        st = doc["settings"]
        print(f"fastgan augment-eval: {doc['checkpoint']} (step {doc['step']}, {doc['weights']}); held-out test "
              f"accuracy of a classifier trained {st['steps']} steps, over {st['seeds']} seeds (mean ± std), "
              f"{st['n_test']} real test images; {doc['elapsed_s']:.0f} s")
        print(format_table(doc))
        if args.json:
            atomic_write_json(args.json, doc)
            print(f"wrote {args.json}")
    except _app_errors() as exc:
        raise CliError((str(exc).splitlines() or [type(exc).__name__])[0]) from None
    except OSError as exc:
        raise CliError(write_error(exc)) from None
    return 0


def cmd_inpaint(args) -> int:
    from fastgan.apps.inpaint import inpaint_files
    from fastgan.atomic import write_error
    from fastgan.data import DataError, data_error_line

    try:
        written = inpaint_files(args.checkpoint, args.image, args.mask, args.out, ema=not args.no_ema,
                                device=args.device, steps=args.steps, restarts=args.restarts, seed=args.seed,
                                feather=args.feather, perceptual=args.perceptual, prior=args.prior, log=print)
    except DataError as exc:
        raise CliError(data_error_line(exc)) from None
    except _app_errors() as exc:
        raise CliError((str(exc).splitlines() or [type(exc).__name__])[0]) from None
    except OSError as exc:
        raise CliError(write_error(exc)) from None
    print(f"repaired {len(written)} image{'s' * (len(written) != 1)}")
    return 0


def _auto_on_off(value: str):
    """--amp: auto -> None (on for CUDA), on -> True, off -> False."""
    choices = {"auto": None, "on": True, "off": False}
    if value not in choices:
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {value!r}")
    return choices[value]


_NO_EMA = "use G instead of its moving average"


def _add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by fastgan train")


def _add_generator_run(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """The options of a command that runs a checkpoint's generator: --device, --no-ema
    (and --no-progress)."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-ema", action="store_true", help=_NO_EMA)
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_train_arguments(train: argparse.ArgumentParser) -> None:
    """The train flags. Their defaults are TrainConfig's (shown in the help text)."""
    from fastgan.train import TrainConfig
    from fastgan.data import CROPS
    from fastgan.train.config import (AUGMENTS, DEVICE_DEFAULTS, EVAL_METRICS, LOSSES, MODEL_DEFAULTS, MODELS,
                                      PENALTIES, STYLEGAN2_DEVICE_DEFAULTS, STYLEGAN2_RESOLUTIONS)

    d = TrainConfig.defaults()
    cpu, cuda = DEVICE_DEFAULTS["cpu"], DEVICE_DEFAULTS["cuda"]
    dc, sg = MODEL_DEFAULTS["dcgan"], MODEL_DEFAULTS["stylegan2"]
    sg_cpu, sg_cuda = STYLEGAN2_DEVICE_DEFAULTS["cpu"], STYLEGAN2_DEVICE_DEFAULTS["cuda"]

    def add(*flags, help, **kw):
        train.add_argument(*flags, default=argparse.SUPPRESS, help=help, **kw)

    add("--data", help="folder of PNG/JPEG images or an .npz array (default: the embedded shapes)")
    add("--model", choices=list(MODELS), help=f"architecture and recipe (default: {d['model']})")
    add("--resolution", type=int, choices=sorted({32, 64, *STYLEGAN2_RESOLUTIONS}),
        help=f"image size: dcgan 32 or 64, stylegan2 a power of two from 16 to 1024 (default: {d['resolution']})")
    add("--resize", action="store_true", help="resize each image's short side to --resolution (antialiased "
                                               "bicubic), then crop it square (--crop); for images of any size")
    add("--crop", choices=list(CROPS), help=f"with --resize: the square kept, the center or a random offset along "
                                            f"the long side, seeded (default: {d['crop']})")
    add("--xflip", action="store_true", help="flip each drawn image horizontally with probability 1/2, seeded "
                                             "(the dataset's size is unchanged)")
    add("--conditional", action="store_true",
        help="class-conditional G and D (dcgan: label embedding + projection D; stylegan2: c_dim) on the data's "
             "labels: the embedded shapes' classes, a --data folder with one subfolder per class, or an .npz with "
             "'labels' (and 'classes')")
    add("--steps", type=int, help=f"total G steps; resume continues up to this (default: {cuda['steps']} on CUDA, "
                                  f"{cpu['steps']} on the CPU)")
    add("--batch-size", type=int, help=f"global batch size, split across processes (default: {d['batch_size']})")
    add("--loss", choices=list(LOSSES), help=f"GAN loss (default: {d['loss']})")
    add("--penalty", choices=list(PENALTIES), help=f"gradient penalty on D (default: {d['penalty']})")
    add("--gamma", type=float, help="penalty weight (default: r1 1.0, wgan-gp 10; stylegan2 r1: "
                                    "0.0002 * resolution^2 / batch size)")
    add("--reg-interval", type=int, help=f"lazy R1: penalise every k-th D step with gamma*k (default: dcgan "
                                         f"{dc['reg_interval']}, stylegan2 {sg['reg_interval']})")
    add("--n-critic", type=int, help=f"D steps per G step (default: {d['n_critic']})")
    add("--lr", type=float, help=f"Adam learning rate of G and D (default: dcgan {dc['lr_g']}, stylegan2 "
                                 f"{sg['lr_g']})")
    add("--betas", type=float, nargs=2, help="Adam betas (default: 0.5 0.999; 0.0 0.9 with wgan / wgan-gp; "
                                             "stylegan2 0.0 0.99)")
    add("--width", type=int, help=f"base channel width of G and D (default: {cuda['g_width']} on CUDA, "
                                  f"{cpu['g_width']} on the CPU)")
    add("--z-dim", type=int, help=f"latent size (stylegan2: z and w) (default: {d['z_dim']})")
    add("--channel-base", type=int, help=f"stylegan2: channels at resolution r are min(channel_base // r, "
                                         f"channel_max) (default: {sg_cuda['channel_base']} on CUDA, "
                                         f"{sg_cpu['channel_base']} on the CPU)")
    add("--channel-max", type=int, help=f"stylegan2 (default: {sg_cuda['channel_max']} on CUDA, "
                                        f"{sg_cpu['channel_max']} on the CPU)")
    add("--mapping-layers", type=int, help=f"stylegan2: mapping network depth (default: {d['mapping_layers']})")
    add("--style-mixing", type=float, help=f"stylegan2: style-mixing probability (default: {d['style_mixing']})")
    add("--pl-weight", type=float, help=f"stylegan2: path-length weight, 0 off (default: {d['pl_weight']})")
    add("--pl-interval", type=int, help=f"stylegan2: lazy path length every k-th G step (default: "
                                        f"{d['pl_interval']})")
    add("--ema-kimg", type=float, help=f"stylegan2: G_ema half-life in kimg (default: {d['ema_kimg']}, ramp-up "
                                       f"{d['ema_rampup']})")
    add("--truncation-psi", type=float, help=f"stylegan2: truncation of the sample grids (default: "
                                             f"{d['truncation_psi']})")
    add("--augment", choices=list(AUGMENTS), help=f"stylegan2: augment D's inputs, diffaug = DiffAugment's color, "
                                                 f"translation and cutout, ada = ADA's blit, geometric and colour "
                                                 f"transforms with adaptive p (default: {d['augment']})")
    add("--ada-target", type=float, help=f"--augment ada: raise p while mean(sign(D(real))) is above this, lower it "
                                         f"below (default: {d['ada_target']})")
    add("--ada-kimg", type=float, help=f"--augment ada: thousands of real images for p to move by 1 (default: "
                                       f"{d['ada_kimg']})")
    add("--ada-p", type=float, help=f"--augment ada: the initial p (default: {d['ada_p']})")
    add("--plain-torch", dest="fused", action="store_false",
        help="plain torch everywhere: torch modules, losses and penalties (the eager baseline)")
    add("--device", help=f"auto, cpu, cuda or cuda:N (default: {d['device']})")
    add("--amp", type=_auto_on_off, metavar="{auto,on,off}",
        help="bf16 autocast; stylegan2: bf16 in the top 4 resolutions with conv clamp 256 (default: auto, i.e. on "
             "for CUDA)")
    add("--cuda-graphs", action="store_true",
        help="capture the D and G steps (gradient penalty included) in CUDA graphs; CUDA, one process")
    add("--seed", type=int, help=f"random seed; runs are deterministic on the CPU (default: {d['seed']})")
    add("--out", help=f"output folder: checkpoint, samples, log.jsonl (default: {d['out']})")
    train.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                       help="resume from CHECKPOINT (without a value: OUT/checkpoint.pt)")
    add("--sample-every", type=int, help=f"write a sample grid every N steps (default: {d['sample_every']})")
    add("--ckpt-every", type=int, help=f"write the checkpoint every N steps (default: {d['ckpt_every']})")
    add("--log-every", type=int, help=f"log losses every N steps (default: {d['log_every']})")
    add("--workers", type=int, help="DataLoader worker processes (default: 0 for in-memory data, up to 8 for "
                                    "image folders)")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add("--tensorboard", action="store_true",
        help="also log to OUT/tb: scalars, sample grids, the config as hparams (needs tensorboard)")
    add("--eval-every", type=int, metavar="K",
        help="every K steps and at the end: G_ema's metrics against the training data into log.jsonl (records "
             "with \"kind\": \"eval\"), on the shapes feature net (not comparable with Inception-FID) (default: off)")
    add("--eval-metrics", help=f"with --eval-every: comma-separated, from {', '.join(EVAL_METRICS)} (default: "
                               f"{d['eval_metrics']})")
    add("--eval-n", type=int, help=f"with --eval-every: generated (and real) images per evaluation (default: "
                                   f"{d['eval_n']})")
    train.add_argument("--no-plot", action="store_true",
                       help="do not write OUT/curves.png at the end (written when matplotlib is installed; not "
                            "after an interruption: `fastgan plot OUT` draws it then)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgan", description="fastgan: fast GAN training on NVIDIA GPUs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    train = sub.add_parser(
        "train", help="train a DCGAN or a StyleGAN2 (default: a DCGAN on the embedded shapes dataset)",
        description="Train a DCGAN with fastgan's fused ops. Defaults: the embedded shapes dataset at 32x32, "
                    "the non-saturating loss with lazy R1, batch 64; 1500 steps of a width-32 model on the CPU "
                    "(a few minutes on 2 cores, shapes become visible), 10000 steps of width 64 on a GPU. "
                    "--model stylegan2 --resolution R: StyleGAN2 with lazy R1, path length, style mixing and an "
                    "EMA half-life.")
    _add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    sample = sub.add_parser("sample", help="write a grid of samples from a checkpoint (conditional: a column per "
                                           "class)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_checkpoint(sample)
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--out", default="samples.png", help="image file to write (.png, .jpg, .webp or .bmp)")
    sample.add_argument("--seed", type=int, default=0, help="noise seed")
    sample.add_argument("--no-ema", action="store_true", help=_NO_EMA)
    sample.add_argument("--truncation-psi", type=float, default=1.0,
                        help="stylegan2: w <- w_avg + psi (w - w_avg) (default: 1.0, none)")
    sample.set_defaults(func=cmd_sample)

    ev = sub.add_parser("eval", help="FID, KID and precision/recall of a checkpoint's generator",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Generate N images, take N real ones (the run's data, or --data), and compute "
                                    "the metrics on the shapes feature net's features (not comparable with "
                                    "Inception-FID) or on InceptionV3's (--inception-weights).")
    _add_checkpoint(ev)
    ev.add_argument("--data", default=None, help="real images: a folder or .npz (default: the run's own data)")
    ev.add_argument("--metrics", default="fid,kid,pr", help="comma-separated: fid, kid, pr")
    ev.add_argument("--n", type=int, default=2048, help="generated (and real) images")
    ev.add_argument("--json", default=None, metavar="OUT", help="also write the result document here (atomically)")
    ev.add_argument("--seed", type=int, default=0, help="noise, real-subset and KID-subset seed")
    ev.add_argument("--kid-subsets", type=int, default=100, help="KID: number of random subsets")
    ev.add_argument("--kid-subset-size", type=int, default=1000, help="KID: images per subset (at most --n)")
    ev.add_argument("--batch-size", type=int, default=256, help="images per generator / feature batch")
    ev.add_argument("--inception-weights", default=None, metavar="PATH",
                    help="InceptionV3 state_dict in torchvision's format (needs torchvision; never downloads)")
    _add_generator_run(ev)
    ev.set_defaults(func=cmd_eval)

    gen = sub.add_parser("generate", help="export N generated images (ImageFolder layout + manifest)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Write N images from a checkpoint's generator into OUT: one subfolder per "
                                     "class (unconditional models: unconditional/), or one images.npz, and a "
                                     "manifest.json (checkpoint SHA-256, seed, count, class of each file) marked "
                                     "complete only at the end. --resume continues an interrupted run exactly. "
                                     "A conditional checkpoint: --class K (all N of class K) or --per-class M "
                                     "(M of every class); neither: the classes in turn.")
    _add_checkpoint(gen)
    gen.add_argument("--n", type=int, default=None, help="number of images (not with --per-class)")
    which = gen.add_mutually_exclusive_group()
    which.add_argument("--class", dest="klass", default=None, metavar="K",
                       help="conditional checkpoints: every image of class K (its index or its name)")
    which.add_argument("--per-class", type=int, default=None, metavar="M",
                       help="conditional checkpoints: M images of every class (M x classes in all)")
    gen.add_argument("--out", required=True, help="output folder (new or empty, or an interrupted one with --resume)")
    gen.add_argument("--format", choices=["png", "npz"], default="png", help="PNG files, or one images.npz")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (image i's latent depends on seed and i only)")
    gen.add_argument("--batch-size", type=int, default=256, help="images per generator batch")
    gen.add_argument("--truncation", type=float, default=1.0, metavar="PSI",
                     help="scale the latents by PSI in (0, 1]: more typical images, less variety")
    gen.add_argument("--resume", action="store_true", help="continue an interrupted generate in OUT")
    _add_generator_run(gen)
    gen.set_defaults(func=cmd_generate)

    inp = sub.add_parser("inpaint", help="repair images where a mask is white (GAN inversion)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Find the latent whose image matches the known pixels (masked L2, a perceptual "
                                     "term on the shapes feature net, a Gaussian prior; Adam from several random "
                                     "starts), then blend it into the hole with a feathered mask.")
    _add_checkpoint(inp)
    inp.add_argument("--image", required=True, help="an image file, or a folder of images")
    inp.add_argument("--mask", required=True, help="a mask image (white = repair), or a folder with the same names")
    inp.add_argument("--out", required=True, help="output PNG (one image) or folder")
    inp.add_argument("--steps", type=int, default=200, help="Adam steps per start")
    inp.add_argument("--restarts", type=int, default=4, help="random starts per image")
    inp.add_argument("--perceptual", type=float, default=0.01, help="weight of the perceptual term (0: off)")
    inp.add_argument("--prior", type=float, default=1e-3, help="weight of the latent prior mean(z^2)")
    inp.add_argument("--feather", type=float, default=1.0, help="blend ramp width in pixels (Gaussian sigma)")
    inp.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    _add_generator_run(inp, progress=False)
    inp.set_defaults(func=cmd_inpaint)

    plot = sub.add_parser("plot", help="draw a run's losses and metrics vs step (RUN/curves.png)",
                          description="Read RUN/log.jsonl and write the losses (D, G, penalty) and, when the run "
                                      "evaluated (--eval-every), its metrics against the step, as a PNG. Needs "
                                      "matplotlib (pip install 'fastgan[plot]').")
    plot.add_argument("run", metavar="RUN", help="a fastgan train output folder (holding log.jsonl)")
    plot.add_argument("--out", default=None, help="the PNG to write (default: RUN/curves.png), atomically")
    plot.set_defaults(func=cmd_plot)

    aug = sub.add_parser("augment-eval", help="does generated data help a classifier with few labels? (conditional "
                                              "checkpoints of the embedded shapes)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Train a small classifier on K real labelled shapes per class, and on the same K "
                                     "plus M generated per class (a conditional checkpoint), over several seeds; "
                                     "print the held-out real test accuracy of both (mean ± std) as a table.")
    _add_checkpoint(aug)
    aug.add_argument("--k", type=_int_list, default=[10], help="real labelled images per class (comma-separated: "
                                                               "several K)")
    aug.add_argument("--m", type=int, default=100, help="generated images per class added to the real ones")
    aug.add_argument("--seeds", type=int, default=5, help="repetitions (real subset, generated set, classifier init)")
    aug.add_argument("--steps", type=int, default=300, help="classifier training steps (the same for every arm)")
    aug.add_argument("--batch-size", type=int, default=64, help="classifier minibatch size")
    aug.add_argument("--n-test", type=int, default=2048, help="held-out real test images")
    aug.add_argument("--truncation", type=float, default=1.0, metavar="PSI", help="as fastgan generate --truncation")
    aug.add_argument("--generated-only", action="store_true", help="also train on the M generated images alone")
    aug.add_argument("--json", default=None, metavar="OUT", help="also write the result document here (atomically)")
    _add_generator_run(aug)
    aug.set_defaults(func=cmd_augment_eval)

    info = sub.add_parser("info", help="versions, devices, NVML and the backend that would run")
    info.add_argument("--no-probe", action="store_true", help="skip the Triton-interpreter check (a subprocess)")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
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
        rc = args.func(args)
    except CliError as exc:
        print(f"fastgan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        rc = 130
    if argv is None and rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        # the program stopped on a signal: a repeated Ctrl-C while it exits must not turn the exit
        # status into a death by signal (with shutdown tracebacks)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return rc


if __name__ == "__main__":
    sys.exit(main())
