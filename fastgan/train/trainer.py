"""The GAN training loop: alternate D and G updates until G's samples match the data.

Each G step: ``n_critic`` D steps, then one G step.
  D step: z ~ N(0, I); fake = G(z) (no grad); loss = d_loss(D(real), D(fake)) [+ penalty];
          R1 runs every ``reg_interval``-th D step with gamma * interval (lazy regularisation)
          and reuses its real logits for the loss, so D runs once on the real batch.
  G step: loss = g_loss(D(G(z))); D's parameters are frozen so no D gradients are computed.
  EMA:    G_ema <- d * G_ema + (1 - d) * G after every G step, d = min(ema_decay, (1+t)/(10+t))
          ramping up with the step t; samples come from G_ema.
All randomness comes from seeded generators saved in checkpoints (the noise generator, the
WGAN-GP interpolation's own generator, the step-indexed data order; the DataLoader has its own
seeded generator, so creating its iterator draws nothing from the global one), so a resumed CPU
run reproduces an uninterrupted one exactly.

Class-conditional (``cfg.conditional``): every real batch comes with its labels y; D(real) is
D(real, y_real), the fakes are G(z, y) with y drawn from the training labels (their empirical
distribution, from the noise generator), and D(fake) and G's loss take that y. WGAN-GP's fakes take
the real batch's labels instead, so that each interpolate lies between two images of one class.
Every penalty is the gradient with respect to the image only (the labels are constants). The
class names are stored in the checkpoint, and a resume checks that the data has the same ones.
The sample grid has one row per class (the first 64), the same 8 latents in every row.

``train()`` stops early, every rank at the same step, on SIGINT or SIGTERM to any rank (a
checkpoint, then status "interrupted"), on a non-finite loss or weight (status "diverged": the
checkpoint on disk stays the last finite one) and on an image that does not decode (a
checkpoint, then a DataError). It holds ``out``'s ``FolderLock`` while it runs.

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
import dataclasses
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
from ..atomic import FolderLock, atomic_write, atomic_write_json, remove_stale_temporaries
from ..backend import backend_for_device, use_backend
from ..data import (DataError, Labelled, LoaderBatches, conditional_labels, data_error_line, load_dataset,
                    make_loader, user_dataset)
from ..models import build_dcgan
from ..monitor import ResourceMonitor
from . import distributed as dist_util
from . import graphs as graph_util
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RESOLUTIONS, TrainConfig
from .ema import ema_decay_at, ema_update_

LATEST = "checkpoint.pt"
D_STATS = ("d_loss", "penalty", "d_real", "d_fake", "d_acc")
G_STATS = ("g_loss",)
EVERY_STEP_PENALTIES = ("wgan-gp", "r1+r2")  # computed on every D step (r1 is lazy: every reg_interval-th)
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def resolve_device(name: str) -> torch.device:
    """The device of a config's ``device`` (auto, cpu, cuda, cuda:N), or a ValueError saying why
    this machine cannot run it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def image_format(path: str) -> str:
    """The Pillow format of an image file name, from its extension (.png, .jpg/.jpeg, .webp,
    .bmp), or a ValueError."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_FORMATS:
        raise ValueError(f"{path}: the file name must end in {', '.join(IMAGE_FORMATS)} (the image format)")
    return IMAGE_FORMATS[ext]


def image_grid(images: torch.Tensor, nrow: int | None = None):
    """Images in [-1, 1] ([N, C, H, W]) as one uint8 grid image (numpy, [H, W, C]; [H, W] for C 1),
    ``nrow`` images a row (default: a square), 2 px black borders."""
    images = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = torch.full((c, ncol * (h + 2) + 2, nrow * (w + 2) + 2), -1.0)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = images[i]
    arr = ((grid + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return arr[:, :, 0] if c == 1 else arr


def save_image_grid(images: torch.Tensor, path: str, nrow: int | None = None) -> None:
    """Write images in [-1, 1] ([N, C, H, W]) as one grid (``image_grid``), atomically, in the
    format of the file name's extension (``image_format``)."""
    from PIL import Image

    fmt = image_format(path)
    arr = image_grid(images, nrow)
    options = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda f: Image.fromarray(arr).save(f, format=fmt, **options), binary=True)


class Trainer:
    """Holds G, D, G_ema, the optimizers and the data; ``train()`` runs to ``cfg.steps``.

    ``Trainer(cfg)`` with ``cfg.model == "stylegan2"`` is a :class:`fastgan.train.stylegan2.StyleGAN2Trainer`
    (this loop with StyleGAN2's models, style mixing, path length and EMA half-life)."""

    resolutions = RESOLUTIONS      # the image sizes this trainer's models take
    stat_names = (D_STATS, G_STATS)  # what a D step and a G step report (graph mode: their stats slots)
    # model name -> its Trainer subclass (registered by fastgan.train.stylegan2, imported by fastgan.train)
    model_trainers: dict = {}

    def __new__(cls, cfg: TrainConfig = None, *args, **kwargs):
        model = getattr(cfg, "model", "dcgan")
        if cls is Trainer and model != "dcgan":
            if model not in cls.model_trainers:
                raise ValueError(f"no trainer registered for model {model!r} (import fastgan.train)")
            cls = cls.model_trainers[model]
        return super().__new__(cls)

    def __init__(self, cfg: TrainConfig, resume: str | None = None, log=print, dataset=None, evaluator=None):
        """``resume``: a checkpoint to continue. ``cfg`` must then agree with the checkpoint's config
        but for the fields a resumed run may change (``config.RESUMABLE``: steps, out, logging,
        device, learning rates, ...); those changes are reported through ``log``.

        ``dataset``: the training data instead of ``cfg.data`` (which must then be None): a
        map-style torch Dataset of images or (image, label) tuples, uint8 [0, 255] or float
        [-1, 1], [C, H, W] (``fastgan.data.user_dataset``: fastgan's step sampler, resize, crop and
        xflip apply), or a DataLoader, whose batches are taken as they come (``data.LoaderBatches``;
        cfg's resize / crop / xflip must be off). Pass the same one again to resume.

        ``evaluator``: with ``cfg.eval_every`` (and only then), the callable ``evaluator(trainer) ->
        dict`` that computes G_ema's metrics (``fastgan.apps.RunEvaluator.from_config(cfg)``; this layer
        does not import the apps). It must draw no random numbers from the trainer's generators;
        ``evaluate`` keeps the global ones as they were."""
        self.log = log
        state, changes = None, {}
        if resume is not None:
            state = load_checkpoint(resume)
            cfg, changes = self._resumed_config(cfg, state, resume)
        if cfg.data is not None:  # recorded absolute: the checkpoint names the data wherever it is resumed
            cfg = dataclasses.replace(cfg, data=os.path.abspath(cfg.data))
        self.cfg = cfg
        if cfg.eval_every is not None and evaluator is None:
            raise ValueError(f"eval_every={cfg.eval_every} needs an evaluator: Trainer(cfg, evaluator="
                             "fastgan.apps.RunEvaluator.from_config(cfg)) (fastgan train --eval-every passes one)")
        if evaluator is not None and cfg.eval_every is None:
            raise ValueError("an evaluator was given but eval_every is None: set eval_every (--eval-every K)")
        self.evaluator = evaluator
        if cfg.tensorboard:
            try:
                importlib.import_module("torch.utils.tensorboard")
            except ImportError:
                raise ValueError("tensorboard=True (--tensorboard) needs the tensorboard package: "
                                 "pip install tensorboard") from None
        self.device = resolve_device(cfg.device)
        world = dist_util.env_world_size()
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
        self.dist = dist_util.init_from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.amp = (self.device.type == "cuda") if cfg.amp is None else bool(cfg.amp)
        if self.amp and self.device.type != "cuda":
            raise ValueError("bf16 autocast (amp) is for CUDA devices; use amp=False on the CPU")

        torch.manual_seed(cfg.seed + self.dist.rank)
        self.user_loader = None
        if dataset is None:
            self.dataset = load_dataset(cfg.data, cfg.resolution, cfg.n_embedded, cfg.seed, self.resolutions,
                                        cfg.resize, cfg.crop, cfg.xflip)
        else:
            self.dataset = self._user_data(cfg, dataset)
        if self.user_loader is None and cfg.batch_size > len(self.dataset):
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the dataset ({len(self.dataset)} images)")
        self.classes, self.n_classes = self._labels(cfg, state, resume, "the embedded shapes" if dataset is None
                                                    else f"dataset {type(dataset).__name__}")
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.G, self.D = self._build_models()
        self.G.to(self.device)
        self.D.to(self.device)
        if self.device.type == "cuda":
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        use_graphs = False
        if cfg.cuda_graphs:
            why = self._graphs_unsupported() or graph_util.graph_blocker(self.device, self.dist.world_size,
                                                                         {"G": self.G, "D": self.D})
            if why:
                warnings.warn(why, RuntimeWarning, stacklevel=2)
            use_graphs = why is None
        self.opt_g = self._adam(self.G, cfg.lr_g, use_graphs)
        self.opt_d = self._adam(self.D, cfg.lr_d, use_graphs)
        self.noise = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + 1 + self.dist.rank)
        self.gp_eps = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + 2 + self.dist.rank)
        self._ema_decay = torch.zeros((), device=self.device)  # filled before every G step
        # graph mode (None: eager steps): the captured steps and their static buffers
        self.graphs = graph_util.TrainerGraphs(self) if use_graphs else None
        self.fixed_z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 12345))
        self.step = 0            # completed G steps
        self.d_steps = 0         # completed D steps (drives the lazy R1 schedule)
        self._last_penalty = None  # the last penalty a D step computed (d_step's "penalty")
        self.history: list[dict] = []
        self.eval_history: list[dict] = []  # the evaluations' records (log.jsonl records with kind "eval")
        self.diverged: str | None = None  # what became non-finite, and at which step
        torch.manual_seed(cfg.seed * 31 + self.dist.rank)
        if state is not None:
            self._load_state(state, resume)
            self.set_lr(cfg.lr_g, cfg.lr_d)  # the config's: the loaded optimizer state holds the old ones
            if self.dist.is_main:
                self.log(f"resuming {resume} at step {self.step}" + "".join(
                    f", {k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        self.checkpoint_step = self.step if state is not None else None  # of the checkpoint on disk
        dist_util.broadcast_module_(self.G, self.dist)
        dist_util.broadcast_module_(self.D, self.dist)
        dist_util.broadcast_module_(self.G_ema, self.dist)
        self._stop_signal = None

    def _labels(self, cfg: TrainConfig, state: dict | None, resume: str | None,
                source: str) -> tuple[tuple | None, int]:
        """Conditional: (class names, their number); the dataset becomes ``Labelled`` (batches of
        (images, labels)) and ``label_pool`` holds every training label on the device (the fakes'
        labels are drawn from it). A resume checks the checkpoint's class names. Unconditional: (None, 0)."""
        if not cfg.conditional:
            return None, 0
        if self.user_loader is not None:
            raise ValueError("conditional training takes a map-style Dataset with labels (``labels`` or ``targets`` "
                             "and ``classes`` attributes), not a DataLoader: pass dataset=loader.dataset")
        labels, classes = conditional_labels(self.dataset, cfg.data or source)
        saved = None if state is None else state.get("classes")
        if state is not None and (saved is None or list(saved) != list(classes)):
            raise CheckpointError(f"{resume}: the checkpoint was trained on the classes {saved}, but the data has "
                                  f"{list(classes)}")
        self.dataset = Labelled(self.dataset, labels, classes)
        self.label_pool = labels.to(self.device)
        return tuple(classes), len(classes)

    def _user_data(self, cfg: TrainConfig, data):
        """A user's Dataset (wrapped: checked, resized, cropped, flipped) or DataLoader (kept in
        ``user_loader``; ``dataset`` is its dataset)."""
        if cfg.data is not None:
            raise ValueError(f"give the data either as cfg.data ({cfg.data!r}) or as dataset=, not both")
        if isinstance(data, torch.utils.data.DataLoader):
            if cfg.resize or cfg.xflip or cfg.crop != "center":
                raise ValueError("resize, crop and xflip apply to a Dataset, not to a DataLoader's batches: pass "
                                 "the Dataset (dataset=loader.dataset) or transform in your loader")
            self.user_loader = data
            return data.dataset
        return user_dataset(data, cfg.resolution, cfg.resize, cfg.crop, cfg.xflip, cfg.seed)

    def _build_models(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        cfg = self.cfg
        return build_dcgan(cfg.resolution, cfg.z_dim, cfg.g_width, cfg.d_width, fused=cfg.fused,
                           n_classes=self.n_classes)

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

    @staticmethod
    def _resumed_config(cfg: TrainConfig, state: dict, path: str) -> tuple[TrainConfig, dict]:
        """(config, changes) of a run resumed from ``state`` with ``cfg`` (``TrainConfig.resumed``)."""
        try:
            saved = TrainConfig.from_dict(state["config"])
        except Exception as exc:
            raise CheckpointError(f"{path}: incompatible checkpoint config ({exc})") from None
        return saved.resumed(cfg.to_dict())

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "noise": self.noise.get_state(), "penalty": self.gp_eps.get_state()}
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
        state = {"config": self.cfg.to_dict(), "step": self.step, "d_steps": self.d_steps,
                 "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                 "opt_g": opt_g, "opt_d": opt_d, "rng": rng, "fixed_z": self.fixed_z}
        if self.n_classes:  # a conditional model's classes: label k is classes[k]
            state.update(classes=list(self.classes), n_classes=self.n_classes)
        return state

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
        fixed_z, rng = state.get("fixed_z", self.fixed_z), state["rng"]
        try:
            if not (isinstance(fixed_z, torch.Tensor) and fixed_z.shape == self.fixed_z.shape
                    and fixed_z.is_floating_point()):
                raise ValueError(f"fixed_z is not a float tensor of shape {list(self.fixed_z.shape)}")
            if not isinstance(rng, dict):
                raise TypeError(f"rng is a {type(rng).__name__}, not a dict")
            self.fixed_z = fixed_z
            per_rank = rng.get("per_rank")
            if per_rank is not None and len(per_rank) == self.dist.world_size:
                rng = per_rank[self.dist.rank]  # this rank's own streams (a data-parallel checkpoint)
            elif self.dist.enabled:  # rank 0's streams would give every rank the same noise: derive them
                warnings.warn(f"{path}: no random state for {self.dist.world_size} ranks in this checkpoint; each "
                              "rank reseeds from (seed, rank, step), so this resume is not bitwise the uninterrupted "
                              "run", RuntimeWarning, stacklevel=3)
                derived = (self.cfg.seed * 1000003 + self.dist.rank) * 1000003 + self.step
                torch.manual_seed(derived)
                self.noise.manual_seed(derived + 1)
                self.gp_eps.manual_seed(derived + 2)
                return
            torch.set_rng_state(rng["torch"])
            for name, gen in (("noise", self.noise), ("penalty", self.gp_eps)):
                # a generator of another device type (a CUDA run resumed on the CPU) keeps its seed
                if name in rng and rng[name].numel() == gen.get_state().numel():
                    gen.set_state(rng[name])
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"{path}: malformed rng or fixed-noise entry "
                                  f"({type(exc).__name__}: {first})") from None

    def save(self, path: str | None = None) -> str | None:
        """Write the checkpoint (rank 0; returns its path, None on other ranks). Every rank must call
        it: the ranks' random states are gathered first, so that a resume gives each rank its own
        streams back."""
        per_rank = dist_util.gather_objects(self._rng_state(), self.dist) if self.dist.enabled else None
        path = path or os.path.join(self.cfg.out, LATEST)
        if self.dist.is_main:
            save_checkpoint(self.state_dict(per_rank), path)
        dist_util.barrier(self.dist)  # the file exists for every rank once save returns
        return path if self.dist.is_main else None

    def finite(self) -> bool:
        """Whether every weight and buffer of G, D and G_ema is finite (one host sync)."""
        flags = [torch.isfinite(t).all() for m in (self.G, self.D, self.G_ema) for t in m.state_dict().values()]
        return bool(torch.stack(flags).all())

    def _checkpoint(self) -> None:
        """Save unless a weight is non-finite: then record the divergence, and the checkpoint on
        disk stays the last finite one. Every rank checks (the weights are equal on all ranks), so
        all of them see the divergence at the same step."""
        if not self.finite():
            self.diverged = self.diverged or f"non-finite weights at step {self.step}"
            return
        self.save()
        self.checkpoint_step = self.step

    # ------------------------------------------------------------------ steps

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda")

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, device=self.device, generator=self.noise)

    def _penalty_due(self) -> bool:
        """This D step computes the penalty (WGAN-GP and R1 + R2: every D step; lazy R1: ``_r1_due``)."""
        return self.cfg.penalty in EVERY_STEP_PENALTIES or self._r1_due()

    def _fake(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """n generated images (G's forward on fresh noise from the trainer's generator; of the
        classes ``labels`` for a conditional G)."""
        z = self._z(n)
        return self.G(z) if labels is None else self.G(z, self._cond(labels))

    def _cond(self, labels: torch.Tensor) -> torch.Tensor:
        """The models' conditioning input for class indices (DCGAN: the indices themselves)."""
        return labels

    def _draw_labels(self, n: int) -> torch.Tensor | None:
        """n labels drawn from the training labels (None when unconditional); no host sync."""
        if not self.n_classes:
            return None
        pick = torch.randint(len(self.label_pool), (n,), device=self.device, generator=self.noise)
        return self.label_pool[pick]

    def _critic(self, labels: torch.Tensor | None):
        """D as a function of the image alone (the labels fixed): what D's loss and the penalties call."""
        if labels is None:
            return self.D
        c = self._cond(labels)
        return lambda x: self.D(x, c)

    def ema_beta(self) -> float:
        """The EMA decay for the coming G step (``ema.ema_decay_at``)."""
        return ema_decay_at(self.step, self.cfg.ema_decay)

    def log_fields(self, step: int, step_s: float) -> dict:
        """Extra fields of a log record (a model's trainer adds its own)."""
        return {}

    def progress_fields(self, rec: dict) -> dict:
        """Extra fields of the progress bar, from a log record."""
        return {}

    def _r1_due(self) -> bool:
        """Lazy R1: this D step carries the penalty (every ``reg_interval``-th D step)."""
        return self.cfg.penalty == "r1" and self.d_steps % self.cfg.reg_interval == 0

    def _d_update(self, real: torch.Tensor, r1: bool, set_to_none: bool = True,
                  labels: torch.Tensor | None = None) -> dict:
        """The D step body (eager, or captured in graph mode with ``set_to_none=False``);
        ``labels``: the real batch's (conditional)."""
        with self._ops():
            cfg = self.cfg
            n = real.shape[0]
            self.D.requires_grad_(True)
            # the fakes' labels: drawn; WGAN-GP's: the real ones (each interpolate within one class)
            fake_labels = labels if labels is None or cfg.penalty == "wgan-gp" else self._draw_labels(n)
            with torch.no_grad(), self._autocast():
                fake = self._fake(n, fake_labels)
            fake = fake.to(real.dtype)
            d_real, d_fake = self._critic(labels), self._critic(fake_labels)
            penalty = None
            real_logits = None
            with self._autocast():
                if r1:
                    gamma = FG.lazy_regularization(cfg.effective_gamma, cfg.reg_interval)
                    penalty, real_logits = FG.gradient_penalty(d_real, real, kind="r1", gamma=gamma, return_logits=True)
                if real_logits is None and getattr(self.D, "per_sample", False):
                    # each logit depends on its own sample only: one D call for both batches
                    both = (self.D(torch.cat([real, fake])) if labels is None else
                            self.D(torch.cat([real, fake]), self._cond(torch.cat([labels, fake_labels]))))
                    real_logits, fake_logits = both.split([n, fake.shape[0]])
                else:
                    real_logits = d_real(real) if real_logits is None else real_logits
                    fake_logits = d_fake(fake)
                if cfg.penalty == "wgan-gp":
                    penalty = FG.gradient_penalty(d_real, real, fake, kind="wgan-gp", gamma=cfg.effective_gamma,
                                                  generator=self.gp_eps)
            return self._d_loss_step(real_logits, fake_logits, penalty, set_to_none)

    def _d_loss_step(self, real_logits, fake_logits, penalty, set_to_none: bool) -> dict:
        """D's loss on the logits plus ``penalty`` (None: this step has none), backward, gradients
        averaged over the ranks, an Adam step; returns the detached stats of a D step."""
        loss = FG.d_loss(real_logits.float(), fake_logits.float(), kind=self.cfg.loss)
        self.opt_d.zero_grad(set_to_none=set_to_none)
        if penalty is None:
            loss.backward()
            penalty = torch.zeros((), device=loss.device)
        else:
            (loss + penalty).backward()
        dist_util.average_gradients_(self.D.parameters(), self.dist)
        self.opt_d.step()
        d_real, d_fake, d_acc = FG.logit_stats(real_logits.float(), fake_logits.float())  # one launch
        return {"d_loss": loss.detach(), "penalty": penalty.detach(), "d_real": d_real, "d_fake": d_fake,
                "d_acc": d_acc}

    def _g_update(self, n: int, set_to_none: bool = True) -> dict:
        """The G step body, EMA update included."""
        with self._ops():
            self.D.requires_grad_(False)  # no D weight gradients in the G step
            labels = self._draw_labels(n)
            with self._autocast():
                fake_logits = self._critic(labels)(self._fake(n, labels))
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

    def d_step(self, real: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """One discriminator update; returns detached scalars (no host sync). ``penalty`` is the
        last one computed (0 before the first): lazy R1 skips most D steps, and the stats of a
        G step are its last D step's (graph mode keeps it in its stats slot alike). ``labels``:
        the real batch's classes (a conditional trainer needs them, an unconditional one refuses them)."""
        if (labels is None) != (not self.n_classes):
            raise ValueError("a conditional trainer needs each real batch's labels: (images, labels)" if self.n_classes
                             else "this trainer is unconditional: real batches carry no labels")
        if self.graphs is not None:
            return self.graphs.d_step(real)
        computed = self._penalty_due()
        stats = self._d_update(real, self._r1_due(), labels=labels)
        self.d_steps += 1
        if computed or self._last_penalty is None:
            self._last_penalty = stats["penalty"]
        return dict(stats, penalty=self._last_penalty)

    def g_step(self, n: int) -> dict:
        self._ema_decay.fill_(self.ema_beta())  # outside any graph
        if self.graphs is not None:
            return self.graphs.g_step(n)
        return self._g_update(n)

    def to_device(self, real: torch.Tensor) -> torch.Tensor:
        real = real.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            real = real.contiguous(memory_format=torch.channels_last)
        return real

    def train_step(self, reals: list) -> dict:
        """One iteration: ``n_critic`` D steps (one real batch each, this rank's share; a
        conditional trainer's batches are (images, labels) pairs) and one G step. Returns detached
        0-d tensors (no host sync): the last D step's statistics (``d_step``). With CUDA graphs
        they are views of one fresh vector (not the graphs' static memory), so they may be kept."""
        if len(reals) != self.cfg.n_critic:
            raise ValueError(f"train_step needs n_critic = {self.cfg.n_critic} real batches, got {len(reals)}")
        if self.graphs is not None:
            self._ema_decay.fill_(self.ema_beta())
            stats = self.graphs.train_step(reals)
        else:
            for real in reals:
                if isinstance(real, (tuple, list)):
                    real, labels = real
                    stats = self.d_step(self.to_device(real), labels.to(self.device, non_blocking=True))
                else:
                    stats = self.d_step(self.to_device(real))
            stats.update(self.g_step(real.shape[0]))
        self.step += 1
        return stats

    @property
    def generators(self) -> tuple[torch.Generator, ...]:
        """The trainer's own generators the steps draw from (a CUDA graph registers them)."""
        return (self.noise, self.gp_eps) if self.cfg.penalty == "wgan-gp" else (self.noise,)

    def _graphs_unsupported(self) -> str | None:
        """Why this configuration has no captured steps (a warning ending in "running eager
        steps"), or None; ``graphs.graph_blocker`` adds the reasons of the device and the modules."""
        if self.cfg.conditional:
            return "cuda_graphs: no captured conditional steps yet; running eager steps"
        return None

    @property
    def graph_kinds(self) -> tuple[str, ...]:
        """The captured steps this configuration uses: "d" (plain D step), "d_r1" (D step with
        lazy R1), "g" (G step + EMA)."""
        return self._d_graph_kinds() + ("g",)

    def _d_graph_kinds(self) -> tuple[str, ...]:
        cfg = self.cfg
        if cfg.penalty != "r1":
            return ("d",)
        return ("d_r1",) if cfg.reg_interval == 1 else ("d", "d_r1")

    def g_graph_kind(self) -> str:
        """The captured G step the coming G step replays (one of ``graph_kinds``)."""
        return "g"

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

    def sample_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(z, labels) of the sample grid: the fixed noise; conditional: one row per class (the
        first 64), the same 8 latents in every row."""
        if not self.n_classes:
            return self.fixed_z.to(self.device), None
        k = min(self.n_classes, 64)
        z = self.fixed_z[:8].repeat(k, 1).to(self.device)
        return z, torch.arange(k, device=self.device).repeat_interleave(8)

    def sample(self, path: str) -> torch.Tensor:
        """Write G_ema's images of the fixed noise as a grid (8 a row); returns them."""
        z, labels = self.sample_inputs()
        with torch.no_grad(), self._ops():
            images = self.G_ema(z) if labels is None else self.G_ema(z, self._cond(labels))
        save_image_grid(images, path, nrow=8)
        return images

    @torch.no_grad()
    def eval_images(self, z: torch.Tensor, noise_seed: int = 0) -> torch.Tensor:
        """G_ema's images of the latents ``z`` [N, z_dim] for the metrics: float32 in [-1, 1] on the
        CPU, computed in eval mode without gradients (G_ema's train/eval mode is restored).
        ``noise_seed``: a model with noise inputs draws them from its own generator seeded with it."""
        training = self.G_ema.training
        self.G_ema.eval()
        try:
            with self._ops():
                images = self._eval_forward(z.to(self.device), noise_seed)
        finally:
            self.G_ema.train(training)
        return images.float().clamp(-1, 1).cpu()

    def _eval_forward(self, z: torch.Tensor, noise_seed: int) -> torch.Tensor:
        return self.G_ema(z)

    def evaluate(self) -> dict:
        """The evaluator's record fields for G_ema now, plus ``eval_s`` (its seconds). The global
        random state (the CPU's, and this CUDA device's) is saved and restored around it, so a run
        that evaluates draws the same training random numbers as one that does not."""
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            fields = dict(self.evaluator(self))
        fields["eval_s"] = time.perf_counter() - t0
        return fields

    def train(self) -> dict:
        """Run until ``cfg.steps`` G steps are done, or to a stop (see the module docstring).
        Returns the summary: "status" is "completed", "interrupted" ("signal" names it) or
        "diverged" ("diverged" says what became non-finite); an image that does not decode
        raises a DataError once the checkpoint is written (summary.json: "data error"). Rank 0
        holds ``out``'s FolderLock and first removes the temporary files interrupted writes left
        there."""
        cfg, main = self.cfg, self.dist.is_main
        with FolderLock(cfg.out) if main else contextlib.nullcontext():
            if main:
                remove_stale_temporaries(cfg.out, os.path.join(cfg.out, "samples"))
                atomic_write_json(os.path.join(cfg.out, "config.json"), cfg.to_dict())
            return self._train()

    def _train(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        start_step = self.step
        if self.user_loader is not None:
            loader = LoaderBatches(self.user_loader, cfg.batch_size // self.dist.world_size, cfg.resolution,
                                   skip=start_step * cfg.n_critic)
        else:
            loader = make_loader(self.dataset, cfg.batch_size, cfg.seed, start_step * cfg.n_critic, cfg.steps
                                 * cfg.n_critic, self.device, cfg.workers, self.dist.rank, self.dist.world_size)
        monitor = ResourceMonitor() if main else None  # time, energy, memory: OUT/resources.json
        with _StopOnSignal() as stop:  # the summary too: a repeated Ctrl-C must not cut it short
            with RunLog(self, start_step) as log, monitor or contextlib.nullcontext():
                status, signum, data_error = self._loop(iter(loader), stop, log, monitor)
            status = "diverged" if self.diverged else status
            summary = self._summary(status, start_step, log, monitor, signum)
        if status == "data error":
            saved = (f"checkpoint of step {self.checkpoint_step} in {summary['checkpoint']}"
                     if self.checkpoint_step is not None else "no checkpoint")
            why = data_error_line(data_error) if data_error is not None else "another process could not read its data"
            raise DataError(f"{why}; stopped before step {self.step + 1} ({saved}): fix or remove the file, "
                            "then resume")
        return summary

    def _loop(self, data, stop, log, monitor) -> tuple[str, int, DataError | None]:
        """The steps up to ``cfg.steps`` or the first stop: (status, the signal's number or 0, this
        rank's DataError or None). A divergence ends it too (``self.diverged`` says so)."""
        cfg, main = self.cfg, self.dist.is_main
        while self.step < cfg.steps:
            reals, data_error = self._next_batches(data, stop)
            # every rank stops at the same step, whichever rank has a reason (one small all-reduce)
            signum, diverged, bad_data = dist_util.max_over_ranks(
                [stop.signal or 0, self.diverged is not None, data_error is not None], self.dist)
            if diverged:
                break
            if signum or bad_data:
                log.flush()
                self._checkpoint()
                dist_util.max_over_ranks([0], self.dist)  # no rank exits before rank 0 has written it
                return ("interrupted" if signum else "data error"), signum, data_error
            stats = self.train_step(reals)
            last = self.step == cfg.steps
            if monitor is not None:
                monitor.step(cfg.batch_size * cfg.n_critic)
            log.step(self.step, stats, due=self.step % cfg.log_every == 0 or last)
            if main and (self.step % cfg.sample_every == 0 or last):
                log.samples(self.step, self.sample(os.path.join(cfg.out, "samples", f"step_{self.step:07d}.png")))
            if main and self.evaluator is not None and (self.step % cfg.eval_every == 0 or last) \
                    and self.diverged is None:
                log.evaluation(self.step, self.evaluate())
            if self.step % cfg.ckpt_every == 0 or last:
                log.flush()
                self._checkpoint()
        return "completed", 0, None

    def _next_batches(self, data, stop) -> tuple[list | None, DataError | None]:
        """(the next step's real batches, None), or (None, the DataError of an image that does not
        decode). Nothing is fetched once a stop signal has arrived, and a fetch that fails after
        one is the signal's doing (a terminal's Ctrl-C reaches the DataLoader workers too)."""
        if stop.signal is not None:
            return None, None
        try:
            if self.n_classes:  # (images, labels)
                return [tuple(next(data)[:2]) for _ in range(self.cfg.n_critic)], None
            return [next(data)[0] for _ in range(self.cfg.n_critic)], None
        except DataError as exc:
            return None, exc
        except Exception:
            if stop.signal is None:
                raise
            return None, None

    def _summary(self, status: str, start_step: int, log, monitor, signum: int = 0) -> dict:
        cfg = self.cfg
        elapsed = log.elapsed
        done = self.step - start_step
        last = self.history[-1] if self.history else {}
        summary = {"status": status, "step": self.step, "steps_run": done, "elapsed_s": elapsed,
                   "images_per_s": done * cfg.batch_size * cfg.n_critic / elapsed if elapsed else None,
                   "d_loss": last.get("d_loss"), "g_loss": last.get("g_loss"), "penalty": last.get("penalty"),
                   "signal": signal.Signals(signum).name if signum else None, "diverged": self.diverged,
                   "checkpoint": os.path.join(cfg.out, LATEST), "checkpoint_step": self.checkpoint_step,
                   "samples": os.path.join(cfg.out, "samples"), "device": str(self.device),
                   "backend": "plain torch" if not cfg.fused else backend_for_device(self.device),
                   "eval": ({k: v for k, v in self.eval_history[-1].items() if k not in ("kind", "time_s")}
                            if self.eval_history else None)}
        if monitor is not None:
            res = monitor.report()
            summary.update(energy_j=res["energy_j"], joules_per_image=res["joules_per_image"],
                           energy_source=res["energy_source"], resources=monitor.summary(),
                           resources_file=monitor.to_json(os.path.join(cfg.out, "resources.json")))
            atomic_write_json(os.path.join(cfg.out, "summary.json"), summary)
        return summary


class _StopOnSignal:
    """Within the block, SIGINT and SIGTERM (a cluster's preemption) set ``.signal``, the first
    one's number, instead of raising or terminating (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal, self._previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        return False


class RunLog:
    """The training log: the trainer's history on every rank; on rank 0 also ``log.jsonl``,
    TensorBoard and the progress bar.

    Each record is the step's statistics plus step time, images/s and wall time. With CUDA graphs
    the statistics arrive a few steps late (``graphs.AsyncStats``: no host sync per step) and the
    step time is the device time between two logged steps. A non-finite statistic sets the
    trainer's ``diverged``. ``log.jsonl`` keeps the records up to the step the run starts from
    (a resumed run continues its log, a new run starts a new one).

    With ``eval_every`` the evaluations are records too, in step order with the others:
    ``{"step", "kind": "eval", <metrics: fid, kid, kid_std, precision, recall>, "n_fake", "n_real",
    "features", "eval_s", "time_s"}`` (training records have no "kind"); the next training
    record's step time leaves the evaluation's time out.

    ``penalty`` is recorded only as computed: lazy R1 runs on every ``reg_interval``-th D step, so
    a record carries ``penalty`` and ``penalty_step``, the last step since the previous record
    one of whose D steps computed it, or no ``penalty`` when none did (nor ever with penalty
    "none"); TensorBoard plots it at ``penalty_step``. TensorBoard also gets the sample
    grids (tag "samples", at the sample interval) and, when the run ends, the config as hparams
    (run "hparams", with the last losses as its metrics)."""

    def __init__(self, trainer: "Trainer", start_step: int):
        cfg = trainer.cfg
        self.trainer, self.cfg = trainer, cfg
        self.path = os.path.join(cfg.out, "log.jsonl")
        self.pending = graph_util.AsyncStats() if trainer.graphs is not None else None
        self.main = trainer.dist.is_main
        self.bar = self.tb = None
        if self.main and os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if _record_step(line) <= start_step]
            atomic_write(self.path, lambda f: f.writelines(kept))
        if self.main and cfg.progress and cfg.steps > start_step:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.steps, initial=start_step, desc="fastgan train", unit="step",
                            dynamic_ncols=True, file=sys.stderr)
        if self.main and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(cfg.out, "tb"))
        self.t_start = self.t_last = time.perf_counter()
        self.step_last = start_step
        self.held = None  # (step, penalty) of a step that computed it since the last record
        self.kinds: dict[int, tuple[bool, bool]] = {}  # graph mode: pushed step -> (due, penalty computed)
        self.eval_postfix: dict = {}  # the last evaluation's headline metric, for the progress bar

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.flush()
        self.elapsed = time.perf_counter() - self.t_start
        if self.tb is not None:
            last = self.trainer.history[-1] if self.trainer.history else {}
            self.tb.add_hparams(_hparams(self.cfg), {f"hparam/{k}": last[k] for k in ("d_loss", "g_loss") if k in last},
                                run_name="hparams")
        for sink in (self.bar, self.tb):
            if sink is not None:
                sink.close()
        return False

    def _penalty_computed(self) -> bool:
        """Whether one of the step's D steps computed the penalty (WGAN-GP: each; lazy R1: every
        ``reg_interval``-th D step); ``train_step`` returns that D step's penalty."""
        cfg, last = self.cfg, self.trainer.d_steps
        return cfg.penalty in EVERY_STEP_PENALTIES or (cfg.penalty == "r1" and any(
            d % cfg.reg_interval == 0 for d in range(last - cfg.n_critic, last)))

    def step(self, step: int, stats: dict, due: bool) -> None:
        """After each step: advance the progress bar; record the statistics when ``due``; hold the
        penalty of a step that computed it for the next record."""
        if self.bar is not None:
            self.bar.update(1)
        computed = self._penalty_computed()
        if not (due or computed):
            return
        if self.pending is None:
            if due:
                self._emit({k: float(v) for k, v in stats.items()}, step, time.perf_counter(), computed=computed)
            else:
                self.held = (step, stats["penalty"])  # read at the next record: no host sync now
        else:
            self.kinds[step] = (due, computed)
            self.pending.push(step, self.trainer.graphs.last_stats)
            self._drain()

    def samples(self, step: int, images: torch.Tensor) -> None:
        """The sample grid of ``step`` (TensorBoard's "samples" image)."""
        if self.tb is not None:
            self.tb.add_image("samples", image_grid(images, nrow=8), step, dataformats="HWC")

    def evaluation(self, step: int, fields: dict) -> None:
        """The record of an evaluation at ``step`` (``Trainer.evaluate``'s fields), after every
        training record up to ``step`` (graph mode: those still pending are written first)."""
        self.flush()
        now = time.perf_counter()
        rec = dict({"step": step, "kind": "eval"}, **fields, time_s=now - self.t_start)
        self.t_last += fields.get("eval_s", 0.0)  # the next record's step time: training only
        self.trainer.eval_history.append(rec)
        self._write(rec, step, skip=("step", "time_s"), prefix="eval/")
        head = next((k for k in ("fid", "kid", "precision") if rec.get(k) is not None), None)
        self.eval_postfix = {head: f"{rec[head]:.4g}"} if head else {}  # shown from the next record on

    def _write(self, rec: dict, step: int, skip: tuple, prefix: str = "") -> None:
        """Rank 0: append ``rec`` to log.jsonl; its numbers (but ``skip``) to TensorBoard as ``prefix + key``."""
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(prefix + k, v, step)

    def flush(self) -> None:
        self._drain(wait_all=True)

    def _drain(self, wait_all: bool = False) -> None:
        if self.pending is not None:
            for step, values, step_ms, t_host in self.pending.ready(wait_all):
                values = dict(zip(self.trainer.stat_names[0] + self.trainer.stat_names[1], values))
                due, computed = self.kinds.pop(step)
                if due:
                    self._emit(values, step, t_host, step_ms, computed)
                else:
                    self.held = (step, values["penalty"])

    def _emit(self, values: dict, step: int, now: float, device_step_ms: float | None = None,
              computed: bool = True) -> None:
        cfg = self.cfg
        values = dict(values)
        penalty = values.pop("penalty", None)
        held, self.held = ((step, penalty) if computed else self.held), None
        if held is not None:
            values.update(penalty=float(held[1]), penalty_step=held[0])
        dt = (now - self.t_last) / max(1, step - self.step_last)
        if device_step_ms is not None:
            dt = device_step_ms / 1e3
        rec = dict(values, step=step, step_ms=dt * 1e3,
                   images_per_s=cfg.batch_size * cfg.n_critic / dt if dt > 0 else None, time_s=now - self.t_start,
                   **self.trainer.log_fields(step, dt))
        self.t_last, self.step_last = now, step
        self.trainer.history.append(rec)
        bad = [f"{k} {v}" for k, v in values.items() if not math.isfinite(v)]
        if bad and self.trainer.diverged is None:
            self.trainer.diverged = f"non-finite losses at step {step} ({', '.join(bad)})"
        self._write(rec, step, skip=("step", "penalty", "penalty_step"))
        if self.tb is not None and "penalty" in rec:
            self.tb.add_scalar("penalty", rec["penalty"], rec["penalty_step"])
        if self.bar is not None:
            self.bar.set_postfix(d=f"{rec['d_loss']:.3f}", g=f"{rec['g_loss']:.3f}",
                                 img_s=f"{rec['images_per_s']:.0f}", **self.trainer.progress_fields(rec),
                                 **self.eval_postfix)


def _hparams(cfg: TrainConfig) -> dict:
    """The config as TensorBoard hparams (numbers, strings and booleans; anything else as text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in cfg.to_dict().items()}


def _record_step(line: str) -> float:
    """The step of a log.jsonl line (inf for a line that does not parse: a write cut short)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
