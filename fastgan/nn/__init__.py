"""fastgan.nn: modules over fastgan.functional whose parameters are named and shaped like
torch.nn's, so state_dicts load both ways."""
from .batch_norm import BatchNormAct2d
from .bias_act import BiasAct

__all__ = ["BatchNormAct2d", "BiasAct"]
from .conv import Conv2dAct, ConvTranspose2dAct  # noqa: E402

__all__ += ["Conv2dAct", "ConvTranspose2dAct"]
