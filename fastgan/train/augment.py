"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al. 2020), written from the paper.

Every transform is linear in the image for fixed random parameters (drawn per sample from the
given generator), so D(augment(x)) is differentiable to any order with respect to x and R1
through the augmentation is exact:

    color:       x <- x + (u1 - 1/2);  x <- m_c + 2 u2 (x - m_c);  x <- m + (u3 + 1/2) (x - m)
                 (brightness, saturation about the per-pixel channel mean m_c, contrast about the
                 image mean m; u ~ U(0, 1))
    translation: x[i, j] <- x[i + dy, j + dx], |dy| <= ratio H, |dx| <= ratio W, zeros outside
    cutout:      zero a (ratio H) x (ratio W) rectangle centred at a random pixel (clipped)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import AUGMENTS

__all__ = ["AUGMENTS", "DIFFAUG_POLICY", "diff_augment"]

DIFFAUG_POLICY = ("color", "translation", "cutout")


def _rand(n, x, generator):
    return torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)


def _color(x, generator):
    n = x.shape[0]
    x = x + (_rand(n, x, generator) - 0.5)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (_rand(n, x, generator) * 2) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (_rand(n, x, generator) + 0.5) + m


def _translation(x, generator, ratio):
    n, _, h, w = x.shape
    th, tw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-th, th + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(-tw, tw + 1, (n, 1, 1), device=x.device, generator=generator)
    iy = torch.arange(h, device=x.device)[None, :, None] + dy + th   # [n, h, 1] rows of the padded image
    ix = torch.arange(w, device=x.device)[None, None, :] + dx + tw   # [n, 1, w]
    padded = F.pad(x, [tw, tw, th, th])
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, iy, ix].permute(0, 3, 1, 2)  # [n, h, w, c] -> NCHW


def _cutout(x, generator, ratio):
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=generator)
    yy = torch.arange(h, device=x.device)[None, :, None] - (cy - ch // 2)
    xx = torch.arange(w, device=x.device)[None, None, :] - (cx - cw // 2)
    inside = (yy >= 0) & (yy < ch) & (xx >= 0) & (xx < cw)
    return x * (~inside)[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, generator: torch.Generator | None = None, policy=DIFFAUG_POLICY,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5) -> torch.Tensor:
    """DiffAugment of images x [N, C, H, W] (module doc); randomness from ``generator``."""
    for name in policy:
        if name == "color":
            x = _color(x, generator)
        elif name == "translation":
            x = _translation(x, generator, translation_ratio)
        elif name == "cutout":
            x = _cutout(x, generator, cutout_ratio)
        else:
            raise ValueError(f"unknown DiffAugment transform {name!r}; expected some of {DIFFAUG_POLICY}")
    return x
