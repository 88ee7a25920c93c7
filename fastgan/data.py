"""Training data: the embedded procedural "shapes" dataset, folders of images, .npz arrays,
and a deterministic, resumable batch sampler.

All datasets yield float32 images in [-1, 1], shape [C, H, W]. Bad data fails early with a
``DataError`` naming the file: an empty folder, an unreadable or oversized image header, mixed
image sizes, a channel count other than 1, 3 or 4. An image folder is decoded lazily (in
DataLoader workers); an image that fails to decode there is a ``DataError`` at that batch.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DataError(ValueError):
    """The training data cannot be used (message names the file and the problem)."""


def data_error_line(exc: DataError) -> str:
    """The one line of a DataError, also when a DataLoader worker raised it (torch re-raises it
    in the main process with the worker's traceback as its text, the original line last)."""
    last = (str(exc).strip().splitlines() or [""])[-1]
    prefix = f"{DataError.__module__}.{DataError.__name__}: "
    return last.split(prefix, 1)[1] if prefix in last else last


# ----------------------------------------------------------------------------- embedded dataset

SHAPE_CLASSES = ("disc", "square", "triangle")  # the embedded dataset's classes, label 0, 1, 2


def make_shapes(n: int = 8192, resolution: int = 32, seed: int = 0, return_attributes: bool = False):
    """The embedded dataset: ``n`` RGB images of one filled shape (disc, square or triangle) of
    random colour, size and position on a smooth two-colour gradient background.

    Why this dataset: it needs no download and no extra package, it is generated in a second
    on a CPU, and it has structure a GAN must learn (sharp edges, three shape classes, colour
    contrast between shape and background) that is easy to see in a sample grid: early
    samples are coloured blur, learned samples show crisp discs, squares and triangles.

    Returns float32 [n, 3, resolution, resolution] in [-1, 1], identical for equal arguments.
    ``return_attributes=True``: ``(images, attributes)``, the attributes a dict of what was drawn
    for each image: ``label`` (int64 [n], an index into ``SHAPE_CLASSES``), ``color`` [n, 3] and
    ``background`` [n, 6] (the shape's colour and the gradient's two colours, in [0, 1]), ``size``,
    ``cx``, ``cy`` [n] (radius and centre, in units of the image width). The images are the same.
    """
    if n <= 0 or resolution < 8:
        raise ValueError("make_shapes needs n > 0 and resolution >= 8")
    g = torch.Generator().manual_seed(seed)
    r = resolution
    coords = (torch.arange(r, dtype=torch.float32) + 0.5) / r
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # [r, r] in (0, 1)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    # background: a linear gradient between two dark-ish colours, random direction
    c0, c1 = rand(n, 3, 1, 1) * 0.5, rand(n, 3, 1, 1) * 0.5
    angle = rand(n, 1, 1) * 2 * math.pi
    t = ((xx - 0.5) * torch.cos(angle) + (yy - 0.5) * torch.sin(angle)) + 0.5  # [n, r, r]
    img = c0 + (c1 - c0) * t.clamp(0, 1).unsqueeze(1)

    # the shape: a bright colour, centre kept inside the image, size 20-45% of the width
    color = 0.5 + rand(n, 3, 1, 1) * 0.5
    kind = torch.randint(0, 3, (n,), generator=g)
    size = (0.20 + rand(n) * 0.25).view(n, 1, 1)
    cx = (size.view(n) + rand(n) * (1 - 2 * size.view(n))).view(n, 1, 1)
    cy = (size.view(n) + rand(n) * (1 - 2 * size.view(n))).view(n, 1, 1)
    dx, dy = xx - cx, yy - cy
    disc = dx.square() + dy.square() <= size.square()
    square = (dx.abs() <= size * 0.85) & (dy.abs() <= size * 0.85)
    # upward triangle: below the two slanted edges and above the base
    tri = (dy <= size * 0.8) & (dy >= -size) & (dx.abs() <= (dy + size) * 0.6)
    mask = torch.where(kind.view(n, 1, 1) == 0, disc, torch.where(kind.view(n, 1, 1) == 1, square, tri))
    img = torch.where(mask.unsqueeze(1), color.expand(n, 3, r, r), img)
    img = (img * 2 - 1).clamp(-1, 1).contiguous()
    if not return_attributes:
        return img
    return img, {"label": kind, "color": color.view(n, 3), "background": torch.cat([c0, c1], 1).view(n, 6),
                 "size": size.view(n), "cx": cx.view(n), "cy": cy.view(n)}


# ----------------------------------------------------------------------------- files

CHANNELS = (1, 3, 4)  # gray, RGB, RGBA (alpha is dropped)
RANGE_TOLERANCE = 1e-3  # float data may overshoot its range by this much (rounding): clamped into it


def _to_unit_range(arr: np.ndarray, source: str) -> tuple[torch.Tensor, str]:
    """uint8 [0, 255] or float [0, 1] / [-1, 1] images (NHWC or NCHW) -> (float32 NCHW in [-1, 1],
    which range was assumed). Float data is [0, 1] if it lies in [0, 1] up to RANGE_TOLERANCE,
    else [-1, 1] (up to the same tolerance), else an error; overshoots are clamped."""
    if arr.ndim == 3:  # grayscale N, H, W
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(f"{source}: expected images of shape [N, H, W, C] or [N, C, H, W], got {arr.shape}")
    if arr.shape[1] not in CHANNELS:
        if arr.shape[-1] not in CHANNELS:
            raise DataError(f"{source}: images need 1, 3 or 4 channels (NCHW or NHWC), got shape {arr.shape}")
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[1] == 4:
        arr = arr[:, :3]
    if arr.shape[0] == 0:
        raise DataError(f"{source}: contains no images")
    if arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr)).float() / 127.5 - 1, "uint8 values read as [0, 255]"
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{source}: unsupported image dtype {arr.dtype} (use uint8 or float)")
    x = torch.from_numpy(np.ascontiguousarray(arr)).float()
    if not torch.isfinite(x).all():
        raise DataError(f"{source}: contains NaN or Inf")
    lo, hi, tol = x.min().item(), x.max().item(), RANGE_TOLERANCE
    if lo >= -tol and hi <= 1 + tol:
        return (x.clamp(0, 1) * 2 - 1).contiguous(), f"float values in [{lo:.3g}, {hi:.3g}] read as [0, 1]"
    if lo >= -1 - tol and hi <= 1 + tol:
        return x.clamp(-1, 1).contiguous(), f"float values in [{lo:.3g}, {hi:.3g}] read as [-1, 1]"
    raise DataError(f"{source}: float images must lie in [0, 1] or [-1, 1], got [{lo:.3g}, {hi:.3g}]")


def load_npz(path: str) -> torch.Tensor:
    """Images from an .npz file: the array named 'images' or 'x', else the only array."""
    return _load_npz(path)[0]


def _load_npz(path: str) -> tuple[torch.Tensor, str]:
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            key = next((k for k in ("images", "x", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(f"{path}: several arrays {keys}; name the images array 'images'")
            arr = f[key]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None
    return _to_unit_range(arr, path)


def _decode(path: str) -> torch.Tensor:
    """One image file -> float32 [3, H, W] in [-1, 1], scaled by its mode's range: 16-bit
    grayscale (Pillow's "I;16" modes, or "I") by 65535, everything else as 8-bit RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I"):
                gray = torch.from_numpy(np.asarray(im, dtype=np.float32) / 65535)
                return (gray * 2 - 1).expand(3, -1, -1).contiguous()
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1


class ImageFolder(torch.utils.data.Dataset):
    """Every PNG/JPEG/BMP/WebP under ``root`` (recursively), decoded lazily (DataLoader workers).

    Construction reads every header: an empty folder, an unreadable or oversized (Pillow's
    decompression-bomb limit) file or mixed sizes is a ``DataError`` here. A file whose header
    reads but whose data does not (truncated, corrupt) is a ``DataError`` when it is loaded.
    """

    def __init__(self, root: str):
        from PIL import Image, UnidentifiedImageError

        if not os.path.isdir(root):
            raise DataError(f"{root}: no such folder")
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        sizes = {}
        for f in files:
            try:
                with Image.open(f) as im:
                    sizes.setdefault(im.size, f)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
                raise DataError(f"{f}: unreadable image ({type(exc).__name__}: {exc})") from None
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise DataError(f"{root}: images have mixed sizes, e.g. {f1} is {s1[0]}x{s1[1]} and {f2} is "
                            f"{s2[0]}x{s2[1]}; resize them to one square size first")
        (w, h), = sizes
        if w != h:
            raise DataError(f"{root}: images are {w}x{h}; fastgan's models need square images")
        self.files, self.resolution = files, w

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return (_decode(self.files[i]),)  # like TensorDataset


def load_dataset(path: str | None, resolution: int, n_embedded: int = 8192, seed: int = 0,
                 resolutions: tuple[int, ...] | None = None):
    """A Dataset of [3, R, R] images: the embedded shapes (path None, with ``labels`` and
    ``classes``), an .npz, or a folder.
    ``resolutions``: the sizes the models support (named when the data fits none of them).
    An .npz dataset's ``note`` says which value range was assumed."""
    if path is None:  # its ``labels`` (int64 [N]) index ``classes``, the shape of each image
        images, attrs = make_shapes(n_embedded, resolution, seed, return_attributes=True)
        ds = torch.utils.data.TensorDataset(images)
        ds.labels, ds.classes = attrs["label"], SHAPE_CLASSES
        return ds
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        ds = ImageFolder(path)
        res = ds.resolution
    elif path.endswith(".npz"):
        x, note = _load_npz(path)
        if x.shape[-1] != x.shape[-2]:
            raise DataError(f"{path}: images are {x.shape[-2]}x{x.shape[-1]}; fastgan's models need square images")
        ds, res = torch.utils.data.TensorDataset(x.expand(-1, 3, -1, -1).contiguous()), x.shape[-1]
        ds.note = note
    else:
        raise DataError(f"{path}: expected a folder of images or an .npz file")
    if res != resolution:
        fix = (f"pass --resolution {res}" if resolutions is None or res in resolutions else
               f"fastgan's models take {' or '.join(map(str, resolutions))} px images: resize them")
        raise DataError(f"{path}: images are {res}x{res} but the model is built for {resolution}x{resolution}; {fix}")
    return ds


# ----------------------------------------------------------------------------- sampling

class StepBatchSampler(torch.utils.data.Sampler):
    """Deterministic batches by step: batch ``s`` is slice ``s % per_epoch`` of the permutation
    drawn from ``(seed, s // per_epoch)``. Starting at any step reproduces the same sequence,
    which is what exact resume needs. Under data parallelism each rank takes its contiguous
    share of the global batch. Incomplete batches are dropped (fixed shapes for CUDA graphs).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, end_step: int | None = None,
                 rank: int = 0, world_size: int = 1):
        if batch_size > n:
            raise DataError(f"batch size {batch_size} is larger than the dataset ({n} images)")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        self.n, self.batch, self.seed = n, batch_size, seed
        self.start, self.end = start_step, end_step
        self.rank, self.world = rank, world_size
        self.per_epoch = n // batch_size

    def indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        share = self.batch // self.world
        lo = i * self.batch + self.rank * share
        return perm[lo:lo + share].tolist()

    def __iter__(self):
        step = self.start
        while self.end is None or step < self.end:
            yield self.indices(step)
            step += 1

    def __len__(self):
        return (self.end - self.start) if self.end is not None else 2 ** 62


def make_loader(dataset, batch_size: int, seed: int, start_step: int, end_step: int, device: torch.device,
                workers: int | None = None, rank: int = 0, world_size: int = 1):
    """A DataLoader of ``StepBatchSampler`` batches; pinned memory on CUDA. ``workers=None``:
    in-memory tensors need no worker processes; image folders get up to 8 decoding workers.
    The loader has its own seeded generator (its workers' seeds): creating an iterator draws
    nothing from the global torch generator, whose stream a resumed run must continue exactly."""
    if workers is None:
        workers = 0 if isinstance(dataset, torch.utils.data.TensorDataset) else min(8, os.cpu_count() or 1)
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, end_step, rank, world_size)
    pin = device.type == "cuda"
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin,
                                       persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(seed))
