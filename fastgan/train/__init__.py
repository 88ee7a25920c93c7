"""fastgan.train: TrainConfig, Trainer, checkpoints, CUDA-graph steps, data-parallel helpers."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .graphs import CaptureError, CapturedStep, capture_step
from .ema import ema_update_
from .trainer import Trainer, save_image_grid
from .stylegan2 import StyleGAN2Trainer  # registers Trainer(cfg) for model "stylegan2"

__all__ = ["TrainConfig", "Trainer", "CheckpointError", "load_checkpoint", "save_checkpoint", "ema_update_",
           "save_image_grid", "capture_step", "CapturedStep", "CaptureError", "StyleGAN2Trainer"]
