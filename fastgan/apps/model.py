"""A trained generator from a checkpoint, its latents and its images, for the apps."""
from __future__ import annotations

import hashlib

import torch


def file_sha256(path: str) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_generator(path: str, ema: bool = True, device="cpu"):
    """(G in eval mode, TrainConfig, verified checkpoint state) from a ``fastgan train``
    checkpoint (DCGAN or StyleGAN2); every problem is a one-line ``CheckpointError``. ``ema``: the
    moving average of G's weights (what samples use) rather than G. On the CPU the plain-torch twin
    of the model is built (the same parameters and function, no kernel interpreter).
    ``G.classes``: a class-conditional model's class names (label k is ``classes[k]``), else None."""
    from ..models import Generator, build_stylegan2
    from ..train import CheckpointError, TrainConfig, load_checkpoint

    device = resolve_device(device)
    state = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(state["config"])
        classes = state.get("classes")
        if cfg.conditional and not (isinstance(classes, list) and len(classes) >= 2):
            raise ValueError(f"a conditional run's checkpoint without its class names (classes: {classes!r})")
        n_classes = len(classes) if cfg.conditional else 0
        fused = cfg.fused and device.type == "cuda"
        if cfg.model == "stylegan2":
            G = build_stylegan2(cfg.resolution, cfg.z_dim, cfg.z_dim, n_classes, cfg.channel_base, cfg.channel_max,
                                cfg.mapping_layers, fused=fused)[0]
        else:
            G = Generator(cfg.z_dim, cfg.resolution, cfg.g_width, fused=fused, n_classes=n_classes)
        G.load_state_dict(state["G_ema" if ema else "G"])
        G.classes = tuple(str(c) for c in classes) if n_classes else None
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the generator cannot be built from this checkpoint: "
                              f"{(str(exc).splitlines() or [type(exc).__name__])[0][:300]}") from None
    return G.to(device).eval(), cfg, state


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s latent: a hash of (seed, index), so that every image depends on
    its own index only (not on batch boundaries or on what was generated before it)."""
    digest = hashlib.sha256(f"fastgan-latent:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def latents(seed: int, start: int, stop: int, z_dim: int) -> torch.Tensor:
    """z [stop - start, z_dim] for images ``start .. stop - 1``: row i is N(0, I) drawn from a
    generator seeded with ``image_seed(seed, i)``."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(image_seed(seed, i)))
                        for i in range(start, stop)]) if stop > start else torch.empty(0, z_dim)


def num_classes(G) -> int:
    """The number of classes of a conditional G (DCGAN ``n_classes``, StyleGAN2 ``c_dim``), 0 if unconditional."""
    return int(getattr(G, "n_classes", 0) or getattr(G, "c_dim", 0) or 0)


@torch.no_grad()
def generate_batch(G, seed: int, start: int, stop: int, truncation: float = 1.0,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """G's images [stop - start, 3, R, R] in [-1, 1] (float32, CPU) for images ``start .. stop - 1``.
    ``truncation`` psi in (0, 1]: DCGAN: the latents are scaled by psi towards the prior's mean 0 (the
    truncation trick for a generator without a mapping network: less variety, more typical images);
    StyleGAN2: w <- w_avg + psi (w - w_avg), with the constant noise. ``labels`` (a conditional G):
    the class index of each image (default: image i is of class i mod n_classes)."""
    device = next(G.parameters()).device
    z = latents(seed, start, stop, G.z_dim)
    k = num_classes(G)
    c = None
    if k:
        labels = torch.arange(start, stop) % k if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (stop - start,):
            raise ValueError(f"labels must have shape [{stop - start}], got {list(labels.shape)}")
        c = labels.to(device)
    if hasattr(G, "mapping"):  # StyleGAN2: truncation in w, c one-hot
        if c is not None:
            c = torch.nn.functional.one_hot(c, k).float()
        return G(z.to(device), c, truncation_psi=truncation, noise_mode="const").float().clamp(-1, 1).cpu()
    z = (z * truncation).to(device)
    return (G(z) if c is None else G(z, c)).float().clamp(-1, 1).cpu()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images [N, C, H, W] -> uint8 [N, H, W, C] (round((x + 1) * 127.5))."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
