"""TrainConfig: every knob of a training run, validated, serialisable into checkpoints."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field

from ..data import CROPS

MODELS = ("dcgan", "stylegan2")
LOSSES = ("ns", "hinge", "wgan", "lsgan")
AUGMENTS = ("none", "diffaug", "ada")  # D's input augmentation (fastgan.train.augment, fastgan.train.ada)
PENALTIES = ("none", "r1", "wgan-gp", "r1+r2")  # r1+r2: R1 and R2 on every D step (R3GAN; stylegan2 only)
DEFAULT_GAMMA = {"r1": 1.0, "wgan-gp": 10.0, "none": 0.0, "r1+r2": 1.0}
# the defaults that depend on the device (fields left None): a run a CPU finishes in minutes
DEVICE_DEFAULTS = {"cuda": {"g_width": 64, "d_width": 64, "steps": 10000},
                   "cpu": {"g_width": 32, "d_width": 32, "steps": 1500}}
WGAN_BETAS, DEFAULT_BETAS = (0.0, 0.9), (0.5, 0.999)  # Adam: the WGAN-GP paper's, and DCGAN's
RESOLUTIONS = (32, 64)  # DCGAN's
STYLEGAN2_RESOLUTIONS = tuple(2 ** i for i in range(4, 11))  # 16 .. 1024
# the StyleGAN2 recipe's defaults (fields left None; "stylegan2" in MODEL_DEFAULTS, per device in
# STYLEGAN2_DEVICE_DEFAULTS): NVlabs' stylegan2 config on CUDA (channel_base 32768, channel_max 512),
# a width-64 model on the CPU
MODEL_DEFAULTS = {"dcgan": {"reg_interval": 4, "lr_g": 2e-4, "lr_d": 2e-4},
                  "stylegan2": {"reg_interval": 16, "lr_g": 2.5e-3, "lr_d": 2.5e-3}}
STYLEGAN2_DEVICE_DEFAULTS = {"cuda": {"channel_base": 32768, "channel_max": 512},
                             "cpu": {"channel_base": 1024, "channel_max": 64}}
STYLEGAN2_BETAS = (0.0, 0.99)
# the fields a resumed run may change (it continues the same model, data and objective): run
# length, output and logging, where and how it runs (fused: the same parameters in plain torch
# modules), and the learning rates
RESUMABLE = ("steps", "out", "sample_every", "ckpt_every", "log_every", "progress", "tensorboard", "device",
             "amp", "cuda_graphs", "fused", "workers", "lr_g", "lr_d", "truncation_psi", "eval_every", "eval_metrics",
             "eval_n")
# the metrics a run can log (``eval_metrics``; fastgan.apps.metrics computes them) and the fewest images each
# needs: FID and KID a covariance / an unbiased MMD (2 samples), precision/recall k-NN radii with k = 3
EVAL_METRICS = ("fid", "kid", "pr")
EVAL_MIN_N = {"fid": 2, "kid": 2, "pr": 4}


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
    conditional: bool = False        # class-conditional G and D on the data's labels (fastgan.data.conditional_labels)
    # models
    model: str = "dcgan"             # dcgan | stylegan2
    z_dim: int = 128
    g_width: int | None = None       # None: DEVICE_DEFAULTS (64 on CUDA, 32 on the CPU)
    d_width: int | None = None
    fused: bool = True               # fastgan.nn modules (False: plain torch modules, same parameters)
    # objective
    loss: str = "ns"                 # ns | hinge | wgan | lsgan
    penalty: str = "r1"              # none | r1 | wgan-gp
    gamma: float | None = None       # penalty weight (None: r1 1.0, wgan-gp 10.0)
    reg_interval: int | None = None  # lazy R1: penalise every k-th D step with gamma * k (None: dcgan 4, stylegan2 16)
    n_critic: int = 1                # D steps per G step
    # optimisation
    batch_size: int = 64
    steps: int | None = None         # G steps (None: 10000 on CUDA, 1500 on the CPU)
    lr_g: float | None = None        # None: dcgan 2e-4, stylegan2 2.5e-3
    lr_d: float | None = None
    betas: tuple | None = None       # None: (0.0, 0.9) with wgan / wgan-gp (the WGAN-GP paper), stylegan2 (0.0, 0.99),
    #                                  else (0.5, 0.999)
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
    eval_every: int | None = None    # every K steps and at the end: G_ema's metrics vs the training data into
    #                                  log.jsonl (None: never; the Trainer then needs an evaluator, fastgan.apps)
    eval_metrics: str = "fid,kid"    # comma-separated, from EVAL_METRICS
    eval_n: int = 2048               # generated images (and real ones, at most the dataset) per evaluation
    # StyleGAN2 (model="stylegan2"; ignored by dcgan). Channels at resolution r: min(channel_base // r, channel_max)
    channel_base: int | None = None  # None: 32768 on CUDA, 1024 on the CPU
    channel_max: int | None = None   # None: 512 on CUDA, 64 on the CPU
    mapping_layers: int = 8
    style_mixing: float = 0.9        # probability that a generated image mixes the styles of two latents
    pl_weight: float = 2.0           # path-length regularisation weight (0: off)
    pl_interval: int = 4             # lazy path length: every k-th G step, weighted by k
    pl_batch_shrink: int = 2         # its batch: batch_size // shrink
    pl_decay: float = 0.01           # the running mean of the path lengths: a <- a + decay * (mean - a)
    ema_kimg: float = 10.0           # G_ema's half-life in thousands of images
    ema_rampup: float | None = 0.05  # half-life at most rampup * images seen (None: no ramp-up)
    truncation_psi: float = 1.0      # truncation of the sample grids (1: none)
    augment: str = "none"            # none | diffaug (D's inputs: color, translation, cutout) | ada (stylegan2)
    ada_target: float = 0.6          # ada: the target of mean(sign(D(real))), in (0, 1)
    ada_kimg: float = 500.0          # ada: thousands of real images for p to move by 1 (> 0)
    ada_p: float = 0.0               # ada: the initial augmentation probability, in [0, 1]
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        device = "cuda" if _on_cuda(self.device) else "cpu"
        defaults = dict(DEVICE_DEFAULTS[device], **MODEL_DEFAULTS[self.model])
        if self.model == "stylegan2":
            defaults.update(STYLEGAN2_DEVICE_DEFAULTS[device])
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.betas is None:
            self.betas = (WGAN_BETAS if self.loss == "wgan" or self.penalty == "wgan-gp" else
                          STYLEGAN2_BETAS if self.model == "stylegan2" else DEFAULT_BETAS)
        self.betas = tuple(self.betas)
        self.eval_metrics = ",".join(parse_eval_metrics(self.eval_metrics))
        self.validate()

    @property
    def effective_gamma(self) -> float:
        """gamma, or its default: for stylegan2's R1 NVlabs' heuristic 0.0002 * resolution^2 / batch_size."""
        if self.gamma is not None:
            return self.gamma
        if self.model == "stylegan2" and self.penalty in ("r1", "r1+r2"):
            return 0.0002 * self.resolution ** 2 / self.batch_size
        return DEFAULT_GAMMA[self.penalty]

    def validate(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        for name in ("n_embedded", "z_dim", "g_width", "d_width", "reg_interval", "n_critic", "batch_size",
                     "steps", "sample_every", "ckpt_every", "log_every"):
            positive_int(name)
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if not (_finite(self.ada_target) and 0 < self.ada_target < 1):
            raise ValueError(f"ada_target (--ada-target) must be a number strictly between 0 and 1 (the target of "
                             f"mean(sign(D(real)))), got {self.ada_target!r}")
        if not (_finite(self.ada_kimg) and self.ada_kimg > 0):
            raise ValueError(f"ada_kimg (--ada-kimg) must be a finite number > 0 (thousands of images for p to move "
                             f"by 1), got {self.ada_kimg!r}")
        if not (_finite(self.ada_p) and 0 <= self.ada_p <= 1):
            raise ValueError(f"ada_p (--ada-p) must be a probability in [0, 1], got {self.ada_p!r}")
        if self.augment != "none" and self.model != "stylegan2":
            raise ValueError(f"augment {self.augment!r} is implemented for model stylegan2 only")
        if self.penalty == "r1+r2" and self.model != "stylegan2":
            raise ValueError("penalty r1+r2 is implemented for model stylegan2 only")
        if self.model == "stylegan2":
            if self.penalty not in ("r1", "r1+r2", "none"):
                raise ValueError(f"model stylegan2 takes penalty r1, r1+r2 or none, got {self.penalty!r}")
            for name in ("channel_base", "channel_max", "mapping_layers", "pl_interval", "pl_batch_shrink"):
                positive_int(name)
            if self.resolution not in STYLEGAN2_RESOLUTIONS:
                raise ValueError(f"resolution must be a power of two from 16 to 1024 for model stylegan2, got "
                                 f"{self.resolution!r}")
            if self.batch_size % min(4, self.batch_size):
                raise ValueError(f"batch_size {self.batch_size}: stylegan2's D takes the minibatch standard deviation "
                                 f"over groups of 4 images, so the batch size must be a multiple of 4 (or below 4)")
            if self.channel_base // self.resolution < 1:
                raise ValueError(f"channel_base {self.channel_base} gives no channels at {self.resolution}x"
                                 f"{self.resolution} (min(channel_base // r, channel_max)); it must be at least "
                                 f"the resolution")
            for name, lo, hi in (("style_mixing", 0, 1), ("pl_decay", 0, 1), ("truncation_psi", 0, 1)):
                v = getattr(self, name)
                if not (_finite(v) and lo <= v <= hi):
                    raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
            for name in ("pl_weight", "ema_kimg") + (("ema_rampup",) if self.ema_rampup is not None else ()):
                v = getattr(self, name)
                if not (_finite(v) and v >= 0) or (name == "ema_kimg" and v == 0):
                    raise ValueError(f"{name} must be a finite number {'>' if name == 'ema_kimg' else '>='} 0, "
                                     f"got {v!r}")
        elif self.resolution not in RESOLUTIONS:
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
        for name in ("resize", "xflip", "conditional"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.crop == "random" and not self.resize:
            raise ValueError("crop 'random' (--crop random) crops after the resize: it needs resize=True (--resize)")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if self.eval_every is not None:
            positive_int("eval_every")
        names = parse_eval_metrics(self.eval_metrics)
        positive_int("eval_n")
        need = max(EVAL_MIN_N[m] for m in names)
        if self.eval_n < need:
            which = ", ".join(m for m in names if EVAL_MIN_N[m] == need)
            raise ValueError(f"eval_n {self.eval_n} is too few images for {which}: at least {need} (FID and KID need "
                             f"2, precision/recall 4; a few hundred give numbers worth comparing)")
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


def parse_eval_metrics(spec) -> tuple[str, ...]:
    """``"fid,kid"`` (or a list) -> the metric names, lowercased, in order, without repeats; an
    unknown or missing name is a ValueError that lists EVAL_METRICS."""
    if isinstance(spec, str):
        items = spec.split(",")
    elif isinstance(spec, (list, tuple)) and all(isinstance(s, str) for s in spec):
        items = list(spec)
    else:
        raise ValueError(f"eval_metrics must be a comma-separated string such as 'fid,kid', got {spec!r}")
    names = [s.strip().lower() for s in items if s.strip()]
    unknown = [s for s in names if s not in EVAL_METRICS]
    if unknown:
        raise ValueError(f"eval_metrics: unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"choose from {', '.join(EVAL_METRICS)}")
    if not names:
        raise ValueError(f"eval_metrics: no metric given; choose from {', '.join(EVAL_METRICS)}")
    return tuple(dict.fromkeys(names))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
