"""Atomic file writes: a crash mid-write never leaves a truncated file where a good one was.

The data goes to a temporary file in the target's folder, is flushed and fsynced, then renamed
over the target (``os.replace`` is atomic on POSIX). Used for checkpoints, result documents,
reports, the conv dispatch cache and sample grids.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> str:
    """Call ``write(f)`` on a temporary file, then rename it to ``path``; returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_json(path: str | os.PathLike, doc, **dump_kwargs) -> str:
    """``json.dump(doc)`` (indent 1, trailing newline) written atomically."""
    def write(f):
        json.dump(doc, f, indent=1, **dump_kwargs)
        f.write("\n")

    return atomic_write(path, write)
