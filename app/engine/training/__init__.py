"""Per-speaker adapter training (LoRA or SAML) on the shared Whisper: data, training loop, expert
banks, child process."""

from app.engine.training.config import TrainingConfig
from app.engine.training.data import Utterance, split_train_dev, training_window
from app.engine.training.errors import TrainingCancelled, TrainingDataError, TrainingFailed
from app.engine.training.gate import GateConfig
from app.engine.training.process import GatedTraining, TrainingRequest, run_in_subprocess
from app.engine.training.trainer import (
    ServingNumerics,
    TrainingProgress,
    TrainingResult,
    train_adapter,
    train_with_gate,
)

__all__ = [
    "GateConfig",
    "GatedTraining",
    "ServingNumerics",
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
    "train_adapter",
    "train_with_gate",
    "training_window",
]
