"""Checkpoints: written atomically, loaded safely, with clear errors.

Writing goes to a temporary file in the same folder, is flushed and fsynced, then renamed
over the target (``os.replace`` is atomic on POSIX): a crash mid-write leaves the previous
checkpoint intact. Loading uses ``torch.load(weights_only=True)`` (tensors, numbers,
strings, lists, dicts only: no arbitrary unpickling) and turns every failure into a
``CheckpointError`` that names the file.
"""
from __future__ import annotations

import os

import torch

from ..atomic import atomic_write

FORMAT = "fastgan-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "config", "step", "G", "D", "G_ema", "opt_g", "opt_d", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or incompatible with this run."""


def save_checkpoint(state: dict, path: str) -> None:
    """Atomically write ``state`` (plus the format tag) to ``path``."""
    state = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
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
    return state
