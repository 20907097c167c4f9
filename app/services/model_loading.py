"""Resolves which base model to serve from the settings, importing the bundled one if needed."""

import asyncio
from pathlib import Path

from app.config import Settings
from app.engine.batching import BatchObserver
from app.engine.compute_thread import in_fresh_thread
from app.engine.facade import QueueLimits, SpeechEngine
from app.engine.memory_plan import SlotSizing
from app.engine.model_import import (
    check_model_dir,
    import_bundled_model,
    import_ct2_dir,
    is_ct2_dir,
)
from app.engine.recognizer import SpeechRecognizer
from app.engine.whisper import LongformPolicy, WhisperEngine

MAX_BEAM_ROWS = 8
"""The API's largest beam (`api.audio.MAX_BEAM_SIZE`): a request's decoder rows."""


def check_model_path(settings: Settings) -> None:
    """Raises `ModelLoadError` unless `PQM_MODEL__PATH`, when set, is a loadable directory."""
    path = settings.model.path
    if path is not None and not is_ct2_dir(path):
        check_model_dir(path)


def resolve_model_dir(settings: Settings) -> Path:
    """The transformers Whisper directory to serve: `PQM_MODEL__PATH` (a CTranslate2 directory
    is converted into the data directory once), or the bundled model, imported once."""
    path = settings.model.path
    if path is None:
        return import_bundled_model(settings.model.bundled, settings.models_dir)
    if is_ct2_dir(path):
        return import_ct2_dir(path, settings.models_dir)
    check_model_dir(path)
    return path


def resident_slots(settings: Settings) -> int | SlotSizing:
    """The configured adapter pool, or how to size it: every request of a full batch may run
    its widest beam's rows or its batched long-form windows at once."""
    if settings.adapters.resident_slots is not None:
        return settings.adapters.resident_slots
    batch = settings.queue.max_batch_size
    rows = max(MAX_BEAM_ROWS, settings.longform.batch_windows)
    return SlotSizing(rows=batch * rows, minimum=batch)


def load_recognizer(settings: Settings) -> SpeechRecognizer:
    return WhisperEngine.load(
        resolve_model_dir(settings),
        precision=settings.model.precision,
        device=settings.model.device,
        threads=settings.model.threads,
        lora=settings.adapters.enabled,
        resident_slots=resident_slots(settings),
        dtype=settings.model.compute_dtype,
        base_window=settings.model.encoder_window,
        longform=LongformPolicy(
            mode=settings.longform.mode,
            window_s=settings.longform.window_s,
            adapter_window_s=settings.longform.adapter_window_s,
            batch_windows=settings.longform.batch_windows,
            condition_on_previous_text=settings.longform.condition_on_previous_text,
        ),
    )


async def load_engine(
    settings: Settings,
    recognizer: SpeechRecognizer | None = None,
    observer: BatchObserver | None = None,
) -> SpeechEngine:
    """The engine serving `settings`' model behind its queue (`recognizer`: a model already
    loaded, shared by tests). The model loads on a thread of its own that ends with the load
    (see `compute_thread`)."""
    if recognizer is None:
        recognizer = await asyncio.to_thread(in_fresh_thread, lambda: load_recognizer(settings))
    queue = settings.queue
    limits = QueueLimits(
        max_batch_size=queue.max_batch_size,
        max_wait_s=queue.max_wait_ms / 1000,
        max_pending=queue.max_pending,
        max_pending_audio_s=queue.max_pending_audio_s,
    )
    return SpeechEngine(recognizer, limits, observer)
