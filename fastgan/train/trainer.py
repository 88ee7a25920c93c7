"""The GAN training loop: alternate D and G updates until G's samples match the data.

Each G step: ``n_critic`` D steps, then one G step.
  D step: z ~ N(0, I); fake = G(z) (no grad); loss = d_loss(D(real), D(fake)) [+ penalty];
          R1 runs every ``reg_interval``-th D step with gamma * interval (lazy regularisation)
          and reuses its real logits for the loss, so D runs once on the real batch.
  G step: loss = g_loss(D(G(z))); D's parameters are frozen so no D gradients are computed.
  EMA:    G_ema <- decay * G_ema + (1 - decay) * G after every G step; samples come from G_ema.
All randomness comes from seeded generators saved in checkpoints (the noise generator, the
global torch generator used by the WGAN-GP interpolation, the step-indexed data order), so a
resumed CPU run reproduces an uninterrupted one exactly.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import threading
import time

import torch

from .. import functional as FG
from ..data import load_dataset, make_loader
from ..models import build_dcgan
from . import distributed as dist_util
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import MODEL_FIELDS, TrainConfig

LATEST = "checkpoint.pt"


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
def ema_update_(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) copied."""
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


class Trainer:
    """Holds G, D, G_ema, the optimizers and the data; ``train()`` runs to ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None, log=print):
        self.log = log
        state = None
        if resume is not None:
            state = load_checkpoint(resume)
            cfg = self._merge_resumed_config(cfg, state, resume)
        self.cfg = cfg
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
        fused_adam = {"fused": True} if self.device.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas, **fused_adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas, **fused_adam)
        self.noise = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + 1 + self.dist.rank)
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
                      "data")
        merged = saved.to_dict()
        for name in run_fields:
            merged[name] = getattr(cfg, name)
        return TrainConfig.from_dict(merged)

    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "noise": self.noise.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"config": self.cfg.to_dict(), "step": self.step, "d_steps": self.d_steps,
                "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "rng": rng,
                "fixed_z": self.fixed_z}

    def _load_state(self, state: dict, path: str) -> None:
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            self.G_ema.load_state_dict(state["G_ema"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
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

    def d_step(self, real: torch.Tensor) -> dict:
        """One discriminator update; returns detached scalars (no host sync)."""
        cfg = self.cfg
        n = real.shape[0]
        self.D.requires_grad_(True)
        with torch.no_grad(), self._autocast():
            fake = self.G(self._z(n))
        fake = fake.to(real.dtype)
        penalty = torch.zeros((), device=self.device)
        real_logits = None
        with self._autocast():
            lazy_r1 = cfg.penalty == "r1" and self.d_steps % cfg.reg_interval == 0
            if lazy_r1:
                gamma = FG.lazy_regularization(cfg.effective_gamma, cfg.reg_interval)
                penalty, real_logits = FG.gradient_penalty(self.D, real, kind="r1", gamma=gamma, return_logits=True)
            if real_logits is None:
                real_logits = self.D(real)
            fake_logits = self.D(fake)
            if cfg.penalty == "wgan-gp":
                penalty = FG.gradient_penalty(self.D, real, fake, kind="wgan-gp", gamma=cfg.effective_gamma)
        loss = FG.d_loss(real_logits.float(), fake_logits.float(), kind=cfg.loss)
        self.opt_d.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        dist_util.average_gradients_(self.D.parameters(), self.dist)
        self.opt_d.step()
        self.d_steps += 1
        with torch.no_grad():
            acc = 0.5 * ((real_logits.float() > 0).float().mean() + (fake_logits.float() < 0).float().mean())
        return {"d_loss": loss.detach(), "penalty": penalty.detach(), "d_real": real_logits.detach().float().mean(),
                "d_fake": fake_logits.detach().float().mean(), "d_acc": acc}

    def g_step(self, n: int) -> dict:
        self.D.requires_grad_(False)  # no D weight gradients in the G step
        with self._autocast():
            fake_logits = self.D(self.G(self._z(n)))
        loss = FG.g_loss(fake_logits.float(), kind=self.cfg.loss)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        dist_util.average_gradients_(self.G.parameters(), self.dist)
        self.opt_g.step()
        dist_util.broadcast_buffers_(self.G, self.dist)
        self.D.requires_grad_(True)
        ema_update_(self.G_ema, self.G, self.cfg.ema_decay)
        return {"g_loss": loss.detach()}

    def to_device(self, real: torch.Tensor) -> torch.Tensor:
        real = real.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    def train_step(self, reals: list[torch.Tensor]) -> dict:
        """One iteration: ``n_critic`` D steps (one real batch each, this rank's share) and one
        G step. Returns detached 0-d tensors (no host sync)."""
        if len(reals) != self.cfg.n_critic:
            raise ValueError(f"train_step needs n_critic = {self.cfg.n_critic} real batches, got {len(reals)}")
        for real in reals:
            stats = self.d_step(self.to_device(real))
        stats.update(self.g_step(reals[0].shape[0]))
        self.step += 1
        return stats

    # ------------------------------------------------------------------ loop

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
        t_start = time.perf_counter()
        t_last, step_last = t_start, start_step
        status = "completed"
        stats = {}
        data = iter(loader)
        try:
            while self.step < cfg.steps:
                stats = self.train_step([next(data)[0] for _ in range(cfg.n_critic)])
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    rec = {k: float(v) for k, v in stats.items()}  # host sync only every log_every steps
                    dt = (now - t_last) / max(1, self.step - step_last)
                    rec.update(step=self.step, step_ms=dt * 1e3,
                               images_per_s=cfg.batch_size * cfg.n_critic / dt if dt > 0 else None,
                               time_s=now - t_start)
                    t_last, step_last = now, self.step
                    self.history.append(rec)
                    if main:
                        with open(log_path, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                        if bar is not None:
                            bar.set_postfix(d=f"{rec['d_loss']:.3f}", g=f"{rec['g_loss']:.3f}",
                                            img_s=f"{rec['images_per_s']:.0f}")
                if bar is not None:
                    bar.update(1)
                if main and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    self.sample(os.path.join(cfg.out, "samples", f"step_{self.step:07d}.png"))
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save()
                if self._stop_signal is not None:
                    status = "interrupted"
                    self.save()
                    break
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - t_start
        done = self.step - start_step
        last = self.history[-1] if self.history else {}
        summary = {"status": status, "step": self.step, "steps_run": done, "elapsed_s": elapsed,
                   "images_per_s": done * cfg.batch_size * cfg.n_critic / elapsed if elapsed > 0 else None,
                   "d_loss": last.get("d_loss"), "g_loss": last.get("g_loss"), "penalty": last.get("penalty"),
                   "checkpoint": os.path.join(cfg.out, LATEST),
                   "samples": os.path.join(cfg.out, "samples"), "device": str(self.device),
                   "backend": _backend_name(self.device, cfg.fused)}
        if main:
            with open(os.path.join(cfg.out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
        return summary


def _backend_name(device: torch.device, fused: bool) -> str:
    if not fused:
        return "plain torch modules"
    from .. import backend

    return backend.backend_for_device(device)
