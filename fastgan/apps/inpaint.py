"""Image repair by GAN inversion: ``inpaint(G, images, holes)``.

For each image x with hole mask h (1 = missing pixel, 0 = known), find a latent z such that
G(z) matches x where x is known, then blend G(z) into the hole:

    L(z) = mean_known (G(z) - x)^2                                   (masked L2)
         + perceptual * mean (phi((1 - h) G(z)) - phi((1 - h) x))^2   (feature-net conv features)
         + prior * mean(z^2)                                         (Gaussian prior on z)

minimised with Adam from ``restarts`` random starts per image; the start with the lowest final
masked L2 is kept. Blend with a feathered mask ``w = max(h, blur_sigma(h))`` (1 in the hole,
decaying over about ``feather`` pixels outside it): ``out = (1 - w) x + w G(z)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class InpaintError(ValueError):
    """Images and masks that cannot be repaired (sizes, empty or full masks, unreadable files)."""


def check_inputs(images: torch.Tensor, holes: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 3, R, R] float32, holes [N, 1, R, R] in {0, 1}) or an ``InpaintError``."""
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise InpaintError(f"images must have shape [N, 3, H, W], got {list(images.shape)}")
    if holes.dim() == 2:
        holes = holes[None]
    if holes.dim() == 3:
        holes = holes[:, None]
    if holes.dim() != 4 or holes.shape[1] != 1:
        raise InpaintError(f"masks must have shape [N, 1, H, W] or [N, H, W], got {list(holes.shape)}")
    if holes.shape[0] != images.shape[0] or holes.shape[-2:] != images.shape[-2:]:
        raise InpaintError(f"the mask size {list(holes.shape[-2:])} (x{holes.shape[0]}) differs from the image size "
                           f"{list(images.shape[-2:])} (x{images.shape[0]})")
    if tuple(images.shape[-2:]) != (resolution, resolution):
        raise InpaintError(f"the images are {images.shape[-1]}x{images.shape[-2]} but the model makes "
                           f"{resolution}x{resolution} images")
    if not torch.isfinite(images).all():
        raise InpaintError("the images contain NaN or Inf")
    holes = (holes > 0.5).float()
    area = holes.flatten(1).mean(1)
    if (area == 0).any():
        raise InpaintError(f"mask {int((area == 0).nonzero()[0])} is empty: it marks no pixel to repair")
    if (area == 1).any():
        raise InpaintError(f"mask {int((area == 1).nonzero()[0])} covers the whole image: no known pixel to match")
    return images.float(), holes


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def feathered(holes: torch.Tensor, feather: float) -> torch.Tensor:
    """The blend weight: 1 inside the hole, a Gaussian ramp (sigma ``feather`` px) outside it."""
    return holes if feather <= 0 else torch.maximum(holes, _blur(holes, feather))


def blurred_fill(images: torch.Tensor, holes: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """A baseline: the hole filled with the normalised Gaussian blur of the known pixels."""
    known = 1 - holes
    num, den = _blur(images * known, sigma), _blur(known, sigma)
    fill = torch.where(den > 1e-6, num / den.clamp_min(1e-6), (images * known).sum((2, 3), keepdim=True)
                       / known.sum((2, 3), keepdim=True))
    return images * known + fill * holes


def inpaint(G, images: torch.Tensor, holes: torch.Tensor, steps: int = 200, restarts: int = 4, lr: float = 0.05,
            perceptual: float = 0.01, prior: float = 1e-3, feather: float = 1.0, seed: int = 0, extractor=None):
    """Repair ``images`` ([N, 3, R, R] in [-1, 1]) where ``holes`` ([N, 1, R, R] or [N, R, R], 1 =
    missing) with the generator G (module doc). ``extractor``: a ``FeatureExtractor`` whose module
    has ``body`` (the shapes feature net, the default) for the perceptual term; ``perceptual=0``
    drops it. Returns (repaired images, G's full reconstructions), both [N, 3, R, R] on the CPU."""
    images, holes = check_inputs(images, holes, G.resolution)
    if steps < 1 or restarts < 1:
        raise InpaintError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    device = next(G.parameters()).device
    was_training, grads = G.training, [p.requires_grad for p in G.parameters()]
    G.eval()
    for p in G.parameters():
        p.requires_grad_(False)
    phi = None
    if perceptual > 0:
        if extractor is None:
            from .features import get_extractor

            extractor = get_extractor(device=device)
        phi = extractor.module.body
        for p in extractor.module.parameters():
            p.requires_grad_(False)
    n, k = images.shape[0], restarts
    x = images.to(device).repeat_interleave(k, 0)
    known = (1 - holes).to(device).repeat_interleave(k, 0)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n * k, G.z_dim, generator=g).to(device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    target = phi(x * known).detach() if phi is not None else None
    denom = known.sum((1, 2, 3)) * 3
    try:
        for _ in range(steps):
            y = G(z)
            l2 = ((y - x) ** 2 * known).sum((1, 2, 3)) / denom
            loss = l2 + prior * z.square().mean(1)
            if phi is not None:
                loss = loss + perceptual * (phi(y * known) - target).square().flatten(1).mean(1)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            y = G(z)
            l2 = ((y - x) ** 2 * known).sum((1, 2, 3)) / denom
    finally:
        G.train(was_training)
        for p, r in zip(G.parameters(), grads):
            p.requires_grad_(r)
    best = l2.view(n, k).argmin(1)
    recon = y.view(n, k, *y.shape[1:])[torch.arange(n), best].detach().float().cpu()
    w = feathered(holes, feather)
    return images * (1 - w) + recon * w, recon


# ----------------------------------------------------------------------------- files

def _read_mask(path: str) -> torch.Tensor:
    """A mask image -> [1, H, W] in {0, 1}: white (>= 128 in grayscale) marks the hole."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InpaintError(f"{path}: unreadable mask image ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy((arr >= 128).astype("float32"))[None]


def _pairs(image: str, mask: str, out: str) -> list[tuple[str, str, str]]:
    """(image, mask, output) files: one image, or every image in a folder (with a mask folder of
    the same file names, or one mask for all)."""
    import os

    from ..data import IMAGE_EXTENSIONS

    if not os.path.exists(image):
        raise InpaintError(f"{image}: no such image file or folder")
    if not os.path.exists(mask):
        raise InpaintError(f"{mask}: no such mask file or folder")
    if os.path.isfile(image):
        if os.path.isdir(mask):
            raise InpaintError(f"--mask {mask} is a folder but --image {image} is one file")
        target = os.path.join(out, os.path.basename(image)) if os.path.isdir(out) else out
        return [(image, mask, os.path.splitext(target)[0] + ".png")]
    names = sorted(f for f in os.listdir(image) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise InpaintError(f"{image}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InpaintError(f"--out {out}: a file is in the way (a folder of images needs an output folder)")
    pairs = []
    for f in names:
        m = os.path.join(mask, f) if os.path.isdir(mask) else mask
        if not os.path.isfile(m):
            raise InpaintError(f"{m}: no mask for {os.path.join(image, f)} (the mask folder needs the same file names)")
        pairs.append((os.path.join(image, f), m, os.path.join(out, os.path.splitext(f)[0] + ".png")))
    return pairs


def inpaint_files(checkpoint: str, image: str, mask: str, out: str, ema: bool = True, device="cpu",
                  batch_size: int = 16, log=None, **options) -> list[str]:
    """Repair one image file or a folder of them (``_pairs``); writes PNGs atomically and returns
    their paths. Every input is read and checked before anything is optimised."""
    from ..atomic import atomic_write
    from ..data import DataError, _decode
    from .model import load_generator, to_uint8

    pairs = _pairs(image, mask, out)
    G, cfg, _ = load_generator(checkpoint, ema=ema, device=device)
    if cfg.model != "dcgan" or G.classes:
        raise InpaintError(f"{checkpoint}: inpaint inverts an unconditional DCGAN; this checkpoint is "
                           f"{'a conditional ' if G.classes else 'a '}{cfg.model} (not supported yet)")
    images, holes = [], []
    for img_path, mask_path, _ in pairs:
        try:
            x = _decode(img_path)
        except DataError as exc:
            raise InpaintError(str(exc)) from None
        h = _read_mask(mask_path)
        if h.shape[-2:] != x.shape[-2:]:
            raise InpaintError(f"{mask_path}: the mask is {h.shape[-1]}x{h.shape[-2]} but the image {img_path} is "
                               f"{x.shape[-1]}x{x.shape[-2]}")
        try:
            check_inputs(x[None], h[None], cfg.resolution)
        except InpaintError as exc:
            raise InpaintError(f"{img_path}: {exc}") from None
        images.append(x)
        holes.append(h)
    written = []
    from PIL import Image

    for start in range(0, len(pairs), batch_size):
        stop = min(len(pairs), start + batch_size)
        result, _ = inpaint(G, torch.stack(images[start:stop]), torch.stack(holes[start:stop]), **options)
        for arr, (_, _, target) in zip(to_uint8(result).numpy(), pairs[start:stop]):
            atomic_write(target, lambda f, a=arr: Image.fromarray(a).save(f, format="PNG"), binary=True)
            written.append(target)
            if log:
                log(f"wrote {target}")
    return written
