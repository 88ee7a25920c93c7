"""A StyleGAN2-class generator and discriminator (Karras et al., "Analyzing and Improving the Image
Quality of StyleGAN", CVPR 2020), written from the paper on fastgan's fused ops.

Mapping network (z -> w):
    z <- z / sqrt(mean(z^2) + 1e-8)            (and, for c_dim > 0, the same for embed(c), concatenated)
    w = FC_L(...FC_1(z))                       FC: lrelu(x W^T g + b lr) sqrt(2), g = lr / sqrt(in), lr = 0.01
    w_avg <- w_avg + (1 - beta) (mean_batch(w) - w_avg) while training (beta 0.995)
    truncation: w <- w_avg + psi (w - w_avg) on the first ``truncation_cutoff`` layers (None: all)

Synthesis network (w [N, num_ws, w_dim] -> image):
    x = const [C4, 4, 4];  per resolution r = 4, 8, ..., R:
        (r > 4) x = modconv3x3(x, up=2),  x = modconv3x3(x),  img = upsample_FIR(img) + ToRGB(x)
    modconv: s = A(w) (affine, bias init 1); W'[n,o,i,k] = W[o,i,k] s[n,i] d[n,o],
             d[n,o] = 1 / sqrt(sum_{i,k} (W[o,i,k] s[n,i])^2 + 1e-8)   (demodulation)
             y = clamp(lrelu(conv(x, W') + strength * noise + b) sqrt(2), -conv_clamp, conv_clamp)
    ToRGB: 1x1 modconv without demodulation, s scaled by 1 / sqrt(in), + bias, clamped.
    The up-convolution and the RGB skip path upsample with the FIR filter [1, 3, 3, 1].

Discriminator (residual, image -> logit):
    x = FromRGB(img) (1x1 conv, lrelu);  per resolution r = R, ..., 8:
        y = skip1x1(downsample_FIR(x)) sqrt(1/2);  x = conv3x3_down2(conv3x3(x)) sqrt(1/2) + y
    epilogue at 4x4: minibatch stddev (groups of 4, one feature), conv3x3, FC, FC -> 1
    (c_dim > 0: projection, logit = sum(out * cmap) / sqrt(cmap_dim), cmap = a mapping network of c).
    Every conv and FC has equalised learning rate (weight ~ N(0, 1), scaled by 1 / sqrt(fan_in) at run time).

Channels at resolution r: min(channel_base // r, channel_max). ``fused=True`` runs fastgan's
ops (modulated_conv2d, conv2d_resample, upsample2d, downsample2d, bias_act, linear_act);
``fused=False`` the same network in plain torch (F.conv2d, F.linear, the FIR filter as a
depthwise F.conv2d): the parameters and buffers have the same names in both, so state_dicts
load across. ``num_bf16_res`` top resolutions run in bfloat16 on CUDA (ignored on the CPU).

The minibatch-stddev layer couples the samples of a group, so D is not per-sample
(``per_sample = False``): real and fake batches go through D separately.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as FG

__all__ = ["MappingNetwork", "SynthesisNetwork", "Generator", "Discriminator", "build_stylegan2", "channels_at",
           "FIR_TAPS"]

FIR_TAPS = [1, 3, 3, 1]
BF16_DEVICES = ("cuda",)  # where the num_bf16_res top resolutions run in bfloat16
SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at resolution ``res``: min(channel_base // res, channel_max)."""
    return min(channel_base // res, channel_max)


def _check_arch(resolution, channel_base, channel_max, img_channels, min_res: int = 16) -> int:
    """Validate; returns log2(resolution)."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise ValueError(f"resolution must be an int, got {resolution!r}")
    resolution = int(resolution)
    if resolution < 1 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two, got {resolution}")
    if not min_res <= resolution <= 1024:
        raise ValueError(f"resolution must be a power of two from {min_res} to 1024, got {resolution}")
    for name, v in (("channel_base", channel_base), ("channel_max", channel_max), ("img_channels", img_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if channel_base // resolution < 1:
        raise ValueError(f"channel_base {channel_base} gives {channel_base // resolution} channels at "
                         f"{resolution}x{resolution} (channels at r = min(channel_base // r, channel_max)); "
                         f"channel_base must be at least the resolution {resolution}")
    return int(math.log2(resolution))


def _positive_int(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


# ----------------------------------------------------------------------------- plain-torch FIR helpers

def _fir_depthwise(x: torch.Tensor, f: torch.Tensor, pad: tuple, stride: int = 1, gain: float = 1.0):
    """Pad x by (before, after) on both axes and convolve every channel with the 2-d filter f
    (true convolution: f flipped), keeping every ``stride``-th pixel."""
    c = x.shape[1]
    w = (f.flip([0, 1]) * gain).to(x.dtype)[None, None].expand(c, 1, *f.shape)
    return F.conv2d(F.pad(x, [pad[0], pad[1], pad[0], pad[1]]), w, stride=stride, groups=c)


def _zero_insert(x: torch.Tensor, up: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    u = x.new_zeros(n, c, h * up, w * up)
    u[:, :, ::up, ::up] = x
    return u


def _plain_upsample(x, f, extra=(0, 0)):
    """StyleGAN's 2x FIR upsampling: zero insertion, centring padding, the filter times 4."""
    p0, p1 = _centering_up(f.shape[0])
    return _fir_depthwise(_zero_insert(x), f, (p0 + extra[0], p1 + extra[1]), gain=4.0)


def _centering_up(taps: int, up: int = 2):
    return (taps + up - 1) // 2, (taps - up) // 2


def _centering_down(taps: int, down: int = 2):
    return (taps - down + 1) // 2, (taps - down) // 2


def _plain_bias_act(x, b, act: str, gain: float, clamp: Optional[float]):
    """clamp(act(x + b) * gain) in plain torch (channel dim 1 for 4-d x, last dim for 2-d)."""
    if b is not None:
        x = x + (b.to(x.dtype).reshape(1, -1, 1, 1) if x.dim() == 4 else b.to(x.dtype))
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision activations back to float32 (float32 and float64 unchanged)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _act_gain(act: str) -> float:
    return SQRT2 if act == "lrelu" else 1.0


# ----------------------------------------------------------------------------- layers

class FullyConnected(nn.Module):
    """Equalised-lr FC: y = act(x (W g)^T + b lr) with g = lr_mul / sqrt(in), W ~ N(0, 1 / lr_mul^2)."""

    def __init__(self, in_features, out_features, act="linear", lr_mul=1.0, bias_init=0.0, fused=True):
        super().__init__()
        self.act, self.fused, self.lr_mul = act, fused, lr_mul
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)

    def forward(self, x):
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = (self.bias * self.lr_mul).to(x.dtype)
        if self.fused:
            return FG.linear_act(x, w, b, act=self.act)
        return _plain_bias_act(F.linear(x, w), b, self.act, _act_gain(self.act), None)


class Conv2dLayer(nn.Module):
    """Equalised-lr conv (k x k, 'same' padding) with optional FIR downsampling by 2, bias,
    activation, output gain and clamp: clamp(act(conv(x, W / sqrt(in k^2)) + b) * act_gain * gain)."""

    def __init__(self, cin, cout, kernel, act="lrelu", down=1, bias=True, gain=1.0, conv_clamp=None, fused=True):
        super().__init__()
        self.act, self.down, self.gain, self.fused, self.kernel = act, down, gain, fused, kernel
        self.conv_clamp = conv_clamp
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(cin * kernel * kernel)
        self.register_buffer("resample_filter", FG.setup_filter(FIR_TAPS), persistent=False)

    def forward(self, x):
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        gain = _act_gain(self.act) * self.gain
        clamp = None if self.conv_clamp is None else self.conv_clamp * self.gain
        pad = self.kernel // 2
        f = self.resample_filter
        if self.fused:
            if self.down == 1:
                return FG.conv2d_act(x, w, b, padding=pad, act=self.act, gain=gain, clamp=clamp)
            y = FG.conv2d_resample(x, w, f, down=self.down, padding=pad)
            if b is None and self.act == "linear" and gain == 1 and clamp is None:
                return y
            return FG.bias_act(y, b, act=self.act, gain=gain, clamp=clamp)
        if self.down == 1:
            y = F.conv2d(x, w, padding=pad)
        elif self.kernel == 1:  # filter and decimate, then the 1x1 conv (they commute)
            y = F.conv2d(_fir_depthwise(x, f, _centering_down(f.shape[0]), stride=2), w)
        else:  # pad (conv + centring), conv, filter + decimate
            c0, c1 = _centering_down(f.shape[0])
            y = F.conv2d(F.pad(x, [pad + c0, pad + c1] * 2), w)
            y = _fir_depthwise(y, f, (0, 0), stride=2)
        return _plain_bias_act(y, b, self.act, gain, clamp)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally up 2) with demodulation, noise of learned strength, bias,
    lrelu and clamp."""

    def __init__(self, cin, cout, w_dim, resolution, up=1, conv_clamp=None, fused=True):
        super().__init__()
        self.up, self.fused, self.conv_clamp, self.resolution = up, fused, conv_clamp, resolution
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0, fused=fused)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.register_buffer("resample_filter", FG.setup_filter(FIR_TAPS), persistent=False)

    def _noise(self, x, noise_mode, generator):
        if noise_mode == "none":
            return None
        r = self.resolution
        if noise_mode == "const":
            n = self.noise_const[None, None]
        else:
            n = torch.randn(x.shape[0], 1, r, r, device=x.device, generator=generator)
        return (n * self.noise_strength).to(x.dtype)

    def forward(self, x, w, noise_mode="random", generator=None):
        styles = self.affine(w)
        noise = self._noise(x, noise_mode, generator)
        weight, f = self.weight, self.resample_filter
        if self.fused:
            return FG.modulated_conv2d(x, weight, styles.to(weight.dtype), noise, up=self.up, padding=1,
                                       resample_filter=f, demodulate=True, bias=self.bias.to(x.dtype), act="lrelu",
                                       clamp=self.conv_clamp)
        d = (weight[None] * styles[:, None, :, None, None]).square().sum(dim=(2, 3, 4)).add(1e-8).rsqrt()
        y = x * styles.to(x.dtype)[:, :, None, None]
        if self.up > 1:
            y = _plain_upsample(y, f, extra=(1, 1))  # the conv's padding 1 on the upsampled image
            y = F.conv2d(y, weight.to(x.dtype))
        else:
            y = F.conv2d(y, weight.to(x.dtype), padding=1)
        y = y * d.to(y.dtype)[:, :, None, None]
        if noise is not None:
            y = y + noise
        return _plain_bias_act(y, self.bias, "lrelu", SQRT2, self.conv_clamp)


class ToRGBLayer(nn.Module):
    """1x1 modulated conv without demodulation (styles scaled by 1 / sqrt(in)), + bias, clamped."""

    def __init__(self, cin, img_channels, w_dim, conv_clamp=None, fused=True):
        super().__init__()
        self.fused, self.conv_clamp = fused, conv_clamp
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0, fused=fused)
        self.weight = nn.Parameter(torch.randn(img_channels, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1.0 / math.sqrt(cin)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        if self.fused:
            return FG.modulated_conv2d(x, self.weight, styles.to(self.weight.dtype), demodulate=False,
                                       bias=self.bias.to(x.dtype), clamp=self.conv_clamp)
        y = F.conv2d(x * styles.to(x.dtype)[:, :, None, None], self.weight.to(x.dtype))
        return _plain_bias_act(y, self.bias, "linear", 1.0, self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network (skip architecture); consumes ``num_conv + 1`` ws."""

    def __init__(self, cin, cout, w_dim, resolution, img_channels, conv_clamp, use_bf16, fused):
        super().__init__()
        self.resolution, self.use_bf16, self.fused = resolution, use_bf16, fused
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(cout, 4, 4))
        else:
            self.conv0 = SynthesisLayer(cin, cout, w_dim, resolution, up=2, conv_clamp=conv_clamp, fused=fused)
        self.conv1 = SynthesisLayer(cout, cout, w_dim, resolution, conv_clamp=conv_clamp, fused=fused)
        self.torgb = ToRGBLayer(cout, img_channels, w_dim, conv_clamp=conv_clamp, fused=fused)
        self.register_buffer("resample_filter", FG.setup_filter(FIR_TAPS), persistent=False)
        self.num_conv = 1 if resolution == 4 else 2

    def forward(self, x, img, ws, noise_mode="random", generator=None):
        dtype = torch.bfloat16 if self.use_bf16 and ws.device.type in BF16_DEVICES else ws.dtype
        if self.resolution == 4:
            x = self.const.to(dtype)[None].expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x.to(dtype), ws[:, 0], noise_mode, generator)
        x = self.conv1(x, ws[:, self.num_conv - 1], noise_mode, generator)
        if img is not None:
            f = self.resample_filter
            img = FG.upsample2d(img, f) if self.fused else _plain_upsample(img, f)
        y = _full(self.torgb(x, ws[:, self.num_conv]))
        return x, (y if img is None else img + y)


class MappingNetwork(nn.Module):
    """z [N, z_dim] (and c [N, c_dim]) -> w broadcast to [N, num_ws, w_dim]; see the module doc."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr_mul=0.01, w_avg_beta=0.995, fused=True):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        if c_dim > 0:
            self.embed = FullyConnected(c_dim, w_dim, fused=fused)
        features = [(z_dim if z_dim else 0) + (w_dim if c_dim else 0)] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnected(features[i], features[i + 1], act="lrelu", lr_mul=lr_mul,
                                                   fused=fused))
        self.num_layers = num_layers
        self.register_buffer("w_avg", torch.zeros(w_dim))

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()

    def forward(self, z, c=None, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                update_emas: bool = False):
        parts = []
        if self.z_dim:
            parts.append(self.normalize(z))
        if self.c_dim:
            parts.append(self.normalize(self.embed(c.to(self.embed.weight.dtype))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_emas:
            with torch.no_grad():
                self.w_avg.lerp_(x.detach().mean(dim=0), 1.0 - self.w_avg_beta)
        ws = x[:, None].repeat(1, self.num_ws, 1) if self.num_ws else x
        if truncation_psi != 1:
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws = ws.clone()
            ws[:, :cut] = self.w_avg.lerp(ws[:, :cut], truncation_psi)
        return ws


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim, resolution, img_channels=3, channel_base=32768, channel_max=512, conv_clamp=256,
                 num_bf16_res=0, fused=True):
        super().__init__()
        log2 = int(math.log2(resolution))
        self.resolution, self.img_channels, self.w_dim = resolution, img_channels, w_dim
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        bf16_from = max(2 ** (log2 + 1 - num_bf16_res), 8) if num_bf16_res else resolution * 2
        self.num_ws = 0
        for res in self.block_resolutions:
            cin = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            cout = channels_at(res, channel_base, channel_max)
            block = SynthesisBlock(cin, cout, w_dim, res, img_channels, conv_clamp, res >= bf16_from, fused)
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last ToRGB; every other ToRGB shares its w with the next block's first conv

    def forward(self, ws, noise_mode="random", generator=None):
        x = img = None
        i = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws[:, i:i + block.num_conv + 1], noise_mode, generator)
            i += block.num_conv
        return img


class Generator(nn.Module):
    """z [N, z_dim] (c [N, c_dim]) -> images [N, img_channels, R, R] (about [-1, 1])."""

    def __init__(self, z_dim=512, c_dim=0, w_dim=512, resolution=256, img_channels=3, channel_base=32768,
                 channel_max=512, mapping_layers=8, conv_clamp=256, num_bf16_res=0, fused=True):
        super().__init__()
        _check_arch(resolution, channel_base, channel_max, img_channels)
        _positive_int("z_dim", z_dim)
        _positive_int("w_dim", w_dim)
        _positive_int("c_dim", c_dim, 0)
        _positive_int("mapping_layers", mapping_layers)
        _positive_int("num_bf16_res", num_bf16_res, 0)
        self.z_dim, self.c_dim, self.w_dim, self.resolution, self.img_channels = (z_dim, c_dim, w_dim, resolution,
                                                                                  img_channels)
        self.fused = fused
        self.synthesis = SynthesisNetwork(w_dim, resolution, img_channels, channel_base, channel_max, conv_clamp,
                                          num_bf16_res, fused)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, mapping_layers, fused=fused)

    def _check(self, z, c):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape [N, {self.z_dim}], got {list(getattr(z, 'shape', []))}")
        if self.c_dim and (c is None or tuple(c.shape) != (z.shape[0], self.c_dim)):
            raise ValueError(f"c must have shape [{z.shape[0]}, {self.c_dim}] (c_dim {self.c_dim}), got "
                             f"{None if c is None else list(c.shape)}")

    def forward(self, z, c=None, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                noise_mode: str = "random", generator=None, update_emas: bool = False):
        self._check(z, c)
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas=update_emas)
        return self.synthesis(ws, noise_mode, generator)

    def mix_styles(self, ws: torch.Tensor, z2: torch.Tensor, cutoff: int, c=None, **mapping_kwargs) -> torch.Tensor:
        """Style mixing: layers ``cutoff`` and above take the ws of a second latent ``z2``."""
        if not 0 < cutoff < self.num_ws:
            raise ValueError(f"cutoff must be in [1, {self.num_ws - 1}], got {cutoff}")
        ws = ws.clone()
        ws[:, cutoff:] = self.mapping(z2, c, **mapping_kwargs)[:, cutoff:]
        return ws


class DiscriminatorBlock(nn.Module):
    """Residual block: (FromRGB at the top,) conv3x3, conv3x3 down 2, + 1x1 skip down 2, each branch sqrt(1/2)."""

    def __init__(self, cin, ctmp, cout, resolution, img_channels, first, conv_clamp, use_bf16, fused):
        super().__init__()
        self.resolution, self.first, self.use_bf16 = resolution, first, use_bf16
        if first:
            self.fromrgb = Conv2dLayer(img_channels, ctmp, 1, conv_clamp=conv_clamp, fused=fused)
        self.conv0 = Conv2dLayer(ctmp, ctmp, 3, conv_clamp=conv_clamp, fused=fused)
        self.conv1 = Conv2dLayer(ctmp, cout, 3, down=2, gain=math.sqrt(0.5), conv_clamp=conv_clamp, fused=fused)
        self.skip = Conv2dLayer(ctmp, cout, 1, act="linear", down=2, bias=False, gain=math.sqrt(0.5), fused=fused)

    def forward(self, x, img):
        dtype = torch.bfloat16 if self.use_bf16 and img.device.type in BF16_DEVICES else img.dtype
        if self.first:
            x = self.fromrgb(img.to(dtype))
        x = x.to(dtype)
        y = self.skip(x)
        return self.conv1(self.conv0(x)) + y


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_features: int = 1) -> torch.Tensor:
    """Append the standard deviation of each feature over groups of ``min(group_size, N)``
    samples (sample n is in group n mod (N / G)), averaged over channels and pixels per
    ``num_features`` channel chunk, as extra feature maps."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"the batch size {n} must be divisible by the minibatch-stddev group size {g}")
    y = _full(x).reshape(g, n // g, num_features, c // num_features, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # [M, F, c/F, H, W]
    y = y.mean(dim=(2, 3, 4)).reshape(n // g, num_features, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, cin, cmap_dim, img_channels, mbstd_group_size=4, mbstd_features=1, conv_clamp=None,
                 fused=True):
        super().__init__()
        self.cmap_dim, self.mbstd_group_size, self.mbstd_features = cmap_dim, mbstd_group_size, mbstd_features
        self.conv = Conv2dLayer(cin + mbstd_features, cin, 3, conv_clamp=conv_clamp, fused=fused)
        self.fc = FullyConnected(cin * 16, cin, act="lrelu", fused=fused)
        self.out = FullyConnected(cin, cmap_dim if cmap_dim else 1, fused=fused)

    def forward(self, x, cmap=None):
        x = minibatch_stddev(_full(x), self.mbstd_group_size, self.mbstd_features)
        x = self.fc(self.conv(x).flatten(1))
        x = self.out(x)
        if cmap is not None:
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x.flatten()


class Discriminator(nn.Module):
    """images [N, img_channels, R, R] (c [N, c_dim]) -> one logit per image [N]."""
    per_sample = False  # minibatch stddev couples the samples of a group

    def __init__(self, c_dim=0, resolution=256, img_channels=3, channel_base=32768, channel_max=512,
                 conv_clamp=256, num_bf16_res=0, mbstd_group_size=4, cmap_dim=None, fused=True):
        super().__init__()
        log2 = _check_arch(resolution, channel_base, channel_max, img_channels)
        _positive_int("c_dim", c_dim, 0)
        _positive_int("num_bf16_res", num_bf16_res, 0)
        self.c_dim, self.resolution, self.img_channels, self.fused = c_dim, resolution, img_channels, fused
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        bf16_from = max(2 ** (log2 + 1 - num_bf16_res), 8) if num_bf16_res else resolution * 2
        for res in self.block_resolutions:
            ch = channels_at(res, channel_base, channel_max)
            block = DiscriminatorBlock(ch, ch, channels_at(res // 2, channel_base, channel_max), res, img_channels,
                                       res == resolution, conv_clamp, res >= bf16_from, fused)
            setattr(self, f"b{res}", block)
        c4 = channels_at(4, channel_base, channel_max)
        if c_dim:
            self.cmap_dim = cmap_dim or c4
            self.mapping = MappingNetwork(0, c_dim, self.cmap_dim, 0, fused=fused)
        else:
            self.cmap_dim = 0
        self.b4 = DiscriminatorEpilogue(c4, self.cmap_dim, img_channels, mbstd_group_size, conv_clamp=conv_clamp,
                                        fused=fused)

    def forward(self, img, c=None):
        shape = (self.img_channels, self.resolution, self.resolution)
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or tuple(img.shape[1:]) != shape:
            raise ValueError(f"images must have shape [N, {', '.join(map(str, shape))}], got "
                             f"{list(getattr(img, 'shape', []))}")
        if self.c_dim and (c is None or tuple(c.shape) != (img.shape[0], self.c_dim)):
            raise ValueError(f"c must have shape [{img.shape[0]}, {self.c_dim}], got "
                             f"{None if c is None else list(c.shape)}")
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        cmap = self.mapping(None, c) if self.c_dim else None
        return self.b4(x, cmap)


def build_stylegan2(resolution: int = 256, z_dim: int = 512, w_dim: int = 512, c_dim: int = 0,
                    channel_base: int = 32768, channel_max: int = 512, mapping_layers: int = 8, img_channels: int = 3,
                    conv_clamp: Optional[float] = 256, num_bf16_res: int = 0,
                    fused: bool = True) -> tuple[Generator, Discriminator]:
    """(G, D) of one StyleGAN2 configuration (NVlabs' stylegan2 config: channel_base 32768,
    channel_max 512, z/w 512, 8 mapping layers; mixed precision there: num_bf16_res 4)."""
    G = Generator(z_dim, c_dim, w_dim, resolution, img_channels, channel_base, channel_max, mapping_layers,
                  conv_clamp, num_bf16_res, fused)
    D = Discriminator(c_dim, resolution, img_channels, channel_base, channel_max, conv_clamp, num_bf16_res,
                      fused=fused)
    return G, D
