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

Class-conditional (``n_classes > 0``; 0 builds exactly the unconditional models, same state_dict):
G: x = [z, E_G c] (a learned embedding of the class, ``embed_dim`` wide, default z_dim,
   concatenated to z) -> the same network with z_dim + embed_dim input channels. E_G starts at
   N(0, 0.02), small next to z: started at N(0, 1), the class code switched off every unit of
   the second block (BatchNorm + ReLU) for two of the three shape classes within 200 steps.
D: the projection discriminator (Miyato & Koyama 2018), logit = linear(phi(x)) + <E_D c, phi(x)>,
   phi(x) the last 4x4 feature map flattened (C * 16 values) and linear the 4x4 conv to one logit.
   E_D starts at N(0, 0.02) like the conv weights.
c is a class index per image (int64 [N]) or a one-hot / soft label [N, n_classes] (then E c is
c @ E: one-hot rows give the index's embedding). ``embed`` is an ``nn.Embedding`` in both the
fused and the plain models.
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


def _check_classes(n_classes) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 0 or n_classes == 1:
        raise ValueError(f"n_classes must be 0 (unconditional) or an int >= 2, got {n_classes!r}")
    return n_classes


def class_embedding(embed: nn.Embedding, c, n: int) -> torch.Tensor:
    """E c for a batch of ``n``: c int [n] (class indices) or float [n, n_classes] (one-hot or soft)."""
    k = embed.num_embeddings
    if not isinstance(c, torch.Tensor):
        raise ValueError(f"this model is class-conditional ({k} classes): pass the labels c, int64 [N] or one-hot "
                         f"[N, {k}]")
    if c.dim() == 1 and not c.is_floating_point() and c.dtype != torch.bool and c.shape[0] == n:
        return embed(c.long())
    if c.dim() == 2 and c.is_floating_point() and tuple(c.shape) == (n, k):
        return c.to(embed.weight.dtype) @ embed.weight
    raise ValueError(f"labels c must be class indices (int64 [{n}]) or one-hot [{n}, {k}], got {c.dtype} "
                     f"{list(c.shape)}")


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
                 fused: bool = True, n_classes: int = 0, embed_dim: int | None = None):
        super().__init__()
        stages = _check(resolution, width)
        self.z_dim, self.resolution, self.width, self.channels, self.fused = z_dim, resolution, width, channels, fused
        self.n_classes = _check_classes(n_classes)
        self.embed_dim = (embed_dim or z_dim) if n_classes else 0
        if n_classes:
            self.embed = nn.Embedding(n_classes, self.embed_dim)
        ch = [width * 2 ** i for i in reversed(range(stages))]  # e.g. 64x64: [8w, 4w, 2w, w]
        blocks = [_UpBlock(z_dim + self.embed_dim, ch[0], 4, 1, 0, fused)]  # 1x1 -> 4x4
        blocks += [_UpBlock(a, b, 4, 2, 1, fused) for a, b in zip(ch[:-1], ch[1:])]
        self.blocks = nn.Sequential(*blocks)
        if fused:
            from ..nn import ConvTranspose2dAct

            self.to_rgb = ConvTranspose2dAct(ch[-1], channels, 4, 2, 1, bias=False, act="tanh")
        else:
            self.to_rgb = nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1, bias=False)
        dcgan_init_(self)
        if n_classes:  # N(0, 0.02) too: a class code as large as z (N(0, 1)) let BatchNorm + ReLU switch off
            nn.init.normal_(self.embed.weight, 0.0, 0.02)  # whole classes early in training (measured)

    @torch.jit.unused  # torch.jit.script of an unconditional G (the README's export recipe) skips it
    def _with_class_code(self, z, c):
        return torch.cat([z, class_embedding(self.embed, c, z.shape[0]).to(z.dtype)], dim=1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """z [N, z_dim] (and, conditional, c: int64 [N] or one-hot [N, n_classes]) -> images [N, C, R, R]."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {list(z.shape)}")
        if self.n_classes:
            if c is None:
                raise ValueError(f"this model is class-conditional ({self.n_classes} classes): pass the labels c, "
                                 f"int64 [N] or one-hot [N, {self.n_classes}]")
            z = self._with_class_code(z, c)
        elif c is not None:
            raise ValueError("this generator is unconditional: it takes no labels c")
        x = self.to_rgb(self.blocks(z[:, :, None, None]))
        return x if self.fused else torch.tanh(x)


class Discriminator(nn.Module):
    # no normalisation layer: a sample's logit depends on that sample only, so a batch of real and
    # fake images can go through D in one call (the trainer does)
    per_sample = True

    def __init__(self, resolution: int = 32, width: int = 64, channels: int = 3, fused: bool = True,
                 n_classes: int = 0):
        super().__init__()
        stages = _check(resolution, width)
        self.resolution, self.width, self.channels, self.fused = resolution, width, channels, fused
        self.n_classes = _check_classes(n_classes)
        ch = [width * 2 ** i for i in range(stages)]  # e.g. 64x64: [w, 2w, 4w, 8w]
        self.blocks = nn.Sequential(*[_DownBlock(a, b, fused) for a, b in zip([channels] + ch[:-1], ch)])
        if fused:
            from ..nn import Conv2dAct

            self.to_logit = Conv2dAct(ch[-1], 1, 4, 1, 0)
        else:
            self.to_logit = nn.Conv2d(ch[-1], 1, 4, 1, 0)
        if n_classes:  # the projection: one embedding of the 4x4 feature map per class
            self.embed = nn.Embedding(n_classes, ch[-1] * 16)
        dcgan_init_(self)
        if n_classes:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """images [N, C, R, R] (and, conditional, c: int64 [N] or one-hot [N, n_classes]) -> logits [N]."""
        if x.dim() != 4 or x.shape[1:] != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"images must have shape [N, {self.channels}, {self.resolution}, {self.resolution}], "
                             f"got {list(x.shape)}")
        h = self.blocks(x)
        logits = self.to_logit(h).flatten()  # one logit per image
        if self.n_classes:  # + <E c, phi(x)>
            e = class_embedding(self.embed, c, x.shape[0])
            logits = logits + (e.to(h.dtype) * h.flatten(1)).sum(1).to(logits.dtype)
        elif c is not None:
            raise ValueError("this discriminator is unconditional: it takes no labels c")
        return logits


def build_dcgan(resolution: int = 32, z_dim: int = 128, g_width: int = 64, d_width: int = 64,
                fused: bool = True, n_classes: int = 0) -> tuple[Generator, Discriminator]:
    """(G, D); ``n_classes > 0``: the class-conditional pair (module doc)."""
    return (Generator(z_dim, resolution, g_width, fused=fused, n_classes=n_classes),
            Discriminator(resolution, d_width, fused=fused, n_classes=n_classes))
