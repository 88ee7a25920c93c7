"""DCGAN generator and discriminator for 32x32 and 64x64 images.

Built from fastgan.nn (``fused=True``, the default) or from plain torch modules
(``fused=False``), with *identical* parameter names and shapes, so one state_dict loads into
either and the two can be compared step by step.

G: z [N, z_dim] -> 4x4 transposed conv -> (transposed conv 4x4 stride 2 + BatchNorm + ReLU)
   per doubling -> transposed conv to 3 channels + tanh.
D: (conv 4x4 stride 2 + LeakyReLU(0.2)) per halving -> conv 4x4 to one logit per image.
   D has no normalisation layer: gradient penalties (R1, WGAN-GP) are per-sample and batch
   statistics would couple the samples (the WGAN-GP paper drops batch norm in the critic too).
Activations use torch's conventions (gain 1), so the fused and the plain models compute the
same function. Weights start from the DCGAN initialisation N(0, 0.02).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

LRELU_SLOPE = 0.2


def _check(resolution: int, width: int) -> int:
    if resolution not in (32, 64):
        raise ValueError(f"resolution must be 32 or 64, got {resolution}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    return int(math.log2(resolution)) - 2  # number of stride-2 stages after/before the 4x4 level


def dcgan_init_(module: nn.Module) -> None:
    """The DCGAN initialisation: conv weights N(0, 0.02), batch-norm weights N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class _UpBlock(nn.Module):
    """Transposed conv (no bias) -> batch norm -> ReLU."""

    def __init__(self, cin, cout, kernel, stride, padding, fused):
        super().__init__()
        self.fused = fused
        if fused:
            from ..nn import BatchNormAct2d, ConvTranspose2dAct

            self.conv = ConvTranspose2dAct(cin, cout, kernel, stride, padding, bias=False)
            self.conv.bn_partials = True  # the batch norm's statistics come from the conv's epilogue
            self.bn = BatchNormAct2d(cout, act="relu", gain=1.0)
        else:
            self.conv = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, bias=False)
            self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.fused else F.relu(x)


class _DownBlock(nn.Module):
    """Conv 4x4 stride 2 (with bias) -> LeakyReLU(0.2)."""

    def __init__(self, cin, cout, fused):
        super().__init__()
        self.fused, self.slope = fused, LRELU_SLOPE
        if fused:
            from ..nn import Conv2dAct

            self.conv = Conv2dAct(cin, cout, 4, 2, 1, act="lrelu", alpha=LRELU_SLOPE, gain=1.0)
        else:
            self.conv = nn.Conv2d(cin, cout, 4, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        return x if self.fused else F.leaky_relu(x, self.slope)


class Generator(nn.Module):
    def __init__(self, z_dim: int = 128, resolution: int = 32, width: int = 64, channels: int = 3,
                 fused: bool = True):
        super().__init__()
        stages = _check(resolution, width)
        self.z_dim, self.resolution, self.width, self.channels, self.fused = z_dim, resolution, width, channels, fused
        ch = [width * 2 ** i for i in reversed(range(stages))]  # e.g. 64x64: [8w, 4w, 2w, w]
        blocks = [_UpBlock(z_dim, ch[0], 4, 1, 0, fused)]        # 1x1 -> 4x4
        blocks += [_UpBlock(a, b, 4, 2, 1, fused) for a, b in zip(ch[:-1], ch[1:])]
        self.blocks = nn.Sequential(*blocks)
        if fused:
            from ..nn import ConvTranspose2dAct

            self.to_rgb = ConvTranspose2dAct(ch[-1], channels, 4, 2, 1, bias=False, act="tanh")
        else:
            self.to_rgb = nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1, bias=False)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {list(z.shape)}")
        x = self.to_rgb(self.blocks(z[:, :, None, None]))
        return x if self.fused else torch.tanh(x)


class Discriminator(nn.Module):
    # no normalisation layer: a sample's logit depends on that sample only, so a batch of real and
    # fake images can go through D in one call (the trainer does)
    per_sample = True

    def __init__(self, resolution: int = 32, width: int = 64, channels: int = 3, fused: bool = True):
        super().__init__()
        stages = _check(resolution, width)
        self.resolution, self.width, self.channels, self.fused = resolution, width, channels, fused
        ch = [width * 2 ** i for i in range(stages)]  # e.g. 64x64: [w, 2w, 4w, 8w]
        self.blocks = nn.Sequential(*[_DownBlock(a, b, fused) for a, b in zip([channels] + ch[:-1], ch)])
        if fused:
            from ..nn import Conv2dAct

            self.to_logit = Conv2dAct(ch[-1], 1, 4, 1, 0)
        else:
            self.to_logit = nn.Conv2d(ch[-1], 1, 4, 1, 0)
        dcgan_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"images must have shape [N, {self.channels}, {self.resolution}, {self.resolution}], "
                             f"got {list(x.shape)}")
        return self.to_logit(self.blocks(x)).flatten()  # one logit per image


def build_dcgan(resolution: int = 32, z_dim: int = 128, g_width: int = 64, d_width: int = 64,
                fused: bool = True) -> tuple[Generator, Discriminator]:
    return (Generator(z_dim, resolution, g_width, fused=fused),
            Discriminator(resolution, d_width, fused=fused))
