"""fastgan.nn: torch.nn modules (subclasses: the same parameters, names and state_dicts) whose
forward runs fastgan's fused ops with an activation epilogue."""
from .batch_norm import BatchNormAct1d, BatchNormAct2d, InstanceNormAct2d
from .bias_act import BiasAct
from .conv import Conv2dAct, ConvTranspose2dAct
from .linear import LinearAct

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "InstanceNormAct2d", "BiasAct", "Conv2dAct", "ConvTranspose2dAct",
           "LinearAct"]
