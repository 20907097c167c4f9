"""Use cases for enrolment: validate and store a speaker's recordings, queue, inspect, cancel."""

import asyncio
import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore
from app.config import EnrolmentSettings
from app.db.enrolment_status import EnrolmentStatus
from app.db.models import EnrolmentJob, Recording, new_id
from app.db.repositories.enrolments import EnrolmentRepository
from app.engine.adaptation.registry import method_names
from app.engine.audio import SAMPLE_RATE, decode_audio
from app.engine.errors import AudioDecodeError
from app.errors import BadRequestError, ConflictError, InvalidAudioError, NotFoundError
from app.services.auth import Principal
from app.services.blob_keys import recording_key, recordings_prefix
from app.services.users import get_user
from app.text_rules import unprintable_character

DEFAULT_METHOD = "lora"


@dataclass(frozen=True, slots=True)
class UploadedRecording:
    filename: str
    data: bytes


@dataclass(frozen=True, slots=True)
class EnrolmentRequest:
    recordings: list[UploadedRecording]
    transcripts: list[str]
    method: str = DEFAULT_METHOD
    rank: int | None = None
    epochs: int | None = None
    seed: int = 0


@dataclass(frozen=True, slots=True)
class _Utterance:
    audio: np.ndarray
    transcript: str


async def create_enrolment(
    session: AsyncSession,
    store: AdapterStore,
    principal: Principal,
    user_id: str,
    request: EnrolmentRequest,
    limits: EnrolmentSettings,
) -> EnrolmentJob:
    """Validates every recording first: one bad item rejects the request and stores nothing."""
    await get_user(session, principal, user_id)
    _check_shape(request, limits)
    utterances = await asyncio.to_thread(_decode_all, request, limits)
    repository = EnrolmentRepository(session)
    if await repository.unfinished_for_user(user_id) is not None:
        raise ConflictError(
            "An enrolment is already queued or running for this user.", code="enrolment_running"
        )
    job_id = new_id()
    store = store.bind(session)
    recordings = await _store_recordings(store, user_id, job_id, utterances)
    job = EnrolmentJob(
        id=job_id,
        user_id=user_id,
        method=request.method,
        params={"rank": request.rank, "epochs": request.epochs, "seed": request.seed},
        utterance_count=len(utterances),
        audio_seconds=round(sum(len(u.audio) for u in utterances) / SAMPLE_RATE, 3),
        progress=0.0,
        cancel_requested=False,
        attempts=0,
    )
    try:
        return await repository.add(job, recordings)
    except Exception:  # files outside the database do not roll back with it
        await store.delete_prefix(recordings_prefix(user_id, job_id))
        raise


def _check_shape(request: EnrolmentRequest, limits: EnrolmentSettings) -> None:
    count = len(request.recordings)
    if count != len(request.transcripts):
        raise BadRequestError(
            f"Got {count} files but {len(request.transcripts)} transcripts; send one transcript "
            "per file, in the same order.",
            param="transcripts",
            code="count_mismatch",
        )
    if count < limits.min_utterances:
        raise BadRequestError(
            f"Enrolment needs at least {limits.min_utterances} recordings; got {count}.",
            param="files",
            code="too_few_recordings",
        )
    if count > limits.max_utterances:
        raise BadRequestError(
            f"At most {limits.max_utterances} recordings per enrolment; got {count}.",
            param="files",
            code="too_many_recordings",
        )
    if request.method not in method_names():
        raise BadRequestError(
            f"Unknown method {request.method!r}; supported: {', '.join(method_names())}.",
            param="method",
        )
    for index, (recording, transcript) in enumerate(
        zip(request.recordings, request.transcripts, strict=True)
    ):
        if len(recording.data) > limits.max_file_bytes:
            raise BadRequestError(
                f"files[{index}] is larger than {limits.max_file_bytes} bytes.",
                param=f"files[{index}]",
                code="file_too_large",
            )
        text = transcript.strip()
        if not text:
            raise BadRequestError(f"transcripts[{index}] is empty.", param=f"transcripts[{index}]")
        found = unprintable_character(text, allow_whitespace=True)
        if found is not None:
            raise BadRequestError(
                f"transcripts[{index}] contains a control character ({found}).",
                param=f"transcripts[{index}]",
            )
        if len(text) > limits.max_transcript_chars:
            raise BadRequestError(
                f"transcripts[{index}] is longer than {limits.max_transcript_chars} characters.",
                param=f"transcripts[{index}]",
            )


def _decode_all(request: EnrolmentRequest, limits: EnrolmentSettings) -> list[_Utterance]:
    utterances: list[_Utterance] = []
    total = 0.0
    for index, (recording, transcript) in enumerate(
        zip(request.recordings, request.transcripts, strict=True)
    ):
        param = f"files[{index}]"
        try:
            audio = decode_audio(recording.data, max_duration_s=limits.max_file_seconds)
        except AudioDecodeError as exc:
            raise InvalidAudioError(
                f"files[{index}] ({recording.filename!r}): {exc}", param=param
            ) from exc
        seconds = len(audio) / SAMPLE_RATE
        if seconds < limits.min_file_seconds:
            raise InvalidAudioError(
                f"files[{index}] is {seconds:.2f} s long; each recording needs at least "
                f"{limits.min_file_seconds} s of audio.",
                param=param,
            )
        total += seconds
        if total > limits.max_total_seconds:
            raise BadRequestError(
                f"The recordings exceed {limits.max_total_seconds:.0f} s in total "
                f"(at files[{index}]).",
                param=param,
                code="too_much_audio",
            )
        utterances.append(_Utterance(audio=audio, transcript=" ".join(transcript.split())))
    return utterances


async def _store_recordings(
    store: AdapterStore,
    user_id: str,
    job_id: str,
    utterances: list[_Utterance],
) -> list[Recording]:
    recordings = []
    for position, utterance in enumerate(utterances):
        key = recording_key(user_id, job_id, position)
        await store.put(key, await asyncio.to_thread(_flac, utterance.audio))
        recordings.append(
            Recording(
                user_id=user_id,
                enrolment_id=job_id,
                position=position,
                transcript=utterance.transcript,
                blob_key=key,
                duration_seconds=round(len(utterance.audio) / SAMPLE_RATE, 3),
            )
        )
    return recordings


def _flac(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


async def get_job(session: AsyncSession, principal: Principal, job_id: str) -> EnrolmentJob:
    job = await EnrolmentRepository(session).get(job_id)
    if job is None or not (principal.is_admin or principal.user_id == job.user_id):
        raise NotFoundError(f"No enrolment job with id {job_id!r}.", param="job_id")
    return job


async def cancel_job(session: AsyncSession, principal: Principal, job_id: str) -> EnrolmentJob:
    """A queued job is cancelled at once; a running one is stopped by its worker within
    seconds (its status says `running` with `cancel_requested` until then)."""
    job = await get_job(session, principal, job_id)
    jobs = EnrolmentRepository(session)
    while True:  # a worker may claim, re-queue or finish the job meanwhile: cancel it as it is now
        status = EnrolmentStatus(job.status)
        if status.finished:
            raise ConflictError(f"The job has already {status}.", code="job_finished")
        if await jobs.cancel(job):
            return job
