"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data", appendix B), written from the paper: the "bgc" pipeline and the
controller of its probability p.

Every transform is applied to each sample independently with probability p (the two free
rotations each with 1 - sqrt(1 - p), so that some rotation happens with probability p), with
the identity's parameters where it is not applied. W x W images, u ~ U(a, b), n ~ N(0, 1):

    blit       x-flip            i ~ U{0, 1}:          x -> x flipped along the width if i
               90-deg rotation   k ~ U{0, 1, 2, 3}:    x -> torch.rot90(x, k, dims=(2, 3))
               int. translation  t ~ U(-1/8, 1/8)^2:   shift by round(t W) pixels, reflected at the border
    geometric  isotropic scale   s = exp(0.2 ln2 n):   (x, y) -> s (x, y)
               pre-rotation      a ~ U(-pi, pi):       (x, y) -> R(a) (x, y)
               anisotropic scale s = exp(0.2 ln2 n):   (x, y) -> (s x, y / s)
               post-rotation     a ~ U(-pi, pi):       (x, y) -> R(a) (x, y)
               frac. translation t = n / 8 (2-d):      (x, y) -> (x, y) + t W
    colour     brightness        b = 0.2 n:            c -> c + b
               contrast          s = exp(0.5 ln2 n):   c -> s c
               luma flip         i ~ U{0, 1}:          c -> (I - 2 v v^T i) c
               hue rotation      a ~ U(-pi, pi):       c -> rotation of c by a about v
               saturation        s = exp(ln2 n):       c -> (v v^T + s (I - v v^T)) c

in that order, (x, y) pixel coordinates about the image centre, c an RGB pixel and v the luma
axis (1, 1, 1) / sqrt(3). The blits move whole pixels (one gather per batch, exact). The
geometric transforms make one affine map M per sample, applied once: the image is padded by
reflection (as far as the batch's maps reach, at most W - 1 a side), upsampled 2x with the
sym6 wavelet's low-pass filter g, resampled at M^-1 of the output's upsampled pixel centres
with bilinear ``grid_sample``, and downsampled 2x with g reversed. g is orthogonal
(sum_k g[k] g[k + 2l] = delta_l / 2), so the identity map gives the image back to rounding;
positions account for g's delay (its centroid), so a rotated image is not shifted. A batch in
which no sample drew a geometric transform skips the resampling. The colour transforms make
one 4x4 matrix per sample on homogeneous RGB.

For fixed parameters the whole pipeline is linear in the image, so D(augment(x)) is
differentiable to any order with respect to x and R1 through it is exact. ``fused=True``
resamples with fastgan's ``upfirdn2d`` and ``grid_sample`` (the Triton kernels; their eager
references under the eager backend), ``fused=False`` with plain torch (F.conv_transpose2d,
F.conv2d, F.grid_sample, whose second order with respect to the image torch provides); both
take the same parameters. The padding is read on the host: one synchronisation per call with
geometric transforms.

Capturable form (p a 0-d device tensor; the trainer's with ``cuda_graphs``): no host reads, so
a CUDA graph can replay it. The parameters are always drawn (also at p = 0), the batch is
padded by the maximum (W - 1 a side), which reads the same pixels where the batch's maps
reach less far (the resampled values agree to rounding; the padded area is up to 9x larger),
and a sample that drew no geometric transform keeps its pixels exactly.

Adaptive p (``AdaController``): every ``interval`` (4) D steps,

    r = mean(sign(D(real))) over those steps' real logits,
    p <- clamp(p + sign(r - target) * batch * interval / (kimg * 1000), 0, 1)

with the defaults target 0.6 and kimg 500 (p can go from 0 to 1 in 500k real images). With
``capturable=True`` p, the accumulators and the step count live on the device and the
adjustment is computed there at every call (applied where the interval is complete).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import functional as FG

__all__ = ["TRANSFORMS", "BLIT", "GEOMETRIC", "COLOR", "ADA_INTERVAL", "SYM6", "AdaParams", "AdaController",
           "sample_params", "apply_params", "ada_augment"]

BLIT = ("xflip", "rotate90", "xint")
GEOMETRIC = ("scale", "rotate", "aniso", "xfrac")  # "rotate": the pre- and the post-rotation
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
TRANSFORMS = BLIT + GEOMETRIC + COLOR  # "bgc", in the order they are applied
ADA_INTERVAL = 4

# The sym6 scaling (low-pass) filter normalised to sum 1: Daubechies' orthogonal 12-tap filter with 6
# vanishing moments and the least asymmetric choice of roots (computed by spectral factorisation to 20
# digits; tests/test_ada.py checks orthogonality and the moments).
SYM6 = (-0.0055159337546887507638, 0.0012499610463979222859, 0.031625281330021744688, -0.014891875649269697672,
        -0.051362484930839247901, 0.23895218566643469286, 0.55694639196286893909, 0.3472289864792177135,
        -0.034161560793286002187, -0.083431607706072971454, 0.0024683061859233172969, 0.010892350163292340255)
_TAPS = len(SYM6)
_UP_PAD = ((_TAPS + 1) // 2, (_TAPS - 2) // 2)  # (6, 5)
# Upsampled pixel k (that padding) holds input position (k - _PHASE) / 2, _PHASE = centroid(g) - 5 (0.90; 1/2 for
# a symmetric filter): g's delay, which is not half a tap (sym6 is only nearly symmetric). The downsampling reads
# the same positions, so the identity is exact either way; the true delay keeps a rotated image in place.
_PHASE = sum(k * t for k, t in enumerate(SYM6)) - (_UP_PAD[0] - 1)
_MARGIN = _TAPS // 2 - 1  # (5) upsampled pixels resampled beyond each side, read by the downsampling filter
_PAD_SLACK = 1  # input pixels of reflect padding beyond what the filters and the bilinear taps read
_LOG2 = math.log(2)


@dataclass
class AdaParams:
    """One draw of the pipeline's parameters for a batch of N images."""
    flip: torch.Tensor              # [N] bool: x-flip
    rot90: torch.Tensor             # [N] int64: quarter turns, torch.rot90's direction
    shift: torch.Tensor             # [N, 2] int64: (dx, dy) pixels
    geom: torch.Tensor | None       # [N, 3, 3] float64: M^-1 (output -> input), centred pixels; None: no transform
    color: torch.Tensor | None      # [N, 4, 4] float64 on homogeneous RGB; None: no transform


# ----------------------------------------------------------------------------- parameters

def _eye(n, k, device):
    return torch.eye(k, dtype=torch.float64, device=device).expand(n, k, k).clone()


def _scale2(sx, sy):
    m = _eye(sx.shape[0], 3, sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate2(a):
    m = _eye(a.shape[0], 3, a.device)
    c, s = a.cos(), a.sin()
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _translate2(tx, ty):
    m = _eye(tx.shape[0], 3, tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def sample_params(n: int, size: int, p, generator: torch.Generator | None = None, device="cpu",
                  transforms=TRANSFORMS) -> AdaParams:
    """Draw the parameters of ``transforms`` (module doc) for n images of size x size, each
    transform applied with probability p (a number, or a 0-d tensor on ``device``); everything
    from ``generator`` (on ``device``)."""
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown ADA transforms {unknown}; expected some of {TRANSFORMS}")
    kw = dict(device=device, generator=generator)

    def uniform(lo=0.0, hi=1.0, *shape):
        return torch.rand(n, *shape, dtype=torch.float64, **kw) * (hi - lo) + lo

    def normal(*shape):
        return torch.randn(n, *shape, dtype=torch.float64, **kw)

    def gate(prob=p, *shape):  # applied per sample with probability prob
        return uniform(0.0, 1.0, *shape) < prob

    on = set(transforms)
    flip = torch.zeros(n, dtype=torch.bool, device=device)
    rot90 = torch.zeros(n, dtype=torch.int64, device=device)
    shift = torch.zeros(n, 2, dtype=torch.int64, device=device)
    if "xflip" in on:
        flip = gate() & (torch.randint(0, 2, (n,), **kw) == 1)
    if "rotate90" in on:
        rot90 = torch.where(gate(), torch.randint(0, 4, (n,), **kw), 0)
    if "xint" in on:
        shift = torch.where(gate()[:, None], torch.round(uniform(-0.125, 0.125, 2) * size).long(), 0)

    geom = None
    if on & set(GEOMETRIC):  # M^-1, the product of the inverses (each transform's in turn)
        geom = _eye(n, 3, device)
        p_rot = (1 - (1 - p).clamp(min=0).sqrt()) if isinstance(p, torch.Tensor) else 1 - math.sqrt(max(1 - p, 0.0))
        if "scale" in on:
            s = torch.where(gate(), torch.exp(0.2 * _LOG2 * normal()), 1.0)
            geom = geom @ _scale2(1 / s, 1 / s)
        if "rotate" in on:
            a = torch.where(gate(p_rot), uniform(-math.pi, math.pi), 0.0)
            geom = geom @ _rotate2(-a)
        if "aniso" in on:
            s = torch.where(gate(), torch.exp(0.2 * _LOG2 * normal()), 1.0)
            geom = geom @ _scale2(1 / s, s)
        if "rotate" in on:
            a = torch.where(gate(p_rot), uniform(-math.pi, math.pi), 0.0)
            geom = geom @ _rotate2(-a)
        if "xfrac" in on:
            t = torch.where(gate()[:, None], normal(2) * 0.125 * size, 0.0)
            geom = geom @ _translate2(-t[:, 0], -t[:, 1])

    color = None
    if on & set(COLOR):  # C, the product of the transforms (each on the left in turn)
        color = _eye(n, 4, device)
        v = _luma_axis(torch.device(device))
        vv = torch.outer(v, v)
        eye = torch.eye(4, dtype=torch.float64, device=device)
        if "brightness" in on:
            b = torch.where(gate(), 0.2 * normal(), 0.0)
            m = _eye(n, 4, device)
            m[:, :3, 3] = b[:, None]
            color = m @ color
        if "contrast" in on:
            s = torch.where(gate(), torch.exp(0.5 * _LOG2 * normal()), 1.0)
            m = _eye(n, 4, device)
            m[:, 0, 0] = m[:, 1, 1] = m[:, 2, 2] = s
            color = m @ color
        if "lumaflip" in on:
            i = (gate() & (torch.randint(0, 2, (n,), **kw) == 1)).double()
            color = (eye - 2 * vv * i[:, None, None]) @ color
        if "hue" in on:
            a = torch.where(gate(), uniform(-math.pi, math.pi), 0.0)[:, None, None]
            cross = torch.zeros(4, 4, dtype=torch.float64, device=device)  # [v]_x: cross @ c = v x c
            cross[0, 1], cross[0, 2], cross[1, 2] = -v[2], v[1], -v[0]
            cross = cross - cross.T
            rot = vv + a.cos() * (eye - vv) + a.sin() * cross
            rot[:, 3, 3] = 1
            color = rot @ color
        if "saturation" in on:
            s = torch.where(gate(), torch.exp(_LOG2 * normal()), 1.0)[:, None, None]
            m = vv + s * (eye - vv)
            m[:, 3, 3] = 1
            color = m @ color
    return AdaParams(flip, rot90, shift, geom, color)


# ----------------------------------------------------------------------------- execution

def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of integers into range(n), mirrored at the borders (no edge repeat; periodic beyond)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    m = torch.remainder(i, period)
    return torch.where(m >= n, period - m, m)


def _blit(x: torch.Tensor, prm: AdaParams) -> torch.Tensor:
    """x-flip, then rot90, then the integer shift, as one gather (sources in doubled centred coordinates)."""
    n, c, s, _ = x.shape
    ar = 2 * torch.arange(s, device=x.device) - (s - 1)
    u = ar[None, None, :] - 2 * prm.shift[:, 0, None, None]   # [n, 1, s] columns
    v = ar[None, :, None] - 2 * prm.shift[:, 1, None, None]   # [n, s, 1] rows
    u, v = torch.broadcast_tensors(u, v)
    k = prm.rot90[:, None, None]                              # a quarter turn reads (u, v) from (-v, u)
    u, v = (torch.where(k == 0, u, torch.where(k == 1, -v, torch.where(k == 2, -u, v))),
            torch.where(k == 0, v, torch.where(k == 1, u, torch.where(k == 2, -v, -u))))
    u = torch.where(prm.flip[:, None, None], -u, u)
    idx = _reflect((v + s - 1) // 2, s) * s + _reflect((u + s - 1) // 2, s)
    flat = x.reshape(n, c, s * s)
    return flat.gather(2, idx.reshape(n, 1, s * s).expand(n, c, -1)).reshape(n, c, s, s)


@functools.lru_cache(maxsize=16)
def _filter(dtype, device) -> torch.Tensor:
    """sym6 on the device, made once (a step then copies nothing from the host: CUDA-graph safe;
    never changed in place)."""
    return torch.tensor(SYM6, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)


@functools.lru_cache(maxsize=16)
def _luma_axis(device: torch.device) -> torch.Tensor:
    """v = (1, 1, 1, 0) / sqrt(3) in homogeneous RGB, float64 on the device, made once (as ``_filter``)."""
    return torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64, device=device) / math.sqrt(3)


def _depthwise(x: torch.Tensor, taps: torch.Tensor, stride: int) -> torch.Tensor:
    """Plain torch: correlate every channel with ``taps`` along both axes (F.conv2d), then stride."""
    n, c, h, w = x.shape
    taps = taps.to(x.dtype)
    y = F.conv2d(x.reshape(n * c, 1, h, w), taps.view(1, 1, -1, 1), stride=(stride, 1))
    y = F.conv2d(y, taps.view(1, 1, 1, -1), stride=(1, stride))
    return y.reshape(n, c, *y.shape[2:])


def _up2(x, f, fused):
    lo, hi = _UP_PAD
    if fused:
        return FG.upfirdn2d(x, f, up=2, padding=[lo, hi, lo, hi], gain=4)
    # plain torch: convolution with 2 g of the zero-inserted image, along each axis (a transposed
    # convolution: y[m] = sum_i x[i] 2 g[m - 2 i], cropped by _TAPS - 1 - lo = 5 a side)
    n, c, h, w = x.shape
    crop = _TAPS - 1 - lo
    taps = 2 * f.to(x.dtype)
    y = F.conv_transpose2d(x.reshape(n * c, 1, h, w), taps.view(1, 1, -1, 1), stride=(2, 1), padding=(crop, 0))
    y = F.conv_transpose2d(y, taps.view(1, 1, 1, -1), stride=(1, 2), padding=(0, crop))
    return y.reshape(n, c, 2 * h, 2 * w)


def _down2(x, f, fused):
    if fused:
        return FG.upfirdn2d(x, f, down=2, flip_filter=True)
    return _depthwise(x, f, 2)  # correlation with g: the adjoint of the upsampling


def _sample(x, grid, fused):
    if fused:
        return FG.grid_sample(x, grid)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _geometric(x: torch.Tensor, geom: torch.Tensor, fused: bool, capturable: bool = False) -> torch.Tensor:
    """Pad (reflect), upsample 2x, resample at M^-1 of the output's upsampled pixel centres (and
    ``_MARGIN`` beyond), downsample 2x (module doc); ``capturable``: pad by the maximum, no host
    read, samples with the identity map unchanged."""
    n, c, s, _ = x.shape
    k = 2 * s + 2 * _MARGIN
    # upsampled output pixel j sits at output position (j - _MARGIN - _PHASE) / 2; centred:
    centred = (torch.arange(k, dtype=torch.float64, device=x.device) - _MARGIN - _PHASE) / 2 - (s - 1) / 2
    lo, hi = (-_MARGIN - _PHASE) / 2 - (s - 1) / 2, (k - 1 - _MARGIN - _PHASE) / 2 - (s - 1) / 2  # centred[0], [-1]
    cap = s - 1  # the most reflect padding a side (one reflection; beyond it zeros)
    if capturable:
        left = top = right = bottom = cap
    else:
        corners = torch.tensor([[lo, lo, hi, hi], [lo, hi, lo, hi], [1.0] * 4], dtype=torch.float64, device=x.device)
        reach = (geom[:, :2] @ corners).transpose(0, 1).reshape(2, -1) + (s - 1) / 2  # input positions, per axis
        moved = geom.ne(torch.eye(3, dtype=geom.dtype, device=geom.device)).any().double()
        x_lo, y_lo, x_hi, y_hi, moved = torch.cat([reach.amin(1), reach.amax(1), moved[None]]).tolist()  # one sync
        if not moved:  # no sample drew a geometric transform: nothing to resample
            return x
        # every input pixel the bilinear taps' upsampled pixels are made of (the filter reaches 3 input pixels
        # each way), plus _PAD_SLACK
        left, top = (min(max(math.ceil(2.75 + _PAD_SLACK - v), 0), cap) for v in (x_lo, y_lo))
        right, bottom = (min(max(math.ceil(v - s + 4.25 + _PAD_SLACK), 0), cap) for v in (x_hi, y_hi))
    rows = _reflect(torch.arange(-top, s + bottom, device=x.device), s)
    cols = _reflect(torch.arange(-left, s + right, device=x.device), s)
    xp = x.index_select(2, rows).index_select(3, cols)
    hp, wp = xp.shape[2:]
    yy, xx = torch.meshgrid(centred, centred, indexing="ij")
    dest = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1)                    # [k, k, 3]
    src = torch.einsum("nij,hwj->nhwi", geom[:, :2], dest) + (s - 1) / 2          # [n, k, k, 2] input positions
    # input position q is upsampled pixel 2 (q + pad) + _PHASE; grid_sample (align_corners=False) takes
    # (2 * pixel + 1) / size - 1
    grid = torch.stack([(4 * (src[..., 0] + left) + 2 * _PHASE + 1) / (2 * wp) - 1,
                        (4 * (src[..., 1] + top) + 2 * _PHASE + 1) / (2 * hp) - 1], dim=-1).to(x.dtype)
    f = _filter(x.dtype, x.device)
    out = _down2(_sample(_up2(xp, f, fused), grid, fused), f, fused)
    if capturable:  # the identity map keeps its pixels exactly (as the host-read path's skip does)
        moved = geom.ne(torch.eye(3, dtype=geom.dtype, device=geom.device)).flatten(1).any(1)
        out = torch.where(moved[:, None, None, None], out, x)
    return out


def _color(x: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    m = color.to(x.dtype)
    return torch.einsum("nij,njhw->nihw", m[:, :3, :3], x) + m[:, :3, 3, None, None]


def _check_image(x):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"ADA augments float images [N, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"ADA augments square images (90-degree rotations), got {x.shape[2]}x{x.shape[3]}")


def apply_params(x: torch.Tensor, prm: AdaParams, fused: bool = True, capturable: bool = False) -> torch.Tensor:
    """The pipeline with the parameters ``prm`` (``sample_params``) on x [N, C, W, W]
    (``capturable``: without host reads, module doc)."""
    _check_image(x)
    if prm.flip.shape[0] != x.shape[0]:
        raise ValueError(f"parameters for {prm.flip.shape[0]} images, got a batch of {x.shape[0]}")
    if prm.color is not None and x.shape[1] != 3:
        raise ValueError(f"the colour transforms take RGB images (3 channels), got {x.shape[1]}")
    x = _blit(x, prm)
    if prm.geom is not None:
        x = _geometric(x, prm.geom, fused, capturable)
    if prm.color is not None:
        x = _color(x, prm.color)
    return x


def ada_augment(x: torch.Tensor, p, generator: torch.Generator | None = None, transforms=TRANSFORMS,
                fused: bool = True) -> torch.Tensor:
    """ADA's pipeline (module doc) on x [N, C, W, W], each transform with probability p: a
    number (p = 0 returns x itself, nothing drawn) or a 0-d floating-point tensor on x's device
    (the capturable form: no host reads; its value is not checked)."""
    _check_image(x)
    capturable = isinstance(p, torch.Tensor)
    if capturable:
        if p.dim() != 0 or not p.is_floating_point() or p.device != x.device:
            raise ValueError(f"a tensor p must be a 0-d floating-point tensor on {x.device}, got shape "
                             f"{tuple(p.shape)}, {p.dtype} on {p.device}")
    elif isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a number in [0, 1], got {p!r}")
    if not capturable and p == 0:
        return x
    prm = sample_params(x.shape[0], x.shape[2], p, generator, x.device, transforms)
    return apply_params(x, prm, fused, capturable)


# ----------------------------------------------------------------------------- adaptive p

class AdaController:
    """The probability p of ADA's augmentations, adjusted from D's real logits (module doc).

    Call ``accumulate(real_logits)`` after every D step; every ``interval``-th call adjusts
    ``p`` (one host read). ``reduce`` (e.g. a sum over data-parallel ranks) is applied to each
    step's (sum of signs, count) so that every rank holds the same accumulators and p.

    ``capturable=True``: p, the accumulators, the step count and the last r are device tensors
    changed in place, and ``accumulate`` reads nothing on the host (a CUDA graph can replay it);
    the same arithmetic in float64, so p moves exactly as in the host form. Pass ``p_arg`` to
    ``ada_augment``: the tensor p then, the number p otherwise; ``p`` is always a number (a host
    read in the capturable form)."""

    def __init__(self, batch_size: int, target: float = 0.6, kimg: float = 500.0, p: float = 0.0,
                 interval: int = ADA_INTERVAL, device="cpu", reduce=None, capturable: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        if not (_number(target) and 0 < target < 1):
            raise ValueError(f"ada target must be a number in (0, 1), got {target!r}")
        if not (_number(kimg) and kimg > 0):
            raise ValueError(f"ada kimg must be a finite number > 0, got {kimg!r}")
        if not (_number(p) and 0 <= p <= 1):
            raise ValueError(f"ada p must be a number in [0, 1], got {p!r}")
        self.batch_size, self.target, self.kimg, self.interval = batch_size, float(target), float(kimg), interval
        self.reduce, self.capturable = reduce, bool(capturable)
        self._acc = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of signs, count)
        if self.capturable:  # (p, D steps since the last adjustment, the last r or NaN)
            self._state = torch.tensor([float(p), 0.0, math.nan], dtype=torch.float64, device=device)
        else:
            self._p = float(p)
            self._steps = 0  # D steps accumulated since the last adjustment
            self._last_r = None  # the r of the last adjustment

    @property
    def step_size(self) -> float:
        """How far one adjustment moves p: batch * interval / (kimg * 1000)."""
        return self.batch_size * self.interval / (self.kimg * 1000)

    @property
    def p(self) -> float:
        return float(self._state[0]) if self.capturable else self._p

    @property
    def last_r(self) -> float | None:
        """The r of the last adjustment (None before the first)."""
        if not self.capturable:
            return self._last_r
        r = float(self._state[2])
        return None if math.isnan(r) else r

    @property
    def p_arg(self):
        """The p to pass to ``ada_augment``: a 0-d device tensor (capturable) or the number."""
        return self._state[0] if self.capturable else self._p

    def accumulate(self, real_logits: torch.Tensor) -> None:
        logits = real_logits.detach()
        count = torch.full((), float(logits.numel()), dtype=torch.float64, device=logits.device)  # no host copy
        step = torch.stack([logits.sign().sum().double(), count])
        if self.reduce is not None:
            self.reduce(step)
        if self.capturable:
            self._accumulate_on_device(step)
            return
        self._acc = self._acc.to(logits.device) + step
        self._steps += 1
        if self._steps >= self.interval:
            total, count = self._acc.tolist()
            self._last_r = r = total / count
            direction = (r > self.target) - (r < self.target)
            self._p = min(max(self._p + direction * self.step_size, 0.0), 1.0)
            self._acc = torch.zeros_like(self._acc)
            self._steps = 0

    def _accumulate_on_device(self, step: torch.Tensor) -> None:
        """The host form's arithmetic on the device tensors, in place; the adjustment is applied
        where the interval is complete."""
        acc, state = self._acc, self._state
        acc.add_(step)
        steps = state[1] + 1
        due = steps >= self.interval
        r = acc[0] / acc[1]
        p = (state[0] + torch.sign(r - self.target) * self.step_size).clamp(0.0, 1.0)
        adjusted = torch.stack([p, torch.zeros_like(p), r])  # (p, steps, last r) after an adjustment
        state.copy_(torch.where(due, adjusted, torch.stack([state[0], steps, state[2]])))
        acc.mul_((~due).double())

    def state_dict(self) -> dict:
        total, count = self._acc.tolist()
        if self.capturable:
            p, steps, last_r = self._state.tolist()
            return {"p": p, "sign_sum": total, "count": count, "steps": int(steps),
                    "last_r": None if math.isnan(last_r) else last_r}
        return {"p": self._p, "sign_sum": total, "count": count, "steps": self._steps, "last_r": self._last_r}

    def load_state_dict(self, state: dict) -> None:
        """Load a ``state_dict`` (of either form); the capturable form copies into its tensors in place."""
        p = state["p"]
        if not (_number(p) and 0 <= p <= 1):
            raise ValueError(f"ada state: p must be a number in [0, 1], got {p!r}")
        acc = torch.tensor([float(state["sign_sum"]), float(state["count"])], dtype=torch.float64)
        steps, last_r = int(state["steps"]), state.get("last_r")
        if self.capturable:
            self._acc.copy_(acc)
            self._state.copy_(torch.tensor([float(p), float(steps), math.nan if last_r is None else float(last_r)],
                                           dtype=torch.float64))
        else:
            self._p, self._acc, self._steps, self._last_r = float(p), acc.to(self._acc.device), steps, last_r


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
