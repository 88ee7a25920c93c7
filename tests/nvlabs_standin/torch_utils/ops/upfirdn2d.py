import torch
import torch.nn.functional as F

from .. import custom_ops


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pad4(p):
    p = [p] * 2 if isinstance(p, int) else list(p)
    return p * 2 if len(p) == 1 else ([p[0], p[0], p[1], p[1]] if len(p) == 2 else p)


def _size(f):
    return (1, 1) if f is None else (f.shape[-1], f.shape[0])


def setup_filter(f, device=torch.device("cpu"), normalize=True, flip_filter=False, gain=1, separable=None):
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    f = f.reshape(1) if f.ndim == 0 else f
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f[:, None] * f[None, :]
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return (f * gain ** (f.ndim / 2)).to(device)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="cuda"):
    if impl == "cuda":
        custom_ops.get_plugin("upfirdn2d_plugin")
    ux, uy = _pair(up)
    dx, dy = _pair(down)
    x0, x1, y0, y1 = _pad4(padding)
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, h * uy, w * ux)
    z[:, :, ::uy, ::ux] = x
    z = F.pad(z, [x0, x1, y0, y1]).reshape(n * c, 1, h * uy + y0 + y1, w * ux + x0 + x1)
    k = torch.ones(1, 1, dtype=x.dtype) if f is None else f.to(x.dtype)
    k = k * gain ** (k.ndim / 2)
    if not flip_filter:
        k = k.flip(list(range(k.ndim)))
    k = k[:, None] * k[None, :] if k.ndim == 1 else k
    z = F.conv2d(z, k[None, None].to(x.device))[:, :, ::dy, ::dx]
    return z.reshape(n, c, z.shape[2], z.shape[3])


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl="cuda"):
    fw, fh = _size(f)
    x0, x1, y0, y1 = _pad4(padding)
    p = [x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    ux, uy = _pair(up)
    fw, fh = _size(f)
    x0, x1, y0, y1 = _pad4(padding)
    p = [x0 + (fw + ux - 1) // 2, x1 + (fw - ux) // 2, y0 + (fh + uy - 1) // 2, y1 + (fh - uy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * ux * uy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl="cuda"):
    dx, dy = _pair(down)
    fw, fh = _size(f)
    x0, x1, y0, y1 = _pad4(padding)
    p = [x0 + (fw - dx + 1) // 2, x1 + (fw - dx) // 2, y0 + (fh - dy + 1) // 2, y1 + (fh - dy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
