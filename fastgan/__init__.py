"""fastgan: fused Triton kernels, CUDA-graph training steps and honest benchmarks for GANs.

Layers (DESIGN.md): cli -> train -> models -> accelerate -> nn -> functional -> backend -> kernels.
Importing fastgan registers its ops with torch.library (``torch.ops.fastgan.*``).
"""
__version__ = "0.1.0"

from .backend import BackendError, backend_for, use_backend  # noqa: E402
from . import functional, nn  # noqa: E402
from .accelerate import accelerate, restore  # noqa: E402
from .monitor import ResourceMonitor  # noqa: E402

__all__ = ["__version__", "BackendError", "backend_for", "use_backend", "functional", "nn", "accelerate", "restore",
           "ResourceMonitor"]
