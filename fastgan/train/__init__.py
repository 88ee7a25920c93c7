"""fastgan.train: TrainConfig, Trainer, checkpoints, CUDA-graph steps, data-parallel helpers."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .graphs import CaptureError, CapturedStep, capture_step
from .ema import ema_update_
from .trainer import Trainer, save_image_grid

__all__ = ["TrainConfig", "Trainer", "CheckpointError", "load_checkpoint", "save_checkpoint", "ema_update_",
           "save_image_grid", "capture_step", "CapturedStep", "CaptureError"]
