"""``fastgan generate``: export N generated images as a dataset, atomically and resumably.

Layout of ``out`` (torchvision's ImageFolder layout: one subfolder per class; an unconditional
model's images all go to ``unconditional/``):

    out/unconditional/000000.png ...    (--format png; a conditional model: out/<class name>/...)
    out/images.npz                      (--format npz: ``images`` uint8 [N, H, W, 3], ``labels`` int64 [N],
                                         ``classes``; built from per-batch parts in out/parts/)
    out/manifest.json                   format, complete, checkpoint and its SHA-256, step, seed, count,
                                        the files and the class of each

Atomic: every file is written with ``fastgan.atomic.atomic_write`` (temporary file, fsync,
rename), the manifest first with ``"complete": false`` and the number of images done, updated
after each batch, and ``"complete": true`` (with the list of files) only after the last file: an
interrupted run never leaves a set whose manifest says it is complete. A folder lock keeps a
second process out.

Classes (a class-conditional checkpoint): ``klass`` (``--class K``, an index or a name): all n
images of that class; ``per_class`` (``--per-class M``): M images of every class, image i of
class i // M (n = M * classes); neither: n images, image i of class i mod classes. Files are
named by their image index i in every case. ``--class``/``--per-class`` on an unconditional
checkpoint is an error.

Resumable: image i's latent is drawn from a generator seeded with (seed, i) alone
(``model.latents``), batches start at multiples of the batch size, and ``--resume`` continues at
the first batch the manifest does not count, with the same checkpoint (checked by SHA-256), seed,
count, format and batch size: the finished set is identical to an uninterrupted run's.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

from ..atomic import FolderLock, atomic_write, atomic_write_json, remove_stale_temporaries
from .model import file_sha256, generate_batch, load_generator, resolve_device, to_uint8

MANIFEST = "manifest.json"
FORMAT = "fastgan-generated-set"
VERSION = 1
PARTS = "parts"
NPZ_NAME = "images.npz"
UNCONDITIONAL = "unconditional"
FORMATS = ("png", "npz")
# what a resumed run must share with the interrupted one
_RUN_KEYS = ("checkpoint_sha256", "weights", "seed", "count", "image_format", "batch_size", "truncation",
             "selection")


class GenerateError(ValueError):
    """The generate request cannot be carried out (bad arguments, a folder in the way, a resume
    that does not match the interrupted run)."""


def _read_manifest(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise GenerateError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GenerateError(f"{path}: not a fastgan generate manifest")
    return doc


def _file_name(cls: str, index: int, count: int) -> str:
    return f"{cls}/{index:0{max(6, len(str(count - 1)))}d}.png"


def _write_png(path: str, arr: np.ndarray) -> None:
    from PIL import Image

    atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"), binary=True)


def _write_npz(path: str, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), binary=True)


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise GenerateError(f"{name} must be a positive integer, got {v!r}")
    return v


def resolve_class(klass, classes) -> int:
    """The index of ``klass`` (a class index, or a name of ``classes``), or a GenerateError listing them."""
    if isinstance(klass, str) and klass in classes:
        return classes.index(klass)
    index = int(klass) if isinstance(klass, str) and klass.strip().lstrip("-").isdigit() else klass
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(classes):
        listed = ", ".join(f"{k} {c}" for k, c in enumerate(classes[:20])) + (" ..." if len(classes) > 20 else "")
        raise GenerateError(f"--class {klass!r} is none of this model's {len(classes)} classes ({listed})")
    return index


def _selection(n, klass, per_class, classes, checkpoint: str):
    """(n, the label of each image as a function, the manifest's ``selection``) of a request."""
    if classes is None:
        if klass is not None or per_class is not None:
            raise GenerateError(f"--class and --per-class need a class-conditional checkpoint; {checkpoint} is "
                                "unconditional (trained without --conditional)")
        return _positive("--n", n), (lambda i: 0), None
    if klass is not None and per_class is not None:
        raise GenerateError("give --class or --per-class, not both")
    if per_class is not None:
        _positive("--per-class", per_class)
        if n is not None:
            raise GenerateError(f"give --n or --per-class, not both (--per-class {per_class} writes "
                                f"{per_class * len(classes)} images: {per_class} of each of {len(classes)} classes)")
        return per_class * len(classes), (lambda i: i // per_class), {"per_class": per_class}
    _positive("--n", n)
    if klass is not None:
        k = resolve_class(klass, classes)
        return n, (lambda i: k), {"class": classes[k]}
    return n, (lambda i: i % len(classes)), {"round_robin": len(classes)}


def generate(checkpoint: str, n: int | None, out: str, fmt: str = "png", seed: int = 0, batch_size: int = 256,
             resume: bool = False, ema: bool = True, device="auto", progress: bool = False, log=None,
             on_batch=None, truncation: float = 1.0, klass=None, per_class: int | None = None) -> dict:
    """Write ``n`` images of the checkpoint's G (its EMA by default) into ``out`` (module doc);
    returns the final manifest (with ``manifest``: its path). ``on_batch(done)`` is called after
    each batch is on disk and counted. ``truncation``: psi in (0, 1] (``model.generate_batch``).
    A conditional checkpoint: ``klass`` (index or name) or ``per_class`` (then ``n`` is None)."""
    if n is not None or per_class is None:
        _positive("--n", n)
    if fmt not in FORMATS:
        raise GenerateError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise GenerateError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0 < truncation <= 1:
        raise GenerateError(f"--truncation must lie in (0, 1], got {truncation!r}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise GenerateError(f"--out {out}: a file is in the way (expected a folder)")
    G, cfg, state = load_generator(checkpoint, ema=ema, device=resolve_device(device))
    n, label_of, selection = _selection(n, klass, per_class, G.classes, checkpoint)
    classes = list(G.classes) if G.classes else [UNCONDITIONAL]
    run = {"checkpoint_sha256": file_sha256(checkpoint), "weights": "G_ema" if ema else "G", "seed": seed,
           "count": n, "image_format": fmt, "batch_size": batch_size, "truncation": float(truncation),
           "selection": selection}
    manifest_path = os.path.join(out, MANIFEST)
    with FolderLock(out):
        old = _read_manifest(manifest_path)
        if old is not None:
            mismatched = [k for k in _RUN_KEYS if old.get(k) != run[k]]
            if old.get("complete") and not mismatched and resume:
                if log:
                    log(f"{out} already holds the complete set of {n} images")
                return {**old, "manifest": manifest_path}
            if old.get("complete"):
                raise GenerateError(f"{out} already holds a complete generated set ({old.get('count')} images); "
                                    "choose another folder")
            if not resume:
                raise GenerateError(f"{out} holds an interrupted generate ({old.get('done', 0)} of "
                                    f"{old.get('count')} images); pass --resume to continue it, or choose another "
                                    "folder")
            if mismatched:
                raise GenerateError(f"--resume: {out} was generated with other settings: "
                                    + ", ".join(f"{k} {old.get(k)!r} (now {run[k]!r})" for k in mismatched))
            done = old.get("done", 0)
            if not isinstance(done, int) or not 0 <= done <= n or (done % batch_size and done != n):
                raise GenerateError(f"{manifest_path}: 'done' = {done!r} is not a batch boundary of this run")
            if log:
                log(f"resuming {out} at image {done} of {n}")
        else:
            clutter = [e for e in os.listdir(out) if e != FolderLock.NAME]
            if clutter:
                raise GenerateError(f"--out {out} is not empty and holds no generate manifest (e.g. {clutter[0]}); "
                                    "choose a new or empty folder")
            done = 0
        folders = [out, os.path.join(out, PARTS)] + [os.path.join(out, c) for c in classes]
        remove_stale_temporaries(*folders)
        doc = {"format": FORMAT, "version": VERSION, "complete": False, "done": done, "checkpoint": checkpoint,
               **run, "step": state["step"], "resolution": cfg.resolution, "z_dim": cfg.z_dim,
               "classes": classes,
               "latents": "image i: N(0, I) drawn from a generator seeded with sha256(seed, i); truncation: dcgan "
                          "scales it, stylegan2 w <- w_avg + psi (w - w_avg)",
               "labels": ("none (unconditional)" if selection is None else
                          f"every image of class {selection['class']!r}" if "class" in selection else
                          f"image i of class i // {selection['per_class']}" if "per_class" in selection else
                          f"image i of class i mod {len(classes)}")}
        atomic_write_json(manifest_path, doc)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, initial=done, desc="fastgan generate", unit="img")
        try:
            for start in range(done, n, batch_size):
                stop = min(n, start + batch_size)
                labels = np.array([label_of(i) for i in range(start, stop)], dtype=np.int64)
                arr = to_uint8(generate_batch(G, seed, start, stop, truncation,
                                              labels=torch.from_numpy(labels) if G.classes else None)).numpy()
                if fmt == "png":
                    for j in range(stop - start):
                        _write_png(os.path.join(out, _file_name(classes[labels[j]], start + j, n)), arr[j])
                else:
                    _write_npz(os.path.join(out, PARTS, f"{start:09d}.npz"), images=arr, labels=labels)
                doc["done"] = stop
                atomic_write_json(manifest_path, doc)
                if bar:
                    bar.update(stop - start)
                if on_batch:
                    on_batch(stop)
        finally:
            if bar:
                bar.close()
        if fmt == "png":
            files = [{"file": _file_name(classes[label_of(i)], i, n), "class": classes[label_of(i)]}
                     for i in range(n)]
        else:
            parts = [os.path.join(out, PARTS, f"{s:09d}.npz") for s in range(0, n, batch_size)]
            images, labels = [], []
            for p in parts:
                with np.load(p, allow_pickle=False) as f:
                    images.append(f["images"])
                    labels.append(f["labels"])
            images, labels = np.concatenate(images), np.concatenate(labels)
            _write_npz(os.path.join(out, NPZ_NAME), images=images, labels=labels, classes=np.array(classes))
            counts = {c: int((labels == k).sum()) for k, c in enumerate(classes)}
            files = [{"file": NPZ_NAME, "images": n, "class": "per image: its 'labels' entry indexes 'classes'",
                      "class_counts": counts}]
        doc.update(complete=True, done=n, files=files)
        atomic_write_json(manifest_path, doc)
        if fmt == "npz":
            for p in parts:
                os.unlink(p)
            os.rmdir(os.path.join(out, PARTS))
    return {**doc, "manifest": manifest_path}
