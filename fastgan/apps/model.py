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
    checkpoint; every problem is a one-line ``CheckpointError``. ``ema``: the moving average of
    G's weights (what samples use) rather than G. On the CPU the plain-torch twin of the model is
    built (the same parameters and function, no kernel interpreter)."""
    from ..models import Generator
    from ..train import CheckpointError, TrainConfig, load_checkpoint

    device = resolve_device(device)
    state = load_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict(state["config"])
        G = Generator(cfg.z_dim, cfg.resolution, cfg.g_width, fused=cfg.fused and device.type == "cuda")
        G.load_state_dict(state["G_ema" if ema else "G"])
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


@torch.no_grad()
def generate_batch(G, seed: int, start: int, stop: int, truncation: float = 1.0) -> torch.Tensor:
    """G's images [stop - start, 3, R, R] in [-1, 1] (float32, CPU) for images ``start .. stop - 1``.
    ``truncation`` psi in (0, 1]: the latents are scaled by psi towards the prior's mean 0 (the
    truncation trick for a generator without a mapping network: less variety, more typical images)."""
    device = next(G.parameters()).device
    z = latents(seed, start, stop, G.z_dim) * truncation
    return G(z.to(device)).float().clamp(-1, 1).cpu()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images [N, C, H, W] -> uint8 [N, H, W, C] (round((x + 1) * 127.5))."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
