"""Per-speaker LoRA training on the shared Whisper: data, training loop, child process."""

from app.engine.training.config import TrainingConfig
from app.engine.training.data import Utterance, split_train_dev, training_window
from app.engine.training.errors import TrainingCancelled, TrainingDataError, TrainingFailed
from app.engine.training.process import TrainingRequest, run_in_subprocess
from app.engine.training.trainer import TrainingProgress, TrainingResult, train_lora

__all__ = [
    "TrainingCancelled",
    "TrainingConfig",
    "TrainingDataError",
    "TrainingFailed",
    "TrainingProgress",
    "TrainingRequest",
    "TrainingResult",
    "Utterance",
    "run_in_subprocess",
    "split_train_dev",
    "train_lora",
    "training_window",
]
