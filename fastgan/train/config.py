"""TrainConfig: every knob of a training run, validated, serialisable into checkpoints."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field

from ..data import CROPS

LOSSES = ("ns", "hinge", "wgan", "lsgan")
PENALTIES = ("none", "r1", "wgan-gp")
DEFAULT_GAMMA = {"r1": 1.0, "wgan-gp": 10.0, "none": 0.0}
# the defaults that depend on the device (fields left None): a run a CPU finishes in minutes
DEVICE_DEFAULTS = {"cuda": {"g_width": 64, "d_width": 64, "steps": 10000},
                   "cpu": {"g_width": 32, "d_width": 32, "steps": 1500}}
WGAN_BETAS, DEFAULT_BETAS = (0.0, 0.9), (0.5, 0.999)  # Adam: the WGAN-GP paper's, and DCGAN's
RESOLUTIONS = (32, 64)
# the fields a resumed run may change (it continues the same model, data and objective): run
# length, output and logging, where and how it runs (fused: the same parameters in plain torch
# modules), and the learning rates
RESUMABLE = ("steps", "out", "sample_every", "ckpt_every", "log_every", "progress", "tensorboard", "device",
             "amp", "cuda_graphs", "fused", "workers", "lr_g", "lr_d")


def _on_cuda(device) -> bool:
    if not isinstance(device, str):
        raise ValueError(f"device must be a string (auto, cpu, cuda or cuda:N), got {device!r}")
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


@dataclass
class TrainConfig:
    # data
    data: str | None = None          # None: the embedded shapes dataset; else a folder of images or an .npz
    resolution: int = 32             # 32 or 64
    n_embedded: int = 8192           # images in the embedded dataset
    workers: int | None = None       # DataLoader workers (None: 0 for in-memory data, up to 8 for image folders)
    resize: bool = False             # resize each image's short side to `resolution` (antialiased bicubic)
    crop: str = "center"             # after resize: center | random (a seeded offset along the long side)
    xflip: bool = False              # flip each drawn image horizontally with probability 1/2 (seeded)
    # models
    z_dim: int = 128
    g_width: int | None = None       # None: DEVICE_DEFAULTS (64 on CUDA, 32 on the CPU)
    d_width: int | None = None
    fused: bool = True               # fastgan.nn modules (False: plain torch modules, same parameters)
    # objective
    loss: str = "ns"                 # ns | hinge | wgan | lsgan
    penalty: str = "r1"              # none | r1 | wgan-gp
    gamma: float | None = None       # penalty weight (None: r1 1.0, wgan-gp 10.0)
    reg_interval: int = 4            # lazy R1: penalise every k-th D step with gamma * k (1: every step)
    n_critic: int = 1                # D steps per G step
    # optimisation
    batch_size: int = 64
    steps: int | None = None         # G steps (None: 10000 on CUDA, 1500 on the CPU)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple | None = None       # None: (0.0, 0.9) with wgan / wgan-gp (the WGAN-GP paper), else (0.5, 0.999)
    ema_decay: float = 0.999         # EMA of G's weights, used for samples
    # runtime
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    amp: bool | None = None          # bf16 autocast (None: on for CUDA, off for CPU)
    cuda_graphs: bool = False        # capture the D, D+R1 and G steps in CUDA graphs (CUDA, one process)
    out: str = "runs/fastgan"
    sample_every: int = 250
    ckpt_every: int = 500
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = False        # also log to OUT/tb: scalars, sample grids, hparams (needs tensorboard)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, value in DEVICE_DEFAULTS["cuda" if _on_cuda(self.device) else "cpu"].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.betas is None:
            self.betas = WGAN_BETAS if self.loss == "wgan" or self.penalty == "wgan-gp" else DEFAULT_BETAS
        self.betas = tuple(self.betas)
        self.validate()

    @property
    def effective_gamma(self) -> float:
        return DEFAULT_GAMMA[self.penalty] if self.gamma is None else self.gamma

    def validate(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        for name in ("n_embedded", "z_dim", "g_width", "d_width", "reg_interval", "n_critic", "batch_size",
                     "steps", "sample_every", "ckpt_every", "log_every"):
            positive_int(name)
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be 32 or 64, got {self.resolution!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.gamma is not None and not (_finite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma!r}")
        for name in ("lr_g", "lr_d"):
            if not (_finite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if len(self.betas) != 2 or not all(_finite(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not (_finite(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        for name in ("resize", "xflip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.crop == "random" and not self.resize:
            raise ValueError("crop 'random' (--crop random) crops after the resize: it needs resize=True (--resize)")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 0):
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def defaults(cls) -> dict:
        """Every field's default (None where it is resolved per device or objective)."""
        return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(cls)}

    def resumed(self, given: dict) -> tuple["TrainConfig", dict]:
        """The config of a run resumed from one with this config: this config, with the fields in
        ``given`` that a resumed run may change (``RESUMABLE``) replaced; returns it and
        ``{field: (old, new)}`` of what changed. Any other field of ``given`` that differs (the
        model, the data, the objective, the seed) is a ValueError naming every such field."""
        old = self.to_dict()
        new = dict(old, **given)
        for d in (old, new):  # the same data however its path is spelled
            if d["data"] is not None:
                d["data"] = os.path.abspath(d["data"])
        fixed = {k: (old[k], v) for k, v in new.items() if k not in RESUMABLE and v != old[k]}
        if fixed:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in fixed.items())
            raise ValueError(f"a resumed run keeps its checkpoint's model, data and objective, but {what} would "
                             f"change them; resume without those flags, or start a new run (another --out)")
        cfg = TrainConfig.from_dict(new)
        return cfg, {k: (old[k], v) for k, v in cfg.to_dict().items() if v != old[k]}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        return cls(**d)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
