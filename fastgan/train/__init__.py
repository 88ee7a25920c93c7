"""fastgan.train: TrainConfig, Trainer, checkpoints, data-parallel helpers."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .trainer import Trainer, ema_update_, save_image_grid

__all__ = ["TrainConfig", "Trainer", "CheckpointError", "load_checkpoint", "save_checkpoint", "ema_update_",
           "save_image_grid"]
