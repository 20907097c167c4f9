"""Requests decoded together as rows of one batch, as the scheduler runs them."""

from collections.abc import Sequence

import numpy as np

from app.engine.adaptation.residency import AnyAdapter
from app.engine.types import Transcription, TranscriptionOptions
from app.engine.whisper import WhisperEngine

Request = tuple[np.ndarray, TranscriptionOptions, AnyAdapter | None]


def transcribe_together(engine: WhisperEngine, requests: Sequence[Request]) -> list[Transcription]:
    """Every request opened at once and run round by round until all are done."""
    tasks = [engine.open(audio, options, adapter) for audio, options, adapter in requests]
    live = [task for task in tasks if task is not None]
    assert len(live) == len(tasks), "the engine refused a request"
    while not all(task.done for task in live):
        engine.run_round(live)
    return [task.outcome() for task in live]
