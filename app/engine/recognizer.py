"""The interface the service layer sees of a loaded speech model."""

from typing import Protocol

import numpy as np

from app.engine.types import ModelInfo, Transcription, TranscriptionOptions

__all__ = ["SpeechRecognizer"]


class SpeechRecognizer(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def transcribe(self, audio: np.ndarray, options: TranscriptionOptions) -> Transcription:
        """Transcribes 16 kHz mono float32 audio of any length. Blocks: call off the loop."""
        ...
