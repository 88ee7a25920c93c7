"""Atomic file writes, and the lock that gives one run a folder.

A write goes to a temporary file in the target's folder, is flushed and fsynced, then renamed
over the target (``os.replace`` is atomic on POSIX): a crash mid-write never leaves a truncated
file where a good one was. The temporary file is created with the umask's permissions, as the
target would be by ``open``. Used for checkpoints, result documents, reports, the conv dispatch
cache and sample grids.

A process killed mid-write (SIGKILL, power loss) leaves its temporary file behind:
``remove_stale_temporaries`` deletes them, for a folder whose ``FolderLock`` is held (so that no
other writer is using it).
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
from typing import IO, Callable

_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # ".<name>.<8 hex digits>.tmp", as _temporary creates them
# what an OSError of a write means for the user, where the errno alone does not say it
_WRITE_HINTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EFBIG: "the file is over the size limit", errno.EEXIST: "a file is in the way of a folder",
                errno.ENOTDIR: "a file is in the way of a folder", errno.EISDIR: "a folder, not a file name"}


def _temporary(path: str) -> tuple[int, str]:
    """(fd, name) of a new file ``.<basename>.<random>.tmp`` next to ``path`` (mode 0666 & ~umask)."""
    folder, base = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> str:
    """Call ``write(f)`` on a temporary file, then rename it to ``path``; returns ``path``.
    A system OSError names ``path`` (``exc.filename``) even when the failing call did not."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = path  # a system error (e.g. ENOSPC from write()) that did not name the file
        raise
    return path


def atomic_write_json(path: str | os.PathLike, doc, **dump_kwargs) -> str:
    """``json.dump(doc)`` (indent 1, trailing newline) written atomically."""
    def write(f):
        json.dump(doc, f, indent=1, **dump_kwargs)
        f.write("\n")

    return atomic_write(path, write)


def write_error(exc: OSError) -> str:
    """One line for a failed write: the file, the reason and what it means where the system's
    words do not say it (a full disk, a file where a folder should be)."""
    hint = _WRITE_HINTS.get(exc.errno)
    where = f"{exc.filename}: " if exc.filename else ""
    return f"cannot write {where}{exc.strerror or exc}" + (f" ({hint})" if hint else "")


def check_writable(path: str | os.PathLike) -> None:
    """Raise the ``OSError`` now that ``atomic_write(path)`` would raise for want of a writable
    place (``path`` a folder, its folder read-only, not creatable, no permission): creates the
    folder, and a temporary file it removes again."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = _temporary(path)
    os.close(fd)
    os.unlink(tmp)


def remove_stale_temporaries(*folders: str) -> list[str]:
    """Delete the temporary files that interrupted ``atomic_write`` calls left in ``folders``
    (not recursively); returns their paths. Only for folders no other process writes to."""
    removed = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if _TEMP.match(name) and os.path.isfile(path):
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass
    return removed


class FolderLock:
    """``with FolderLock(folder):`` an exclusive lock on ``folder`` (created if missing) for one
    process, or a ``FolderLockedError`` naming the process that holds it.

    The lock is a POSIX record lock (``fcntl.lockf``) on ``folder/.fastgan.lock``: the system
    releases it when the process ends, however it ends (SIGKILL included), so a lock is never
    stale; the file stays and names the last holder (pid, host). Forked children (DataLoader
    workers) do not inherit it. Without ``fcntl`` (Windows) nothing is locked. Creating the lock
    file also proves the folder writable: the OSError of a folder that is not is raised here."""

    NAME = ".fastgan.lock"

    def __init__(self, folder: str):
        self.folder, self.path, self._fd = folder, os.path.join(folder, self.NAME), None

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:
            return self
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise FolderLockedError(f"{self.folder} is in use by another run ({holder}); wait for it to "
                                        "finish or choose another folder") from None
            exc.filename = self.path
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
        return False


class FolderLockedError(RuntimeError):
    """The folder is locked by another live process."""
