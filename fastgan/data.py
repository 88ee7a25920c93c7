"""Training data: the embedded procedural "shapes" dataset, folders of images, .npz arrays,
and a deterministic, resumable batch sampler.

All datasets yield float32 images in [-1, 1], shape [C, H, W]. Bad data fails early with a
``DataError`` naming the file: an empty folder, an unreadable or oversized image header, mixed
image sizes, a channel count other than 1, 3 or 4. An image folder is decoded lazily (in
DataLoader workers); an image that fails to decode there is a ``DataError`` at that batch.

Data that is not pre-resized (``resize``): each image's short side is resized to the model's
resolution (torch's antialiased bicubic, deterministic), then cropped square (``crop``: the
center, or a random offset along the long side). ``xflip`` flips each drawn image horizontally
with probability 1/2 (the dataset's length is unchanged: it does not double it). The random
offset and flip of a draw come from ``(seed, draw number)`` alone (``StepBatchSampler`` passes
the draw number with each index), so they are the same in every run with that seed, under any
number of DataLoader workers or processes, and after a resume.

Labels (class-conditional training, ``conditional_labels``): a dataset may carry ``labels``
(int64 [N], indices into ``classes``) and ``classes`` (the class names): the embedded shapes
(``SHAPE_CLASSES``), a folder whose images all lie in subfolders (one per class, the sorted
subfolder names, as torchvision's ImageFolder), an .npz with a ``labels`` array (and optionally
``classes``; without it the classes are "0" .. "K-1", K = max label + 1), or a user Dataset
with ``labels`` or ``targets`` and ``classes`` attributes (torchvision's convention). Labels that
are present but unusable (out of range, not integers) are kept as ``label_problem`` and are an
error only when labels are asked for: unconditional training ignores them.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CROPS = ("center", "random")
RESIZE_HINT = "pass --resize (resize=True) to resize the short side to the resolution and crop the center"


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


LABEL_ARRAYS = ("labels", "classes")  # an .npz's optional label arrays (never taken for the images)


def _load_npz(path: str) -> tuple[torch.Tensor, str, dict]:
    """(images, the range note, the label attributes: ``_npz_labels``)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            image_keys = [k for k in keys if k not in LABEL_ARRAYS]
            key = next((k for k in ("images", "x", "arr_0") if k in keys),
                       image_keys[0] if len(image_keys) == 1 else None)
            if key is None:
                raise DataError(f"{path}: several arrays {keys}; name the images array 'images'" if image_keys else
                                f"{path}: no images array (only {keys})")
            arr = f[key]
            labels = f["labels"] if "labels" in keys else None
            classes = f["classes"] if "classes" in keys else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None
    images, note = _to_unit_range(arr, path)
    return images, note, _npz_labels(labels, classes, len(images), path)


def _check_class_names(names, source: str) -> tuple[str, ...]:
    """Class names: distinct, non-empty strings usable as one folder name each (``fastgan generate``
    writes one subfolder per class)."""
    names = tuple(str(c) for c in names)
    bad = next((c for c in names if not c or c in (".", "..") or "/" in c or "\\" in c or "\0" in c), None)
    if bad is not None:
        raise DataError(f"{source}: class name {bad!r} cannot be a folder name")
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise DataError(f"{source}: class {dup!r} is named twice")
    return names


def _npz_labels(labels, classes, n: int, path: str) -> dict:
    """The label attributes of an .npz (``labels``, ``classes``, ``label_problem``)."""
    if labels is None:  # unlabelled (not a problem) unless it names classes
        return {"labels": None, "classes": None,
                "label_problem": None if classes is None else f"{path}: 'classes' but no 'labels' array"}
    try:
        if labels.ndim != 1 or len(labels) != n:
            raise DataError(f"{path}: 'labels' has shape {list(labels.shape)}, but there are {n} images: it needs "
                            f"one class index per image, shape [{n}]")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: 'labels' must hold integer class indices, got dtype {labels.dtype}")
        lab = torch.from_numpy(labels.astype(np.int64))
        if classes is not None:
            if classes.ndim != 1 or classes.dtype.kind not in "US":
                raise DataError(f"{path}: 'classes' must be a 1-d array of class names (strings), got dtype "
                                f"{classes.dtype}, shape {list(classes.shape)}")
            names = _check_class_names([c.decode() if isinstance(c, bytes) else c for c in classes.tolist()], path)
        else:
            names = tuple(str(i) for i in range(int(lab.max()) + 1)) if int(lab.min()) >= 0 else ()
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi >= len(names):
            bad = lo if lo < 0 else hi
            raise DataError(f"{path}: label {bad} is out of range: labels index the {len(names)} classes, 0 to "
                            f"{len(names) - 1}" + ("" if classes is not None else " (no 'classes' array: labels "
                                                   "must be >= 0)"))
    except DataError as exc:
        return {"labels": None, "classes": None, "label_problem": str(exc)}
    return {"labels": lab, "classes": names, "label_problem": None}


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
    Labels: when every image lies in a subfolder of ``root``, ``classes`` are the sorted names of
    those subfolders (the ones holding images) and ``labels`` the index of each file's one.
    """

    def __init__(self, root: str, same_size: bool = True):
        """``same_size=False``: images of any sizes (they are resized later); ``resolution`` is None."""
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
        self.files, self.resolution = files, None
        self._set_labels(root)
        if not same_size:
            return
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise DataError(f"{root}: images have mixed sizes, e.g. {f1} is {s1[0]}x{s1[1]} and {f2} is "
                            f"{s2[0]}x{s2[1]}; {RESIZE_HINT}")
        (w, h), = sizes
        if w != h:
            raise DataError(f"{root}: images are {w}x{h}; fastgan's models need square images: {RESIZE_HINT}")
        self.resolution = w

    def _set_labels(self, root: str) -> None:
        tops = [os.path.relpath(f, root).split(os.sep) for f in self.files]
        loose = next((f for f, parts in zip(self.files, tops) if len(parts) == 1), None)
        self.labels = self.classes = self.label_problem = None
        if loose is not None:
            self.label_problem = (f"{root}: {loose} lies in the folder itself, so it has no class: labelled "
                                  "folders hold one subfolder per class, every image in one of them")
            return
        try:
            self.classes = _check_class_names(sorted({parts[0] for parts in tops}), root)
        except DataError as exc:
            self.label_problem = str(exc)
            return
        index = {c: k for k, c in enumerate(self.classes)}
        self.labels = torch.tensor([index[parts[0]] for parts in tops], dtype=torch.int64)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return (_decode(self.files[i]),)  # like TensorDataset


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float images [..., C, H, W] resized so that the short side is ``size`` (the long side to
    ``round(long * size / short)``), antialiased bicubic (``F.interpolate(antialias=True)``,
    deterministic), clamped to [-1, 1]. Unchanged when the short side already is ``size``."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    hw = (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)
    flat = x.reshape(-1, *x.shape[-3:])
    out = torch.cat([torch.nn.functional.interpolate(flat[i:i + 256], size=hw, mode="bicubic", antialias=True,
                                                     align_corners=False) for i in range(0, len(flat), 256)])
    return out.reshape(*x.shape[:-2], *hw).clamp(-1, 1)


def _draw_rng(seed: int, draw: int) -> np.random.Generator:
    """The generator of one draw: a function of (seed, draw number) only."""
    return np.random.default_rng([0x6661737467616E, seed, draw])  # "fastgan"


def as_image(item, source: str) -> torch.Tensor:
    """One item of a user's Dataset (an image, or a tuple whose first element is the image, e.g.
    (image, label)) -> float32 [3, H, W] in [-1, 1]. Images: [C, H, W] tensors or arrays, C 1, 3
    or 4 (alpha dropped), uint8 [0, 255] or float [-1, 1]; anything else is one DataError."""
    x = item[0] if isinstance(item, (tuple, list)) and len(item) > 0 else item
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{source}: expected an image tensor [C, H, W] or a tuple (image, ...), got "
                        f"{type(item).__name__}")
    if x.ndim != 3 or x.shape[0] not in CHANNELS:
        raise DataError(f"{source}: images must be [C, H, W] tensors with C 1, 3 or 4, got shape {list(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1
    elif x.is_floating_point():
        x = x.float()
        lo, hi = x.min().item(), x.max().item()
        if not (math.isfinite(lo) and math.isfinite(hi) and lo >= -1 - RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):
            raise DataError(f"{source}: float images must lie in [-1, 1] (or be uint8 [0, 255]), got values in "
                            f"[{lo:.3g}, {hi:.3g}]")
        x = x.clamp(-1, 1)
    else:
        raise DataError(f"{source}: unsupported image dtype {x.dtype} (use uint8 or float)")
    return x[:3].expand(3, -1, -1) if x.shape[0] != 4 else x[:3]


class Transformed(torch.utils.data.Dataset):
    """A dataset's images at ``resolution``: optionally resized (short side), cropped square
    (``crop``: center or random) and randomly flipped (``xflip``); ``user=True`` also converts
    and checks each item (``as_image``). Indexed by an int (center crop, no flip) or by
    ``(index, draw)``: the random offset and flip of that draw (``StepBatchSampler(keyed=True)``).
    """

    def __init__(self, base, resolution: int, resize: bool = False, crop: str = "center", xflip: bool = False,
                 seed: int = 0, user: bool = False, source: str = "dataset"):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        self.base, self.resolution, self.resize, self.crop, self.xflip = base, resolution, resize, crop, xflip
        self.seed, self.user, self.source = seed, user, source
        self.random_draws = crop == "random" or xflip  # make_loader then passes (index, draw) keys
        self.in_memory = isinstance(base, torch.utils.data.TensorDataset)
        self.labels, self.classes, self.label_problem = _label_attributes(base)
        if user:
            self[0]  # the first item: one clear error now rather than in a worker

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        i, draw = key if isinstance(key, tuple) else (key, None)
        item = self.base[i]
        x = as_image(item, f"{self.source}[{i}]") if self.user else item[0]
        r = self.resolution
        if self.resize:
            x = resize_short_side(x, r)
        h, w = x.shape[-2:]
        if (h, w) != (r, r) and (not self.resize or min(h, w) != r):
            raise DataError(f"{self.source}[{i}]: image is {w}x{h} but the model is built for {r}x{r}; {RESIZE_HINT}")
        rng = _draw_rng(self.seed, draw) if draw is not None and self.random_draws else None
        top, left = (h - r) // 2, (w - r) // 2
        if self.crop == "random" and rng is not None:
            top, left = int(rng.integers(0, h - r + 1)), int(rng.integers(0, w - r + 1))
        x = x[:, top:top + r, left:left + r]
        if self.xflip and rng is not None and rng.random() < 0.5:
            x = x.flip(-1)
        return (x.contiguous(),)


def _label_attributes(ds) -> tuple:
    """(labels, classes, label_problem) of a dataset: its ``labels`` (or, torchvision's name,
    ``targets``) and ``classes`` attributes, None where it has none."""
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = getattr(ds, "targets", None)
    return labels, getattr(ds, "classes", None), getattr(ds, "label_problem", None)


def conditional_labels(ds, source: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """(labels int64 [N], class names) of a dataset for class-conditional training, or a
    ``DataError`` saying why there are none: unlabelled data, labels of the wrong length or type,
    a label out of range, fewer than two classes."""
    labels, classes, problem = _label_attributes(ds)
    if problem:  # labels given but unusable: the problem names the file
        raise DataError(problem)
    if labels is None or classes is None:
        raise DataError(f"{source}: conditional training needs labelled data; labels come from the embedded "
                        "shapes, a folder with one subfolder per class, or an .npz with a 'labels' array "
                        "(and optionally 'classes')")
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{source}: its labels are not a sequence of class indices ({exc})") from None
    if labels.dim() != 1 or len(labels) != len(ds):
        raise DataError(f"{source}: {len(ds)} images but labels of shape {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"{source}: labels must be integer class indices, got {labels.dtype}")
    classes = _check_class_names(classes, source)
    labels = labels.to(torch.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= len(classes):
        raise DataError(f"{source}: label {lo if lo < 0 else hi} is out of range: labels index the {len(classes)} "
                        f"classes {list(classes)[:8]}{' ...' if len(classes) > 8 else ''}, 0 to {len(classes) - 1}")
    if len(classes) < 2:
        raise DataError(f"{source}: a single class ({classes[0] if classes else 'none'!r}): conditional training "
                        "needs at least two classes")
    return labels, classes


class Labelled(torch.utils.data.Dataset):
    """A dataset whose items carry their class: ``(image, label)`` (label a 0-d int64 tensor);
    keys and the loader hints (``random_draws``, ``in_memory``, ``note``) are the base dataset's."""

    def __init__(self, base, labels: torch.Tensor, classes: tuple[str, ...]):
        self.base, self.labels, self.classes = base, labels, classes
        self.random_draws = getattr(base, "random_draws", False)
        self.in_memory = getattr(base, "in_memory", isinstance(base, torch.utils.data.TensorDataset))
        self.note = getattr(base, "note", None)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return self.base[key][0], self.labels[i]


def load_dataset(path: str | None, resolution: int, n_embedded: int = 8192, seed: int = 0,
                 resolutions: tuple[int, ...] | None = None, resize: bool = False, crop: str = "center",
                 xflip: bool = False):
    """A Dataset of [3, R, R] images: the embedded shapes (path None, with ``labels`` and
    ``classes``), an .npz, or a folder.
    ``resolutions``: the sizes the models support (named when the data fits none of them).
    ``resize``, ``crop``, ``xflip``: see the module docstring (an .npz is resized once, here).
    An .npz dataset's ``note`` says which value range was assumed."""
    if path is None:  # its ``labels`` (int64 [N]) index ``classes``, the shape of each image
        images, attrs = make_shapes(n_embedded, resolution, seed, return_attributes=True)
        ds = torch.utils.data.TensorDataset(images)
        ds.labels, ds.classes = attrs["label"], SHAPE_CLASSES
        return Transformed(ds, resolution, False, crop, xflip, seed) if xflip or crop == "random" else ds
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        if resize:
            return Transformed(ImageFolder(path, same_size=False), resolution, True, crop, xflip, seed, source=path)
        ds = ImageFolder(path)
        res = ds.resolution
    elif path.endswith(".npz"):
        x, note, label_attrs = _load_npz(path)
        if resize:
            x = resize_short_side(x, resolution)
        elif x.shape[-1] != x.shape[-2]:
            raise DataError(f"{path}: images are {x.shape[-1]}x{x.shape[-2]}; fastgan's models need square images: "
                            f"{RESIZE_HINT}")
        ds, res = torch.utils.data.TensorDataset(x.expand(-1, 3, -1, -1).contiguous()), min(x.shape[-2:])
        ds.note = note
        for name, value in label_attrs.items():  # labels, classes, label_problem
            setattr(ds, name, value)
    else:
        raise DataError(f"{path}: expected a folder of images or an .npz file")
    if res != resolution:
        fix = (f"pass --resolution {res}, or {RESIZE_HINT}" if resolutions is None or res in resolutions else
               f"fastgan's models take {' or '.join(map(str, resolutions))} px images: {RESIZE_HINT}")
        raise DataError(f"{path}: images are {res}x{res} but the model is built for {resolution}x{resolution}; {fix}")
    if resize or xflip or crop == "random":  # an .npz resized above: its long side is cropped per item
        wrapped = Transformed(ds, resolution, resize, crop, xflip, seed, source=path)
        wrapped.note = getattr(ds, "note", None)
        return wrapped
    return ds


def user_dataset(data, resolution: int, resize: bool = False, crop: str = "center", xflip: bool = False,
                 seed: int = 0):
    """A user's torch Dataset as fastgan's training data (``Trainer(cfg, dataset=...)``): every
    item is converted and checked (``as_image``), then resized / cropped / flipped like a folder."""
    if not isinstance(data, torch.utils.data.Dataset) or isinstance(data, torch.utils.data.IterableDataset):
        raise DataError(f"dataset must be a map-style torch Dataset (with __len__ and __getitem__) or a "
                        f"DataLoader, got {type(data).__name__}")
    try:
        n = len(data)
    except TypeError:
        raise DataError(f"dataset {type(data).__name__} has no __len__") from None
    if n == 0:
        raise DataError(f"dataset {type(data).__name__} is empty")
    return Transformed(data, resolution, resize, crop, xflip, seed, user=True, source=f"dataset {type(data).__name__}")


class LoaderBatches:
    """A user's DataLoader as the trainer's batch iterator: its batches in its own order, epoch
    after epoch, each converted and checked (``as_image``, per image) and of ``batch`` images;
    ``skip`` batches are drawn and dropped first (a resume: exact when the loader's order is
    deterministic, e.g. a seeded ``generator``)."""

    def __init__(self, loader, batch: int, resolution: int, skip: int = 0):
        self.loader, self.batch, self.resolution = loader, batch, resolution
        self.it, self.n = iter(loader), 0
        for _ in range(skip):
            self._next_raw()

    def _next_raw(self):
        try:
            item = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            item = next(self.it, None)
            if item is None:
                raise DataError("the DataLoader yields no batches") from None
        self.n += 1
        return item

    def __iter__(self):
        return self

    def __next__(self):
        item = self._next_raw()
        x = item[0] if isinstance(item, (tuple, list)) else item
        where = f"DataLoader batch {self.n - 1}"
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise DataError(f"{where}: expected a batch tensor [B, C, H, W] or a tuple (images, ...), got "
                            f"{type(x).__name__} {list(getattr(x, 'shape', []))}")
        r = self.resolution
        if x.shape[0] != self.batch or x.shape[-2:] != (r, r):
            raise DataError(f"{where}: shape {list(x.shape)}, but training needs [{self.batch}, C, {r}, {r}] "
                            "(batch_size per process; use drop_last=True)")
        return (torch.stack([as_image(img, where) for img in x]),)

# ----------------------------------------------------------------------------- sampling

class StepBatchSampler(torch.utils.data.Sampler):
    """Deterministic batches by step: batch ``s`` is slice ``s % per_epoch`` of the permutation
    drawn from ``(seed, s // per_epoch)``. Starting at any step reproduces the same sequence,
    which is what exact resume needs. Under data parallelism each rank takes its contiguous
    share of the global batch. Incomplete batches are dropped (fixed shapes for CUDA graphs).
    ``keyed``: each index comes as ``(index, draw number)``, the draw number counting the images
    of the global batch stream (``Transformed`` draws its random crop and flip from it).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, end_step: int | None = None,
                 rank: int = 0, world_size: int = 1, keyed: bool = False):
        if batch_size > n:
            raise DataError(f"batch size {batch_size} is larger than the dataset ({n} images)")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world_size}")
        self.n, self.batch, self.seed = n, batch_size, seed
        self.start, self.end = start_step, end_step
        self.rank, self.world = rank, world_size
        self.per_epoch = n // batch_size
        self.keyed = keyed

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
            idx = self.indices(step)
            if self.keyed:  # (index, draw number): draw numbers count images of the global batch stream
                first = step * self.batch + self.rank * (self.batch // self.world)
                idx = [(i, first + j) for j, i in enumerate(idx)]
            yield idx
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
        in_memory = getattr(dataset, "in_memory", isinstance(dataset, torch.utils.data.TensorDataset))
        workers = 0 if in_memory else min(8, os.cpu_count() or 1)
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start_step, end_step, rank, world_size,
                               keyed=getattr(dataset, "random_draws", False))
    pin = device.type == "cuda"
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin,
                                       persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(seed))
