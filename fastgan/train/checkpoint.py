"""Checkpoints: written atomically, verified on load, with clear errors.

Writing serialises the state in memory first (so a failing write is an ``OSError`` naming the
file, e.g. a full disk), then writes it to a temporary file in the same folder, flushed and
fsynced, and renames it over the target (``os.replace`` is atomic on POSIX): a crash mid-write
leaves the previous checkpoint intact. Every checkpoint carries the SHA-256 of its contents
(every tensor's bytes, dtype and shape, every other value, in order), checked on load: a
checkpoint changed after it was written (a flipped byte, a bad disk) is refused. Loading uses
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts only: no arbitrary
unpickling) and turns every failure into a ``CheckpointError`` that names the file.
"""
from __future__ import annotations

import hashlib
import io
import os

import torch

from ..atomic import atomic_write

FORMAT = "fastgan-checkpoint"
VERSION = 2  # 2: with "sha256"
REQUIRED = ("format", "version", "config", "step", "G", "D", "G_ema", "opt_g", "opt_d", "rng", "sha256")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or incompatible with this run."""


def _digest(obj, h) -> None:
    """Feed ``obj`` (nested dicts, lists, tuples, tensors, plain values) into the hash ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for k, v in obj.items():
            _digest(k, h)
            _digest(v, h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj) if isinstance(obj, list) else b"U%d" % len(obj))
        for v in obj:
            _digest(v, h)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def checksum(state: dict) -> str:
    """The SHA-256 (hex) of a checkpoint's contents, its "sha256" entry excluded."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "sha256"}, h)
    return h.hexdigest()


def save_checkpoint(state: dict, path: str) -> None:
    """Atomically write ``state`` (plus the format tag and the checksum) to ``path``."""
    state = {"format": FORMAT, "version": VERSION, **state}
    state["sha256"] = checksum(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), binary=True)


def _load(path: str, **kw) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, weights_only=True, **kw)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupted or truncated?): "
                              f"{type(exc).__name__}: {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastgan checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')} is not supported "
                              f"(this fastgan reads version {VERSION})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: malformed config entry")
    return state


def read_config(path: str) -> dict:
    """The config a checkpoint was written with, read without loading or verifying its tensors
    (``load_checkpoint`` verifies them)."""
    return _load(path, map_location="cpu", mmap=True)["config"]


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The verified state of the checkpoint at ``path``, or a one-line ``CheckpointError``."""
    state = _load(path, map_location=map_location)
    if state["sha256"] != checksum(state):
        raise CheckpointError(f"{path}: checksum mismatch: the file changed after it was written (corrupted)")
    for key in ("step", "d_steps"):
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{path}: {key} must be a non-negative integer, got {value!r}")
    return state
