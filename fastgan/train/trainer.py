"""The GAN training loop: alternate D and G updates until G's samples match the data.

Each G step: ``n_critic`` D steps, then one G step.
  D step: z ~ N(0, I); fake = G(z) (no grad); loss = d_loss(D(real), D(fake)) [+ penalty];
          R1 runs every ``reg_interval``-th D step with gamma * interval (lazy regularisation)
          and reuses its real logits for the loss, so D runs once on the real batch.
  G step: loss = g_loss(D(G(z))); D's parameters are frozen so no D gradients are computed.
  EMA:    G_ema <- d * G_ema + (1 - d) * G after every G step, d = min(ema_decay, (1+t)/(10+t))
          ramping up with the step t; samples come from G_ema.
All randomness comes from seeded generators saved in checkpoints (the noise generator, the
global torch generator used by the WGAN-GP interpolation, the step-indexed data order), so a
resumed CPU run reproduces an uninterrupted one exactly.

With ``cuda_graphs=True`` (CUDA, one process) the same step bodies are captured in CUDA graphs
(see :mod:`fastgan.train.graphs`): the D step, the D step with lazy R1 (a third graph, not a
branch) and the G step with the EMA update; the first ``graphs.WARMUP_STEPS`` calls of each
run eagerly on a side stream. The noise is drawn inside the step in both modes, from the same
generators, so the graphed run consumes the same random numbers as the eager one. Elsewhere
(CPU, data parallel, hooks) it warns and runs eager steps.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings

import torch

from .. import functional as FG
from ..atomic import atomic_write, atomic_write_json
from ..backend import backend_for_device, use_backend
from ..data import load_dataset, make_loader
from ..models import build_dcgan
from ..monitor import ResourceMonitor
from . import distributed as dist_util
from . import graphs as graph_util
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .ema import ema_decay_at, ema_update_

LATEST = "checkpoint.pt"
D_STATS = ("d_loss", "penalty", "d_real", "d_fake", "d_acc")
G_STATS = ("g_loss",)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {name!r}")
    return device


def save_image_grid(images: torch.Tensor, path: str, nrow: int | None = None) -> None:
    """Write images in [-1, 1] ([N, C, H, W]) as one PNG grid, atomically."""
    from PIL import Image

    images = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = torch.full((c, ncol * (h + 2) + 2, nrow * (w + 2) + 2), -1.0)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = images[i]
    arr = ((grid + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    if c == 1:
        arr = arr[:, :, 0]
    atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"), binary=True)


class Trainer:
    """Holds G, D, G_ema, the optimizers and the data; ``train()`` runs to ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None, log=print):
        self.log = log
        state = None
        if resume is not None:
            state = load_checkpoint(resume)
            cfg = self._merge_resumed_config(cfg, state, resume)
        self.cfg = cfg
        if cfg.tensorboard:
            try:
                importlib.import_module("torch.utils.tensorboard")
            except ImportError:
                raise ValueError("tensorboard=True (--tensorboard) needs the tensorboard package: "
                                 "pip install tensorboard") from None
        self.device = resolve_device(cfg.device)
        self.dist = dist_util.init_from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.amp = (self.device.type == "cuda") if cfg.amp is None else bool(cfg.amp)
        if self.amp and self.device.type != "cuda":
            raise ValueError("bf16 autocast (amp) is for CUDA devices; use amp=False on the CPU")

        torch.manual_seed(cfg.seed + self.dist.rank)
        self.dataset = load_dataset(cfg.data, cfg.resolution, cfg.n_embedded, cfg.seed)
        if cfg.batch_size > len(self.dataset):
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the dataset ({len(self.dataset)} images)")
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.G, self.D = build_dcgan(cfg.resolution, cfg.z_dim, cfg.g_width, cfg.d_width, fused=cfg.fused)
        self.G.to(self.device)
        self.D.to(self.device)
        if self.device.type == "cuda":
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        use_graphs = False
        if cfg.cuda_graphs:
            why = graph_util.graph_blocker(self.device, self.dist.world_size, {"G": self.G, "D": self.D})
            if why:
                warnings.warn(why, RuntimeWarning, stacklevel=2)
            use_graphs = why is None
        self.opt_g = self._adam(self.G, cfg.lr_g, use_graphs)
        self.opt_d = self._adam(self.D, cfg.lr_d, use_graphs)
        self.noise = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + 1 + self.dist.rank)
        self._ema_decay = torch.zeros((), device=self.device)  # filled before every G step
        # graph mode (None: eager steps): the captured steps and their static buffers
        self.graphs = graph_util.TrainerGraphs(self, (D_STATS, G_STATS)) if use_graphs else None
        self.fixed_z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 12345))
        self.step = 0            # completed G steps
        self.d_steps = 0         # completed D steps (drives the lazy R1 schedule)
        self.history: list[dict] = []
        torch.manual_seed(cfg.seed * 31 + self.dist.rank)
        if state is not None:
            self._load_state(state, resume)
        dist_util.broadcast_module_(self.G, self.dist)
        dist_util.broadcast_module_(self.D, self.dist)
        dist_util.broadcast_module_(self.G_ema, self.dist)
        self._stop_signal = None

    def _adam(self, model: torch.nn.Module, lr: float, graphed: bool) -> torch.optim.Optimizer:
        """Adam, fused (one multi-tensor kernel per step). Graphed: capturable, with a tensor lr that
        set_lr fills in place."""
        if not graphed:
            return torch.optim.Adam(model.parameters(), lr=lr, betas=self.cfg.betas, fused=True)
        opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(lr, dtype=torch.float32, device=self.device),
                               betas=self.cfg.betas, fused=True, capturable=True)
        opt._warned_capturable_if_run_uncaptured = True  # the warm-up steps run uncaptured by design
        return opt

    # ------------------------------------------------------------------ checkpoint state

    def _merge_resumed_config(self, cfg: TrainConfig, state: dict, path: str) -> TrainConfig:
        """Model and objective come from the checkpoint; run options (steps, out, ...) from ``cfg``."""
        try:
            saved = TrainConfig.from_dict(state["config"])
        except Exception as exc:
            raise CheckpointError(f"{path}: incompatible checkpoint config ({exc})") from None
        run_fields = ("steps", "out", "sample_every", "ckpt_every", "log_every", "progress", "device", "workers",
                      "data", "cuda_graphs", "tensorboard")
        merged = saved.to_dict()
        for name in run_fields:
            merged[name] = getattr(cfg, name)
        return TrainConfig.from_dict(merged)

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "noise": self.noise.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def state_dict(self, rng_per_rank: list | None = None) -> dict:
        """Everything a resume needs. Data parallel: ``rng_per_rank`` (every rank's ``_rng_state()``,
        gathered by ``save``) is stored too, so that each rank resumes its own random streams."""
        rng = self._rng_state()
        if rng_per_rank is not None:
            rng["per_rank"] = rng_per_rank
        opt_g, opt_d = self.opt_g.state_dict(), self.opt_d.state_dict()
        if self.graphs is not None:  # float lr, capturable=False: resumable by an eager run, CPU included
            opt_g, opt_d = graph_util.portable_optimizer_state(opt_g), graph_util.portable_optimizer_state(opt_d)
        return {"config": self.cfg.to_dict(), "step": self.step, "d_steps": self.d_steps,
                "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_g": opt_g, "opt_d": opt_d, "rng": rng, "fixed_z": self.fixed_z}

    def load_state_dict(self, state: dict) -> None:
        """Load a ``state_dict()`` (or a checkpoint) into this trainer. Every tensor is copied in
        place (modules, optimizer state, generators), so captured CUDA graphs stay valid."""
        self._load_state(state, "state_dict")

    def _load_optimizers(self, state: dict) -> None:
        if self.graphs is None:
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        else:
            self.graphs.load_optimizers(state["opt_g"], state["opt_d"])

    def _load_state(self, state: dict, path: str) -> None:
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            self.G_ema.load_state_dict(state["G_ema"])
            self._load_optimizers(state)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise CheckpointError(f"{path}: checkpoint does not fit these models ({first})") from None
        self.step, self.d_steps = int(state["step"]), int(state.get("d_steps", 0))
        self.fixed_z = state.get("fixed_z", self.fixed_z)
        rng = state["rng"]
        per_rank = rng.get("per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            rng = per_rank[self.dist.rank]  # this rank's own streams (a data-parallel checkpoint)
        elif self.dist.enabled:  # rank 0's streams would give every rank the same noise: derive them
            warnings.warn(f"{path}: no random state for {self.dist.world_size} ranks in this checkpoint; each rank "
                          "reseeds from (seed, rank, step), so this resume is not bitwise the uninterrupted run",
                          RuntimeWarning, stacklevel=3)
            derived = (self.cfg.seed * 1000003 + self.dist.rank) * 1000003 + self.step
            torch.manual_seed(derived)
            self.noise.manual_seed(derived + 1)
            return
        torch.set_rng_state(rng["torch"])
        if rng["noise"].numel() == self.noise.get_state().numel():
            self.noise.set_state(rng["noise"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def save(self, path: str | None = None) -> str | None:
        """Write the checkpoint (rank 0). Every rank must call it: the ranks' random states are
        gathered first, so that a resume gives each rank its own streams back."""
        per_rank = dist_util.gather_objects(self._rng_state(), self.dist) if self.dist.enabled else None
        path = path or os.path.join(self.cfg.out, LATEST)
        if self.dist.is_main:
            save_checkpoint(self.state_dict(per_rank), path)
        dist_util.barrier(self.dist)  # the file exists for every rank once save returns
        return path if self.dist.is_main else None

    # ------------------------------------------------------------------ steps

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda")

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, device=self.device, generator=self.noise)

    def _r1_due(self) -> bool:
        """Lazy R1: this D step carries the penalty (every ``reg_interval``-th D step)."""
        return self.cfg.penalty == "r1" and self.d_steps % self.cfg.reg_interval == 0

    def _d_update(self, real: torch.Tensor, r1: bool, set_to_none: bool = True) -> dict:
        """The D step body (eager, or captured in graph mode with ``set_to_none=False``)."""
        with self._ops():
            cfg = self.cfg
            n = real.shape[0]
            self.D.requires_grad_(True)
            with torch.no_grad(), self._autocast():
                fake = self.G(self._z(n))
            fake = fake.to(real.dtype)
            penalty = torch.zeros((), device=self.device)
            real_logits = None
            with self._autocast():
                if r1:
                    gamma = FG.lazy_regularization(cfg.effective_gamma, cfg.reg_interval)
                    penalty, real_logits = FG.gradient_penalty(self.D, real, kind="r1", gamma=gamma, return_logits=True)
                if real_logits is None and getattr(self.D, "per_sample", False):
                    # each logit depends on its own sample only: one D call for both batches
                    real_logits, fake_logits = self.D(torch.cat([real, fake])).split([n, fake.shape[0]])
                else:
                    real_logits = self.D(real) if real_logits is None else real_logits
                    fake_logits = self.D(fake)
                if cfg.penalty == "wgan-gp":
                    penalty = FG.gradient_penalty(self.D, real, fake, kind="wgan-gp", gamma=cfg.effective_gamma)
            loss = FG.d_loss(real_logits.float(), fake_logits.float(), kind=cfg.loss)
            self.opt_d.zero_grad(set_to_none=set_to_none)
            (loss + penalty).backward()
            dist_util.average_gradients_(self.D.parameters(), self.dist)
            self.opt_d.step()
            with torch.no_grad():
                acc = 0.5 * ((real_logits.float() > 0).float().mean() + (fake_logits.float() < 0).float().mean())
            return {"d_loss": loss.detach(), "penalty": penalty.detach(), "d_real": real_logits.detach().float().mean(),
                    "d_fake": fake_logits.detach().float().mean(), "d_acc": acc}

    def _g_update(self, n: int, set_to_none: bool = True) -> dict:
        """The G step body, EMA update included."""
        with self._ops():
            self.D.requires_grad_(False)  # no D weight gradients in the G step
            with self._autocast():
                fake_logits = self.D(self.G(self._z(n)))
            loss = FG.g_loss(fake_logits.float(), kind=self.cfg.loss)
            self.opt_g.zero_grad(set_to_none=set_to_none)
            loss.backward()
            dist_util.average_gradients_(self.G.parameters(), self.dist)
            self.opt_g.step()
            dist_util.broadcast_buffers_(self.G, self.dist)
            self.D.requires_grad_(True)
            ema_update_(self.G_ema, self.G, self._ema_decay)
            return {"g_loss": loss.detach()}

    def _ops(self):
        """fused=False is the plain baseline: torch modules *and* the plain-torch losses and
        penalties (fastgan's eager backend is their reference lines)."""
        return contextlib.nullcontext() if self.cfg.fused else use_backend("eager")

    def d_step(self, real: torch.Tensor) -> dict:
        """One discriminator update; returns detached scalars (no host sync)."""
        if self.graphs is not None:
            return self.graphs.d_step(real)
        stats = self._d_update(real, self._r1_due())
        self.d_steps += 1
        return stats

    def g_step(self, n: int) -> dict:
        self._ema_decay.fill_(ema_decay_at(self.step, self.cfg.ema_decay))  # outside any graph
        if self.graphs is not None:
            return self.graphs.g_step(n)
        return self._g_update(n)

    def to_device(self, real: torch.Tensor) -> torch.Tensor:
        real = real.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    def train_step(self, reals: list[torch.Tensor]) -> dict:
        """One iteration: ``n_critic`` D steps (one real batch each, this rank's share) and one
        G step. Returns detached 0-d tensors (no host sync). With CUDA graphs they are views of
        one fresh vector (not the graphs' static memory), so they may be kept."""
        if len(reals) != self.cfg.n_critic:
            raise ValueError(f"train_step needs n_critic = {self.cfg.n_critic} real batches, got {len(reals)}")
        if self.graphs is not None:
            self._ema_decay.fill_(ema_decay_at(self.step, self.cfg.ema_decay))
            stats = self.graphs.train_step(reals)
        else:
            for real in reals:
                stats = self.d_step(self.to_device(real))
            stats.update(self.g_step(reals[0].shape[0]))
        self.step += 1
        return stats

    @property
    def graph_kinds(self) -> tuple[str, ...]:
        """The captured steps this configuration uses: "d" (plain D step), "d_r1" (D step with
        lazy R1), "g" (G step + EMA)."""
        cfg = self.cfg
        if cfg.penalty != "r1":
            return ("d", "g")
        return ("d_r1", "g") if cfg.reg_interval == 1 else ("d", "d_r1", "g")

    @property
    def graphs_ready(self) -> bool:
        """True once every graph this run uses is captured (every later train_step is replays
        only); always False for eager steps. Each kind is captured on its ``WARMUP_STEPS + 1``-th
        use: with lazy R1 every k D steps that takes about ``k * (WARMUP_STEPS + 1)`` D steps."""
        return self.graphs is not None and all(k in self.graphs.captured for k in self.graph_kinds)

    def set_lr(self, lr_g: float | None = None, lr_d: float | None = None) -> None:
        """Change the learning rates (e.g. a schedule). With CUDA graphs the tensor learning rate
        the graphs read is filled in place (no recapture); never replace ``param_group["lr"]``."""
        for lr, opt, name in ((lr_g, self.opt_g, "lr_g"), (lr_d, self.opt_d, "lr_d")):
            if lr is None:
                continue
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise ValueError(f"{name} must be a number > 0, got {lr!r}")
            for group in opt.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(float(lr))
                else:
                    group["lr"] = float(lr)

    # ------------------------------------------------------------------ loop

    def sample(self, path: str) -> None:
        with torch.no_grad(), self._ops():
            images = self.G_ema(self.fixed_z.to(self.device))
        save_image_grid(images, path, nrow=8)

    def train(self) -> dict:
        """Run until ``cfg.steps`` G steps are done (or SIGINT: checkpoint, then return)."""
        cfg, main = self.cfg, self.dist.is_main
        if main:
            os.makedirs(cfg.out, exist_ok=True)
            atomic_write_json(os.path.join(cfg.out, "config.json"), cfg.to_dict())
        start_step = self.step
        loader = make_loader(self.dataset, cfg.batch_size, cfg.seed, start_step * cfg.n_critic,
                             cfg.steps * cfg.n_critic, self.device, cfg.workers, self.dist.rank, self.dist.world_size)
        data = iter(loader)
        monitor = ResourceMonitor() if main else None  # time, energy, memory: OUT/resources.json
        status = "completed"
        with _stop_on_sigint() as stop, RunLog(self, start_step) as log, monitor or contextlib.nullcontext():
            while self.step < cfg.steps:
                stats = self.train_step([next(data)[0] for _ in range(cfg.n_critic)])
                last = self.step == cfg.steps
                if monitor is not None:
                    monitor.step(cfg.batch_size * cfg.n_critic)
                log.step(self.step, stats, due=self.step % cfg.log_every == 0 or last)
                if main and (self.step % cfg.sample_every == 0 or last):
                    self.sample(os.path.join(cfg.out, "samples", f"step_{self.step:07d}.png"))
                if self.step % cfg.ckpt_every == 0 or last or stop.signal is not None:
                    log.flush()
                    self.save()
                if stop.signal is not None:
                    status = "interrupted"
                    break
        return self._summary(status, start_step, log, monitor)

    def _summary(self, status: str, start_step: int, log, monitor) -> dict:
        cfg = self.cfg
        elapsed = log.elapsed
        done = self.step - start_step
        last = self.history[-1] if self.history else {}
        summary = {"status": status, "step": self.step, "steps_run": done, "elapsed_s": elapsed,
                   "images_per_s": done * cfg.batch_size * cfg.n_critic / elapsed if elapsed else None,
                   "d_loss": last.get("d_loss"), "g_loss": last.get("g_loss"), "penalty": last.get("penalty"),
                   "checkpoint": os.path.join(cfg.out, LATEST),
                   "samples": os.path.join(cfg.out, "samples"), "device": str(self.device),
                   "backend": "plain torch" if not cfg.fused else backend_for_device(self.device)}
        if monitor is not None:
            res = monitor.report()
            summary.update(energy_j=res["energy_j"], joules_per_image=res["joules_per_image"],
                           energy_source=res["energy_source"], resources=monitor.summary(),
                           resources_file=monitor.to_json(os.path.join(cfg.out, "resources.json")))
            atomic_write_json(os.path.join(cfg.out, "summary.json"), summary)
        return summary


class _stop_on_sigint:
    """Within the block, SIGINT sets ``.signal`` instead of raising (main thread only)."""

    def __init__(self):
        self.signal, self._previous = None, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class RunLog:
    """The training log: the trainer's history on every rank; on rank 0 also ``log.jsonl``,
    TensorBoard and the progress bar.

    Each record is the step's statistics plus step time, images/s and wall time. With CUDA graphs
    the statistics arrive a few steps late (``graphs.AsyncStats``: no host sync per step) and the
    step time is the device time between two logged steps."""

    def __init__(self, trainer: "Trainer", start_step: int):
        cfg = trainer.cfg
        self.trainer, self.cfg = trainer, cfg
        self.path = os.path.join(cfg.out, "log.jsonl")
        self.pending = graph_util.AsyncStats() if trainer.graphs is not None else None
        self.main = trainer.dist.is_main
        self.bar = self.tb = None
        if self.main and cfg.progress and cfg.steps > start_step:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.steps, initial=start_step, desc="fastgan train", unit="step",
                            dynamic_ncols=True, file=sys.stderr)
        if self.main and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(cfg.out, "tb"))
        self.t_start = self.t_last = time.perf_counter()
        self.step_last = start_step

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.flush()
        self.elapsed = time.perf_counter() - self.t_start
        for sink in (self.bar, self.tb):
            if sink is not None:
                sink.close()
        return False

    def step(self, step: int, stats: dict, due: bool) -> None:
        """After each step: advance the progress bar; record the statistics when ``due``."""
        if self.bar is not None:
            self.bar.update(1)
        if not due:
            return
        if self.pending is None:
            self._emit({k: float(v) for k, v in stats.items()}, step, time.perf_counter())  # host sync
        else:
            self.pending.push(step, self.trainer.graphs.last_stats)
            self._drain()

    def flush(self) -> None:
        self._drain(wait_all=True)

    def _drain(self, wait_all: bool = False) -> None:
        if self.pending is not None:
            for step, values, step_ms, t_host in self.pending.ready(wait_all):
                self._emit(dict(zip(D_STATS + G_STATS, values)), step, t_host, step_ms)

    def _emit(self, values: dict, step: int, now: float, device_step_ms: float | None = None) -> None:
        cfg = self.cfg
        dt = (now - self.t_last) / max(1, step - self.step_last)
        if device_step_ms is not None:
            dt = device_step_ms / 1e3
        rec = dict(values, step=step, step_ms=dt * 1e3,
                   images_per_s=cfg.batch_size * cfg.n_critic / dt if dt > 0 else None, time_s=now - self.t_start)
        self.t_last, self.step_last = now, step
        self.trainer.history.append(rec)
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.bar is not None:
            self.bar.set_postfix(d=f"{rec['d_loss']:.3f}", g=f"{rec['g_loss']:.3f}",
                                 img_s=f"{rec['images_per_s']:.0f}")


