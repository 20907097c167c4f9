"""The speech engine as the services see it: one object, every computing call awaitable.

Everything that computes with torch (transcription, parsing and checking adapter weights,
freeing memory after a cold load) runs on the batch scheduler's one inference thread (see
`batching` for why one thread); the services hand the facade audio and adapter files and never
see the thread, the scheduler or the heap.
"""

from dataclasses import dataclass

from app.engine.adaptation.files import dump_any, load_any
from app.engine.adaptation.lora.file import AdapterFileError
from app.engine.adaptation.residency import AnyAdapter
from app.engine.adaptation.slots import SlotStats
from app.engine.batching import Audio, BatchObserver, BatchScheduler
from app.engine.memory import release_free_memory
from app.engine.recognizer import SpeechRecognizer
from app.engine.tensor_file import TensorFile
from app.engine.types import ModelInfo, Transcription, TranscriptionOptions
from app.engine.whisper import TranscriptionTask

__all__ = ["CheckedAdapter", "QueueLimits", "SpeechEngine"]


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_batch_size: int = 8
    max_wait_s: float = 0.01
    max_pending: int = 32
    """Requests waiting or running; beyond it `transcribe` raises `QueueFullError`."""
    max_pending_audio_s: float | None = None


@dataclass(frozen=True, slots=True)
class CheckedAdapter:
    data: bytes
    """The file to store, in the form its method's `dump` writes."""
    weights: AnyAdapter
    """What `data` parses back to: exactly what will be served."""
    out_of_bounds: str | None
    """Why the adapter must never serve (its updates are out of bounds); None: it may."""


class SpeechEngine:
    def __init__(
        self,
        recognizer: SpeechRecognizer,
        limits: QueueLimits,
        observer: BatchObserver | None = None,
    ) -> None:
        self._recognizer = recognizer
        self._scheduler = BatchScheduler(
            recognizer,
            max_batch_size=limits.max_batch_size,
            max_wait_s=limits.max_wait_s,
            max_pending=limits.max_pending,
            max_pending_audio_s=limits.max_pending_audio_s,
            observer=observer,
        )

    @property
    def info(self) -> ModelInfo:
        return self._recognizer.info

    @property
    def scheduler(self) -> BatchScheduler[TranscriptionTask]:
        """The queue in front of the model, for what observes it (metrics, tests)."""
        return self._scheduler

    @property
    def pending(self) -> int:
        """Transcriptions waiting or running."""
        return self._scheduler.pending

    def slot_stats(self) -> SlotStats | None:
        return self._recognizer.slot_stats()

    async def transcribe(
        self, audio: Audio, options: TranscriptionOptions, adapter: AnyAdapter | None = None
    ) -> Transcription:
        """Batched with whatever else is running. Raises `QueueFullError` when the queue is
        full and `AdapterNumericError` when `adapter` broke its row (other rows go on)."""
        return await self._scheduler.transcribe(audio, options, adapter)

    async def prepare_adapter(self, file: TensorFile) -> AnyAdapter:
        """The file's weights, checked against the served model (`AdapterFileError` or
        `BaseModelMismatchError` otherwise), ready for `transcribe`."""
        return await self._scheduler.run(lambda: self._prepare(file))

    async def checked(self, source: AnyAdapter | TensorFile) -> CheckedAdapter:
        """What storing `source` means: the file in its method's canonical form and what it
        parses back to, checked against the served model and, marked not raised, the bounds.
        A file is checked as uploaded first, so that nothing in it is silently converted
        (such as float16 tensors to float32)."""
        return await self._scheduler.run(lambda: self._checked(source))

    def forget(self, adapter: AnyAdapter) -> None:
        """Frees what the model holds for `adapter` (deleted, replaced or evicted)."""
        self._recognizer.forget(adapter)

    def shutdown(self) -> None:
        self._scheduler.shutdown()

    def _prepare(self, file: TensorFile) -> AnyAdapter:
        weights = load_any(file)
        self._recognizer.check_adapter(weights)
        # A cold load follows an eviction (or soon will): under a stream of new users the
        # freed adapters and blobs would otherwise pile up in the heap between the engine's
        # own tidy-ups (one run over 300 users: 149 instead of 178 MiB peak growth; ~5 ms per
        # cold load).
        release_free_memory()
        return weights

    def _checked(self, source: AnyAdapter | TensorFile) -> CheckedAdapter:
        if isinstance(source, TensorFile):
            source = load_any(source)
            self._recognizer.check_adapter(source)
        data = dump_any(source)
        weights = load_any(data)
        self._recognizer.check_adapter(weights)
        try:
            self._recognizer.check_adapter_bounds(weights)
        except AdapterFileError as exc:
            return CheckedAdapter(data, weights, out_of_bounds=str(exc))
        return CheckedAdapter(data, weights, out_of_bounds=None)
