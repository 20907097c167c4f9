"""The transcription use case: validate the request, decode audio, run the shared model."""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.session import transaction
from app.engine.adaptation.residency import AnyAdapter
from app.engine.audio import DecodedAudio, decode_audio_spooled
from app.engine.batching import QueueFullError
from app.engine.errors import AdapterNumericError, AudioDecodeError
from app.engine.facade import SpeechEngine
from app.engine.types import Transcription, TranscriptionOptions
from app.errors import (
    BadRequestError,
    InvalidAudioError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from app.logging import current_request_id
from app.metrics import Metrics
from app.services.adapters import ActiveAdapters
from app.services.auth import Principal
from app.services.formats import ResponseFormat
from app.services.served_transcripts import BASE_METHOD, ServedTranscripts
from app.services.users import get_speaker

logger = logging.getLogger(__name__)

OPENAI_MODEL_ALIAS = "whisper-1"

AdapterFallback = Literal["adapter_numeric_error", "adapter_unavailable"]
"""Why a request meant for an adapter was answered by the base model: the adapter drove the
decode to NaN or infinity (it is quarantined), or its weights could not be loaded."""


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    audio: bytes
    model: str
    response_format: ResponseFormat = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    timestamp_granularities: list[str] = field(default_factory=list)
    stream: bool = False
    user: str | None = None
    """Admin only: transcribe as this user (with their adapter)."""
    personalise: bool = True
    """False forces the base model."""
    beam_size: int = 1
    """Beam search width at temperature 0 (an extension; 1 is greedy decoding)."""
    task: Literal["transcribe", "translate"] = "transcribe"
    """`translate`: English text from speech in any language (`/v1/audio/translations`)."""


@dataclass(frozen=True, slots=True)
class TranscriptionOutcome:
    transcription: Transcription
    adapter_id: str | None
    """The adapter applied, or None for the base model."""
    fallback: AdapterFallback | None = None
    """Set when the caller's active adapter was not applied, and why."""


class TranscriptionService:
    def __init__(
        self,
        engine: SpeechEngine,
        sessions: async_sessionmaker[AsyncSession],
        adapters: ActiveAdapters,
        metrics: Metrics,
        *,
        max_audio_seconds: float,
        retry_after_s: int,
        model_id: str | None = None,
        correctable_seconds: float = 30.0,
    ) -> None:
        """`correctable_seconds`: the longest audio a correction may hold (the recordings'
        per-file limit); what was served for such requests is remembered (`served`)."""
        self._engine = engine
        self._sessions = sessions
        self._adapters = adapters
        self._metrics = metrics
        self._max_audio_seconds = max_audio_seconds
        self._retry_after_s = retry_after_s
        self.model_id = model_id or engine.info.model_id
        self.served = ServedTranscripts(metrics, max_audio_seconds=correctable_seconds)

    @property
    def model_description(self) -> str:
        return self._engine.info.description

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every `model` a client may send: the served model's id and OpenAI's alias."""
        return (self.model_id, OPENAI_MODEL_ALIAS)

    def check_model(self, name: str) -> None:
        if name not in self.model_names:
            raise ModelNotFoundError(
                f"The model {name!r} does not exist; this server serves {self.model_id!r} "
                f"(alias {OPENAI_MODEL_ALIAS!r}).",
                param="model",
            )

    async def transcribe(
        self, principal: Principal, request: TranscriptionRequest
    ) -> TranscriptionOutcome:
        self.check_model(request.model)
        options = self._options(request)
        # The session closes before the adapter loads and before inference: a request waiting
        # for either holds no database connection (a cold load takes its own, briefly).
        async with self._sessions() as session:
            user_id = await self._speaker(session, principal, request)
            row = await self._adapters.active(session, user_id) if user_id else None
        adapter = await self._adapters.weights_of(row) if row is not None else None
        fallback: AdapterFallback | None = None
        if row is not None and adapter is None:
            fallback = "adapter_unavailable"
        # Closed once answered, or abandoned: a running request then fails at its next read.
        with await self._decode(request.audio) as audio:
            submitted = time.perf_counter()
            try:
                weights = adapter.weights if adapter else None
                transcription = await self._run(audio, options, weights)
            except AdapterNumericError as exc:
                if adapter is None:  # not the adapter's fault: nothing to fall back from
                    raise
                await self._quarantine(adapter.id, exc)
                adapter, fallback = None, "adapter_numeric_error"
                transcription = await self._run(audio, options, None)
        self._observe(adapter is not None, transcription, time.perf_counter() - submitted)
        adapter_id = adapter.id if adapter else None
        logger.info(
            "transcribed",
            extra={
                "user_id": user_id,
                "adapter_id": adapter_id,
                "adapter_fallback": fallback,
                "audio_s": round(transcription.duration, 2),
            },
        )
        owner = request.user if request.user is not None else principal.user_id
        request_id = current_request_id.get()
        if owner is not None and request_id is not None:
            method = row.method if adapter is not None and row is not None else BASE_METHOD
            self.served.remember(
                request_id, owner, method, transcription.text, transcription.duration
            )
        return TranscriptionOutcome(transcription, adapter_id, fallback)

    async def _run(
        self, audio: DecodedAudio, options: TranscriptionOptions, weights: AnyAdapter | None
    ) -> Transcription:
        try:
            return await self._engine.transcribe(audio, options, weights)
        except QueueFullError as exc:
            self._metrics.transcriptions.labels("overloaded", str(weights is not None)).inc()
            raise ServiceUnavailableError(
                "The server is busy; retry shortly.",
                headers={"Retry-After": str(self._retry_after_s)},
            ) from exc

    async def _quarantine(self, adapter_id: str, error: AdapterNumericError) -> None:
        """The adapter serves nobody from now on (in its own transaction: the request goes on
        with the base model whatever happens next)."""
        async with transaction(self._sessions) as session:
            await self._adapters.quarantine(session, adapter_id, f"quarantined: {error}")

    async def _speaker(
        self, session: AsyncSession, principal: Principal, request: TranscriptionRequest
    ) -> str | None:
        """Whose adapter applies: the `user` named (the admin may name anyone, a user only
        itself), else the caller's own; None for the base model."""
        speaker = principal.user_id
        if request.user is not None:
            await get_speaker(session, principal, request.user)  # 404 for anyone else's id
            speaker = request.user
        return speaker if request.personalise else None

    def _observe(self, personalised: bool, transcription: Transcription, latency: float) -> None:
        self._metrics.transcriptions.labels("ok", str(personalised)).inc()
        self._metrics.transcription_latency.labels(str(personalised)).observe(latency)
        self._metrics.audio_seconds.inc(transcription.duration)
        windows = {segment.seek: segment.temperature for segment in transcription.segments}
        for temperature in windows.values():
            self._metrics.windows.labels(f"{temperature:.1f}", str(personalised)).inc()

    def _options(self, request: TranscriptionRequest) -> TranscriptionOptions:
        if request.stream:
            raise BadRequestError("Streaming transcription is not supported yet.", param="stream")
        if request.timestamp_granularities and request.response_format != "verbose_json":
            raise BadRequestError(
                "timestamp_granularities requires response_format=verbose_json.",
                param="timestamp_granularities",
            )
        if request.task == "translate" and not self._engine.info.multilingual:
            raise BadRequestError(
                f"The model {self.model_id!r} is English-only: translation needs a multilingual "
                "Whisper (e.g. PQM_MODEL__BUNDLED=base).",
                param="model",
            )
        language = request.language.strip().lower() if request.language else None
        if language and not self._engine.info.multilingual and language != "en":
            raise BadRequestError(
                f"The model {self.model_id!r} is English-only; language {language!r} "
                "is not supported.",
                param="language",
            )
        return TranscriptionOptions(
            language=language,
            prompt=request.prompt or None,
            temperature=request.temperature,
            with_timestamps=request.response_format in ("srt", "vtt", "verbose_json"),
            beam_size=request.beam_size,
            task=request.task,
            word_timestamps="word" in request.timestamp_granularities,
        )

    async def _decode(self, data: bytes) -> DecodedAudio:
        """Decoded off the event loop and off the inference thread; long audio is spooled to a
        private temporary file (see `audio.decode_audio_spooled`)."""
        try:
            return await asyncio.to_thread(
                decode_audio_spooled, data, max_duration_s=self._max_audio_seconds
            )
        except AudioDecodeError as exc:
            raise InvalidAudioError(str(exc), param="file") from exc
