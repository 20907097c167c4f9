"""Errors of adapter training (all `EngineError`s, so services map them like any engine error)."""

from app.engine.errors import EngineError

__all__ = ["TrainingCancelled", "TrainingDataError", "TrainingFailed"]


class TrainingCancelled(EngineError):
    """Training was stopped on request (`should_stop`) before it finished."""


class TrainingFailed(EngineError):
    """The training process crashed or reported an error; the message carries its cause."""


class TrainingDataError(EngineError, ValueError):
    """An utterance cannot be used for training (too long, empty, not 16 kHz mono float32)."""
