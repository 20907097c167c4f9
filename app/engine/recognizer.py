"""The interface the service layer sees of a loaded speech model."""

from typing import Protocol

import numpy as np

from app.engine.adaptation.residency import AnyAdapter
from app.engine.adaptation.slots import SlotStats
from app.engine.batching import BatchingEngine
from app.engine.types import ModelInfo, Transcription, TranscriptionOptions
from app.engine.whisper import TranscriptionTask

__all__ = ["SpeechRecognizer"]


class SpeechRecognizer(BatchingEngine[TranscriptionTask], Protocol):
    """A model that transcribes requests in batches (through a `BatchScheduler`) or alone."""

    @property
    def info(self) -> ModelInfo: ...

    def transcribe(
        self,
        audio: np.ndarray,
        options: TranscriptionOptions,
        adapter: AnyAdapter | None = None,
    ) -> Transcription:
        """Transcribes 16 kHz mono float32 audio of any length. Blocks: call off the loop."""
        ...

    def check_adapter(self, adapter: AnyAdapter) -> None:
        """Raises `AdapterFileError` unless the adapter fits the served base model."""
        ...

    def check_adapter_bounds(self, adapter: AnyAdapter) -> None:
        """Raises `AdapterFileError` unless the adapter's updates stay within the bounds an
        adapter must meet to be stored (see `lora.file.check_bounds`)."""
        ...

    def forget(self, adapter: AnyAdapter) -> None:
        """Frees the memory the model holds for `adapter` (it was deleted or replaced)."""
        ...

    def slot_stats(self) -> SlotStats | None: ...
