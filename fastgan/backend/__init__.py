"""Which implementation of an op runs: "triton", "interpret" or "eager" (and, for convolutions,
the per-shape choice between fastgan's kernel and the vendor's: ``fastgan.backend.conv_dispatch``).

- ``"triton"``: the compiled Triton kernels, for CUDA tensors.
- ``"interpret"``: the same Triton kernels run by the Triton interpreter on the CPU
  (``TRITON_INTERPRET=1``); slow, but it checks the kernel code without a GPU.
- ``"eager"``: the plain-PyTorch reference of each op (the definition of the op).

Automatic choice: CUDA tensor and Triton importable -> "triton"; CPU tensor -> "eager".
``FASTGAN_BACKEND=eager|interpret|triton`` or ``use_backend(name)`` forces one; a forced
backend that cannot run raises :class:`BackendError`. A CUDA tensor whose Triton path is
unavailable falls back to eager with a single warning.

Triton decides between compiling and interpreting when a kernel is *defined*, so the
kernels module (``fastgan.kernels``) is imported lazily, after ``TRITON_INTERPRET`` has
been set when the interpreter is wanted. One process runs the kernels one way only.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings
from typing import Iterator

import torch

BACKENDS = ("triton", "interpret", "eager")
_ENV_VAR = "FASTGAN_BACKEND"
# the use_backend stack (innermost last). Process-wide, not a ContextVar: autograd runs CUDA backward
# functions on its own worker threads, which must see the backend the forward ran with, and
# torch.compile traces a plain list read (it cannot trace ContextVar.get).
_forced: list[str] = []
_warned: set[str] = set()
_decided: dict[tuple, str] = {}  # (forced backend, device type) -> backend, once checked
_triton_error: str | None = None  # why Triton could not be imported, once known
_kernels = None  # the imported fastgan.kernels module


_INTERPRET_TOO_LATE = (
    "backend 'interpret' was requested after Triton was imported in compiled mode; Triton chooses "
    "between compiling and interpreting at import, so set FASTGAN_BACKEND=interpret (or "
    "TRITON_INTERPRET=1) in the environment before Python starts")


class BackendError(RuntimeError):
    """A forced backend cannot run here (no Triton, no CUDA, interpreter mode mismatch)."""


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _check_name(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {BACKENDS + ('auto',)}")
    return name


def forced_backend() -> str | None:
    """The backend forced by ``use_backend`` (innermost wins) or ``FASTGAN_BACKEND``; None if automatic."""
    name = _forced[-1] if _forced else None
    if name is None:
        env = os.environ.get(_ENV_VAR, "").strip()
        name = _check_name(env, _ENV_VAR) if env else None
    return None if name in (None, "auto") else name


def _want_interpreter_at_import() -> None:
    """FASTGAN_BACKEND=interpret implies TRITON_INTERPRET=1, which Triton reads when it is imported."""
    if os.environ.get(_ENV_VAR, "").strip().lower() == "interpret":
        os.environ["TRITON_INTERPRET"] = "1"


_want_interpreter_at_import()


def triton_interprets() -> bool:
    """True if Triton (already imported, or about to be) runs jit functions in the interpreter.

    Triton fixes the mode of its own library functions (tl.sum, tl.cdiv, ...) at import, so
    the answer is read from those once triton is imported.
    """
    if "triton" not in sys.modules:
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    try:
        from triton.runtime.interpreter import InterpretedFunction
        import triton.language as tl

        return isinstance(tl.standard.sum, InterpretedFunction)
    except Exception:
        return False


def triton_available() -> bool:
    """Whether Triton imports; the reason it does not is kept for ``triton_error()``."""
    global _triton_error
    try:
        importlib.import_module("triton")
        return True
    except Exception as exc:  # ImportError, or a broken install raising anything else
        _triton_error = f"{type(exc).__name__}: {exc}"
        return False


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0", "0"])[:2]
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)


def interpreter_problem() -> str | None:
    """Why the Triton interpreter cannot run fastgan's kernels in this environment, or None.

    Triton <= 3.6's interpreter turns loop bounds into Python ints with ``int()`` of a
    one-element array, which numpy >= 2.4 refuses ("only 0-dimensional arrays can be
    converted to Python scalars"); Triton 3.7 fixed it. The conv, loss and penalty kernels
    loop over runtime sizes, so they would fail deep inside the interpreter."""
    if not triton_available():
        return None
    import numpy
    import triton

    if _major_minor(triton.__version__) < (3, 7) and _major_minor(numpy.__version__) >= (2, 4):
        return (f"the Triton interpreter of triton {triton.__version__} cannot run with numpy {numpy.__version__} "
                "(triton <= 3.6 converts loop bounds with int() of a one-element array, which numpy >= 2.4 "
                "refuses); install 'numpy<2.4' or 'triton>=3.7' to use backend 'interpret'")
    return None


def triton_error() -> str | None:
    triton_available()
    return _triton_error


def kernels():
    """Import and return ``fastgan.kernels``; sets ``TRITON_INTERPRET=1`` first when interpreting."""
    global _kernels, _triton_error
    if _kernels is not None:
        return _kernels
    if forced_backend() == "interpret":
        if "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"
        elif not triton_interprets():
            raise BackendError(_INTERPRET_TOO_LATE)
    try:
        _kernels = importlib.import_module("fastgan.kernels")
    except Exception as exc:
        _triton_error = f"{type(exc).__name__}: {exc}"
        raise BackendError(f"fastgan's Triton kernels cannot be imported ({_triton_error})") from exc
    return _kernels


def backend_for(*tensors: torch.Tensor) -> str:
    """The backend an op on these tensors runs with: "triton", "interpret" or "eager".

    All tensors must be on one device type. Raises :class:`BackendError` when a forced
    backend cannot run on them.
    """
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"tensors are on different device types {sorted(devices)}; move them to one device")
    return backend_for_device(devices.pop() if devices else "cpu")


def backend_for_device(device) -> str:
    """The backend for tensors on ``device`` (a torch.device or a string like "cuda").

    Decided once per (forced backend, device type) and then looked up, so that torch.compile
    traces a dict lookup instead of the checks (which import Triton)."""
    key = (forced_backend(), torch.device(device).type)
    choice = _decided.get(key)
    if choice is None:
        choice = _decided[key] = _decide(*key)
    return choice


def _decide(forced: str | None, device: str) -> str:
    if forced == "eager":
        return "eager"
    if forced == "interpret":
        if "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"
        if not triton_available():
            raise BackendError(f"backend 'interpret' was forced but Triton cannot be imported ({_triton_error})")
        if not triton_interprets():
            raise BackendError(_INTERPRET_TOO_LATE)
        problem = interpreter_problem()
        if problem:
            raise BackendError(f"backend 'interpret': {problem}")
        return "interpret"
    if forced == "triton":
        if device != "cuda":
            raise BackendError(f"backend 'triton' was forced but the tensors are on {device!r}; "
                               "the compiled Triton path needs CUDA tensors (use 'interpret' on the CPU)")
        if not triton_available():
            raise BackendError(f"backend 'triton' was forced but Triton cannot be imported ({_triton_error})")
        return "triton"

    # automatic
    if device == "cuda":
        if triton_available():
            return "triton"
        _warn_once("no-triton", f"fastgan: Triton is unavailable ({_triton_error}); "
                                "falling back to the eager PyTorch reference")
        return "eager"
    return "eager"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend ("triton", "interpret", "eager" or "auto") inside a ``with`` block."""
    name = _check_name(name, "use_backend")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()
