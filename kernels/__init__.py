"""fastgan.kernels: Triton kernels and their launchers (tensors in, tensors out; no autograd).

Installed from the top-level folder ``kernels/`` (see setup.py). The launchers are loaded on
first use (``fastgan.kernels.bias_act_fwd`` imports ``kernels/bias_act.py`` and Triton then),
so that ``fastgan.kernels.geometry`` (plain Python) imports without Triton, and Triton is
imported only after ``fastgan.backend`` has decided whether it interprets.
"""
import importlib

_MODULES = ("activation", "bias_act", "batch_norm_act", "conv", "losses", "penalty", "common", "upfirdn2d",
            "filtered_lrelu", "grid_sample", "fma", "modconv")


def __getattr__(name):
    for module in _MODULES:
        mod = importlib.import_module(f"{__name__}.{module}")
        if name in getattr(mod, "__all__", ()):
            value = getattr(mod, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
