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
from ..data import load_dataset, make_loader
from ..models import build_dcgan
from ..profile import ResourceMonitor
from . import distributed as dist_util
from . import graphs as graph_util
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig

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


@torch.no_grad()
def ema_update_(ema: torch.nn.Module, model: torch.nn.Module, decay) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) copied.

    ``decay`` is a float or a 0-d tensor on the parameters' device (a tensor lets a CUDA graph
    replay the update with a decay that changes between steps)."""
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    if isinstance(decay, torch.Tensor):
        diff = torch._foreach_sub(m_params, e_params)
        torch._foreach_mul_(diff, 1.0 - decay)
        torch._foreach_add_(e_params, diff)
    else:
        torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay for G step ``step`` (0-based): min(decay, (1 + step) / (10 + step)).

    Ramping up lets the average follow G early on; a fixed 0.999 would keep G_ema within a
    few hundred steps of its random initialisation, and early sample grids would show nothing."""
    return min(decay, (1.0 + step) / (10.0 + step))


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
        fused_adam = {"fused": True} if self.device.type == "cuda" else {}
        self._lr_g = self._lr_d = None  # tensor learning rates of the graphed optimizers
        if use_graphs:
            # capturable Adam (fused is capture-safe with it) and a tensor lr: set_lr needs no recapture
            self._lr_g = torch.tensor(cfg.lr_g, dtype=torch.float32, device=self.device)
            self._lr_d = torch.tensor(cfg.lr_d, dtype=torch.float32, device=self.device)
            fused_adam = {"fused": True, "capturable": True}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=self._lr_g if use_graphs else cfg.lr_g,
                                      betas=cfg.betas, **fused_adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=self._lr_d if use_graphs else cfg.lr_d,
                                      betas=cfg.betas, **fused_adam)
        for opt in (self.opt_g, self.opt_d):
            if use_graphs:  # the warm-up steps run uncaptured by design: no "capturable=True uncaptured" warning
                opt._warned_capturable_if_run_uncaptured = True
        self.noise = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + 1 + self.dist.rank)
        # graph mode: None when eager; static tensors live outside the graphs' memory pool
        self.graphs = graph_util.StepGraphs(self.device, (self.noise,), before_capture=self._check_capturable) \
            if use_graphs else None
        self._static_real = None
        self._graph_n = None
        self._stats_buf = torch.zeros(len(D_STATS) + len(G_STATS), device=self.device) if use_graphs else None
        self._ema_decay = torch.zeros((), device=self.device)  # filled before every G step
        self._last_stats_vec = None
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

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "noise": self.noise.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
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
            return
        for opt, key, lr in ((self.opt_g, "opt_g", self._lr_g), (self.opt_d, "opt_d", self._lr_d)):
            if opt.state:  # the graphs may hold these tensors: copy into them
                graph_util.load_optimizer_state_inplace_(opt, state[key])
            else:
                opt.load_state_dict(state[key])
                graph_util.make_optimizer_capturable_(opt, lr)

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
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["noise"].numel() == self.noise.get_state().numel():
            self.noise.set_state(state["rng"]["noise"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def save(self, path: str | None = None) -> str | None:
        if not self.dist.is_main:
            return None
        path = path or os.path.join(self.cfg.out, LATEST)
        save_checkpoint(self.state_dict(), path)
        return path

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
            if real_logits is None:
                real_logits = self.D(real)
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

    def d_step(self, real: torch.Tensor) -> dict:
        """One discriminator update; returns detached scalars (no host sync)."""
        if self.graphs is not None:
            self._graph_d(real)
            return dict(zip(D_STATS, self._stats_buf[:len(D_STATS)].clone().unbind()))
        stats = self._d_update(real, self._r1_due())
        self.d_steps += 1
        return stats

    def g_step(self, n: int) -> dict:
        if self.graphs is not None:
            self._graph_g(n)
            return dict(zip(G_STATS, self._stats_buf[len(D_STATS):].clone().unbind()))
        self._ema_decay.fill_(ema_decay_at(self.step, self.cfg.ema_decay))
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
            for real in reals:
                self._graph_d(real)
            self._graph_g(reals[0].shape[0])
            vec = self._stats_buf.clone()
            self._last_stats_vec = vec
            self.step += 1
            return dict(zip(D_STATS + G_STATS, vec.unbind()))
        for real in reals:
            stats = self.d_step(self.to_device(real))
        stats.update(self.g_step(reals[0].shape[0]))
        self.step += 1
        return stats

    # ------------------------------------------------------------------ CUDA graphs

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
        only). Always False for eager steps (``self.graphs is None``). Each kind is captured on
        its ``graphs.WARMUP_STEPS + 1``-th use: with lazy R1 every k D steps that takes about
        ``k * (WARMUP_STEPS + 1)`` D steps."""
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

    def _check_lr(self) -> None:
        for opt, lr, name in ((self.opt_g, self._lr_g, "opt_g"), (self.opt_d, self._lr_d, "opt_d")):
            if opt.param_groups[0]["lr"] is not lr:
                raise RuntimeError(f"{name}.param_groups[0]['lr'] was replaced, but the captured CUDA graphs read "
                                   "the original tensor; change learning rates with Trainer.set_lr (in place)")

    def _check_capturable(self) -> None:
        """Called right before each capture: hooks added after construction are an error."""
        why = graph_util.graph_blocker(self.device, self.dist.world_size, {"G": self.G, "D": self.D})
        if why:
            raise graph_util.CaptureError(why.replace("; running eager steps", "") +
                                          "; cannot capture this step (remove the cause or use cuda_graphs=False)")
        self._check_lr()

    def _copy_real(self, real: torch.Tensor) -> None:
        """Copy a real batch into the static input buffer that the D graphs read."""
        if not isinstance(real, torch.Tensor):
            raise TypeError(f"a real batch must be a torch.Tensor, got {type(real).__name__}")
        if real.device.type != "cpu" and (real.device.type != self.device.type or
                                          self.device.index not in (None, real.device.index)):
            raise ValueError(f"cuda_graphs: real batch on {real.device}; expected the CPU or {self.device}")
        static = self._static_real
        if static is None:
            if not real.is_floating_point():
                raise TypeError(f"a real batch must be floating point, got {real.dtype}")
            # the layout to_device gives the eager steps, so that both run the same kernels
            layout = torch.channels_last if self.device.type == "cuda" and real.dim() == 4 else torch.contiguous_format
            static = self._static_real = torch.empty(real.shape, dtype=real.dtype, device=self.device,
                                                     memory_format=layout)
        elif real.shape != static.shape:
            raise ValueError(f"cuda_graphs: real batch of shape {tuple(real.shape)} differs from the captured "
                             f"shape {tuple(static.shape)}; CUDA graphs replay fixed shapes (the trainer's "
                             "sampler drops incomplete batches: pass full batches of batch_size)")
        elif real.dtype != static.dtype:
            raise TypeError(f"cuda_graphs: real batch of dtype {real.dtype} differs from the captured dtype "
                            f"{static.dtype}")
        static.copy_(real, non_blocking=True)

    def _graph_d(self, real: torch.Tensor) -> None:
        """One D step in graph mode: copy in, replay the D or D+R1 graph; stats land in _stats_buf."""
        self._check_lr()
        self._copy_real(real)
        r1 = self._r1_due()
        buf = self._stats_buf[:len(D_STATS)]

        def d_graph_step():
            stats = self._d_update(self._static_real, r1, set_to_none=False)
            buf.copy_(torch.stack([stats[k].float() for k in D_STATS]))

        self.graphs.run("d_r1" if r1 else "d", d_graph_step)
        self.d_steps += 1

    def _graph_g(self, n: int) -> None:
        if self._graph_n is None:
            self._graph_n = n
        elif n != self._graph_n:
            raise ValueError(f"cuda_graphs: G step batch {n} differs from the captured batch {self._graph_n}")
        buf = self._stats_buf[len(D_STATS):]
        self._ema_decay.fill_(ema_decay_at(self.step, self.cfg.ema_decay))  # outside the graph

        def g_graph_step():
            stats = self._g_update(self._graph_n, set_to_none=False)
            buf.copy_(torch.stack([stats[k].float() for k in G_STATS]))

        self.graphs.run("g", g_graph_step)

    # ------------------------------------------------------------------ loop

    def _tensorboard_writer(self):
        if not self.cfg.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(self.cfg.out, "tb"))

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def sample(self, path: str) -> None:
        with torch.no_grad():
            z = self.fixed_z.to(self.device)
            images = self.G_ema(z)
        save_image_grid(images, path, nrow=8)

    def train(self) -> dict:
        """Run until ``cfg.steps`` G steps are done (or SIGINT: checkpoint, then return)."""
        cfg = self.cfg
        main = self.dist.is_main
        if main:
            os.makedirs(cfg.out, exist_ok=True)
            with open(os.path.join(cfg.out, "config.json"), "w") as f:
                json.dump(cfg.to_dict(), f, indent=1)
        start_step = self.step
        d_batches = (cfg.steps - start_step) * cfg.n_critic
        loader = make_loader(self.dataset, cfg.batch_size, cfg.seed, start_step * cfg.n_critic,
                             cfg.steps * cfg.n_critic, self.device, cfg.workers, self.dist.rank, self.dist.world_size)
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_signal) if in_main_thread else None
        bar = None
        if main and cfg.progress and d_batches > 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start_step, desc="fastgan train", unit="step", dynamic_ncols=True,
                       file=sys.stderr)
        log_path = os.path.join(cfg.out, "log.jsonl")
        tb = self._tensorboard_writer() if main else None
        t_start = time.perf_counter()
        clock = {"t_last": t_start, "step_last": start_step}
        status = "completed"
        stats = {}
        data = iter(loader)
        # graph mode: losses go to pinned host memory and are read a few log intervals late (no sync per step)
        pending = graph_util.AsyncStats() if self.graphs is not None else None

        def emit(values: dict, step: int, now: float, device_step_ms: float | None = None) -> None:
            rec = dict(values)
            dt = (now - clock["t_last"]) / max(1, step - clock["step_last"])
            if device_step_ms is not None:
                dt = device_step_ms / 1e3
            rec.update(step=step, step_ms=dt * 1e3,
                       images_per_s=cfg.batch_size * cfg.n_critic / dt if dt > 0 else None,
                       time_s=now - t_start)
            clock["t_last"], clock["step_last"] = now, step
            self.history.append(rec)
            if main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if tb is not None:
                    for k, v in rec.items():
                        if k != "step" and isinstance(v, (int, float)):
                            tb.add_scalar(k, v, step)
                if bar is not None:
                    bar.set_postfix(d=f"{rec['d_loss']:.3f}", g=f"{rec['g_loss']:.3f}",
                                    img_s=f"{rec['images_per_s']:.0f}")

        def drain(wait_all: bool = False) -> None:
            if pending is not None:
                for step, values, step_ms, t_host in pending.ready(wait_all):
                    emit(dict(zip(D_STATS + G_STATS, values)), step, t_host, step_ms)

        # time, energy (NVML), memory and per-step statistics of this run: OUT/resources.json
        monitor = ResourceMonitor() if main else None
        if monitor is not None:
            monitor.__enter__()
        try:
            while self.step < cfg.steps:
                stats = self.train_step([next(data)[0] for _ in range(cfg.n_critic)])
                if monitor is not None:
                    monitor.step(cfg.batch_size * cfg.n_critic)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    if pending is not None:
                        pending.push(self.step, self._last_stats_vec)
                        drain()
                    else:
                        now = time.perf_counter()
                        emit({k: float(v) for k, v in stats.items()}, self.step, now)  # host sync every log_every
                if bar is not None:
                    bar.update(1)
                if main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    self.sample(os.path.join(cfg.out, "samples", f"step_{self.step:07d}.png"))
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    drain(wait_all=True)
                    self.save()
                if self._stop_signal is not None:
                    status = "interrupted"
                    drain(wait_all=True)
                    self.save()
                    break
            drain(wait_all=True)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
            if monitor is not None:
                monitor.__exit__(None, None, None)
        elapsed = time.perf_counter() - t_start
        done = self.step - start_step
        last = self.history[-1] if self.history else {}
        summary = {"status": status, "step": self.step, "steps_run": done, "elapsed_s": elapsed,
                   "images_per_s": done * cfg.batch_size * cfg.n_critic / elapsed if elapsed > 0 else None,
                   "d_loss": last.get("d_loss"), "g_loss": last.get("g_loss"), "penalty": last.get("penalty"),
                   "checkpoint": os.path.join(cfg.out, LATEST),
                   "samples": os.path.join(cfg.out, "samples"), "device": str(self.device),
                   "backend": _backend_name(self.device, cfg.fused)}
        if monitor is not None:
            res = monitor.report()
            summary.update(energy_j=res["energy_j"], joules_per_image=res["joules_per_image"],
                           energy_source=res["energy_source"], resources=monitor.summary(),
                           resources_file=monitor.to_json(os.path.join(cfg.out, "resources.json")))
        if main:
            atomic_write_json(os.path.join(cfg.out, "summary.json"), summary)
        return summary


def _backend_name(device: torch.device, fused: bool) -> str:
    if not fused:
        return "plain torch modules"
    from .. import backend

    return backend.backend_for_device(device)
