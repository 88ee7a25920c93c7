"""fastgan.models: GAN architectures built from fastgan.nn (or plain torch, for comparison)."""
from .dcgan import Discriminator, Generator, build_dcgan, dcgan_init_
from . import stylegan2
from .stylegan2 import build_stylegan2

__all__ = ["Generator", "Discriminator", "build_dcgan", "dcgan_init_", "stylegan2", "build_stylegan2"]
