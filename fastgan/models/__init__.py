"""fastgan.models: GAN architectures built from fastgan.nn (or plain torch, for comparison)."""
from .dcgan import Discriminator, Generator, build_dcgan, dcgan_init_

__all__ = ["Generator", "Discriminator", "build_dcgan", "dcgan_init_"]
