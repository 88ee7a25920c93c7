"""Run code written against NVlabs' ``torch_utils.ops`` on fastgan's ops, with no CUDA compiler.

``patch()`` imports the modules of an importable ``torch_utils.ops`` package (the user's
StyleGAN2-ADA / StyleGAN3 / R3GAN checkout) and replaces these functions, by name, with
fastgan's (same signatures; ``impl`` is accepted and ignored):

    bias_act.bias_act                     fastgan.functional.bias_act
    upfirdn2d.upfirdn2d                   fastgan.functional.upfirdn2d
    filtered_lrelu.filtered_lrelu         fastgan.functional.filtered_lrelu
    conv2d_gradfix.conv2d                 fastgan.functional.conv2d_act
    conv2d_gradfix.conv_transpose2d       fastgan.functional.conv_transpose2d_act
    conv2d_gradfix.no_weight_gradients    fastgan.functional.gradfix.no_weight_gradients
    conv2d_resample.conv2d_resample       fastgan.functional.conv2d_resample
    grid_sample_gradfix.grid_sample       fastgan.functional.grid_sample
    fma.fma                               fastgan.functional.fma

The package's own helpers (``setup_filter``, ``filter2d``, ``upsample2d``, ``downsample2d``)
look ``upfirdn2d`` up by name when called, so they run fastgan's too. Nothing after ``patch()``
reaches the package's plugin loader (nvcc/ninja), and ``no_weight_gradients()`` in the
package's losses really skips fastgan's weight gradients. Code that imported a function
itself (``from torch_utils.ops.fma import fma``) before ``patch()`` keeps the original: bind
early, or patch before importing the training code. Modules the package lacks (StyleGAN2-ADA
has no filtered_lrelu) are skipped.

``unpatch()`` restores the originals; ``patched()`` is the context-manager form.
``python -m fastgan.compat.nvlabs train.py ARGS...`` runs a script with the ops patched, in
its own worker processes too (``torch.multiprocessing.spawn``, StyleGAN's ``--gpus`` > 1).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import runpy
import sys
from typing import Iterator

from ..functional import (bias_act, conv2d_act, conv2d_resample, conv_transpose2d_act, filtered_lrelu, fma,
                          grid_sample, upfirdn2d)
from ..functional.gradfix import no_weight_gradients

__all__ = ["PACKAGE", "patch", "unpatch", "patched", "is_patched", "main"]

PACKAGE = "torch_utils.ops"


def _bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl="cuda"):
    if act != "lrelu":
        alpha = None  # NVlabs' other activations ignore alpha
    return bias_act(x, b, dim, act, alpha, gain, clamp)


def _upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl="cuda"):
    return upfirdn2d(x, f, up, down, padding, flip_filter, gain)


def _filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=2 ** 0.5, slope=0.2, clamp=None,
                    flip_filter=False, impl="cuda"):
    return filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)


def _conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return conv2d_act(input, weight, bias, stride, padding, dilation, groups)


def _conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return conv_transpose2d_act(input, weight, bias, stride, padding, output_padding, groups, dilation)


# module of the package -> {function name: fastgan's replacement}
BINDINGS = {
    "bias_act": {"bias_act": _bias_act},
    "upfirdn2d": {"upfirdn2d": _upfirdn2d},
    "filtered_lrelu": {"filtered_lrelu": _filtered_lrelu},
    "conv2d_gradfix": {"conv2d": _conv2d, "conv_transpose2d": _conv_transpose2d,
                       "no_weight_gradients": no_weight_gradients},
    "conv2d_resample": {"conv2d_resample": conv2d_resample},
    "grid_sample_gradfix": {"grid_sample": grid_sample},
    "fma": {"fma": fma},
}

_originals: dict[tuple[str, str], object] = {}  # (module name, function name) -> what patch() replaced


def patch(package: str = PACKAGE) -> list[str]:
    """Bind fastgan's ops onto ``package`` (importable); returns the names bound ("module.function").
    Patching again is harmless (the first originals are kept)."""
    try:
        importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(f"fastgan.compat.nvlabs: {package!r} is not importable ({exc}); run from the root of a "
                          "StyleGAN2-ADA / StyleGAN3 / R3GAN checkout, or put it on sys.path") from exc
    bound = []
    for module_name, functions in BINDINGS.items():
        full = f"{package}.{module_name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name != full:
                raise
            continue
        for name, fn in functions.items():
            if not hasattr(module, name):
                continue
            _originals.setdefault((full, name), getattr(module, name))
            setattr(module, name, fn)
            bound.append(f"{module_name}.{name}")
    return bound


def unpatch() -> None:
    """Restore every function ``patch()`` replaced."""
    while _originals:
        (full, name), original = _originals.popitem()
        setattr(sys.modules[full], name, original)


def is_patched(package: str = PACKAGE) -> bool:
    return any(full.startswith(package + ".") for full, _ in _originals)


@contextlib.contextmanager
def patched(package: str = PACKAGE) -> Iterator[list[str]]:
    """``with patched(): ...`` runs the block on fastgan's ops, then restores the originals."""
    bound = patch(package)
    try:
        yield bound
    finally:
        unpatch()


# ----------------------------------------------------------------------------- running a script

class _PatchedEntry:
    """A worker entry point that patches first (picklable by reference: it lives in this
    importable module, so a spawned process can rebuild it)."""

    def __init__(self, fn, package: str):
        self.fn, self.package = fn, package

    def __call__(self, *args, **kwargs):
        patch(self.package)
        return self.fn(*args, **kwargs)


@contextlib.contextmanager
def _patched_workers(package: str):
    """Wrap the entry point of ``torch.multiprocessing`` spawn/start_processes in ``_PatchedEntry``."""
    spawn_module = importlib.import_module("torch.multiprocessing.spawn")
    original = spawn_module.start_processes

    def start_processes(fn, *args, **kwargs):
        return original(_PatchedEntry(fn, package), *args, **kwargs)
    spawn_module.start_processes = start_processes
    try:
        yield
    finally:
        spawn_module.start_processes = original


def main(argv: list[str] | None = None) -> int:
    """``python -m fastgan.compat.nvlabs SCRIPT [ARGS...]``: run SCRIPT as ``__main__`` with ``sys.argv =
    [SCRIPT, *ARGS]``, its folder first on ``sys.path`` (as ``python SCRIPT`` does) and the ops patched."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m fastgan.compat.nvlabs SCRIPT [ARGS...]\n\n"
              "Runs a StyleGAN2-ADA / StyleGAN3 / R3GAN script with torch_utils.ops bound to fastgan's ops "
              "(no nvcc).", file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    script, args = argv[0], argv[1:]
    if not os.path.isfile(script):
        print(f"error: no such script: {script}", file=sys.stderr)
        return 2
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    bound = patch()
    print(f"fastgan.compat.nvlabs: {len(bound)} ops bound to fastgan ({', '.join(bound)})", file=sys.stderr)
    with _patched_workers(PACKAGE):
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    from fastgan.compat.nvlabs import main as _main  # the importable module (its classes pickle by reference)

    sys.exit(_main())
