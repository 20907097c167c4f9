"""Use cases for enrolment: validate and store a speaker's recordings, queue, inspect, cancel."""

import asyncio
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore
from app.config import EnrolmentSettings, QuotaSettings
from app.db.enrolment_status import EnrolmentStatus
from app.db.job_queue import JobAlreadyQueued
from app.db.models import EnrolmentJob, Recording, RecordingOrigin, new_id
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.repositories.recordings import RecordingRepository
from app.engine.adaptation.saml.config import METHOD as SAML
from app.engine.audio import SAMPLE_RATE
from app.errors import BadRequestError, ConflictError, NotFoundError
from app.services.active_bank import NO_ACTIVE_BANK, active_bank
from app.services.auth import Principal
from app.services.enrolment_jobs import (
    DEFAULT_METHOD,
    ENROLMENT_METHODS,
    EnrolmentRequest,
    new_job,
)
from app.services.quotas import check_room_for
from app.services.recording_checks import (
    CheckedRecording,
    UploadedRecording,
    check_file_size,
    checked_transcript,
    decode_recording,
)
from app.services.recordings import store_recordings, undo_stored
from app.services.users import get_speaker

__all__ = [
    "DEFAULT_METHOD",
    "EnrolmentRequest",
    "UploadedRecording",
    "cancel_job",
    "create_enrolment",
    "get_job",
    "list_jobs",
]


async def create_enrolment(
    session: AsyncSession,
    store: AdapterStore,
    principal: Principal,
    user_id: str,
    request: EnrolmentRequest,
    limits: EnrolmentSettings,
    quotas: QuotaSettings,
    fingerprint: str,
) -> EnrolmentJob:
    """Queues a job on an upload, validated whole first (one bad item rejects the request and
    stores nothing), or, with no upload, on the user's stored recordings. The activation gate
    decides either way. `fingerprint`: the served base model's, whose expert bank SAML needs."""
    await get_speaker(session, principal, user_id)
    if request.idempotency_key is not None:
        earlier = await _earlier_with_key(EnrolmentRepository(session), user_id, request)
        if earlier is not None:
            return earlier
    _check_method(request)
    if request.method == SAML and await active_bank(session, store, fingerprint) is None:
        raise BadRequestError(
            f"method=saml starts from an expert bank: {NO_ACTIVE_BANK}.",
            param="method",
            code="no_active_expert_bank",
        )
    if request.retrains:
        return await _retrain(session, user_id, request, limits)
    if request.since is not None:
        raise BadRequestError(
            "since chooses stored recordings to retrain on; send it without files.",
            param="since",
        )
    _check_shape(request, limits)
    checked = await asyncio.to_thread(_decode_all, request, limits)
    jobs = EnrolmentRepository(session)
    await _refuse_while_unfinished(jobs, user_id)
    await check_room_for(session, user_id, len(checked), sum(c.seconds for c in checked), quotas)
    job_id = new_id()
    store = store.bind(session)
    recordings = await store_recordings(
        store, user_id, checked, RecordingOrigin.ENROLMENT, enrolment_id=job_id
    )
    try:
        return await _add(jobs, new_job(job_id, user_id, request, recordings), recordings)
    except Exception:
        await undo_stored(store, recordings)
        raise


async def _retrain(
    session: AsyncSession, user_id: str, request: EnrolmentRequest, limits: EnrolmentSettings
) -> EnrolmentJob:
    recordings = await RecordingRepository(session).list_for_user(user_id, request.since)
    _check_stored(recordings, request.since, limits)
    jobs = EnrolmentRepository(session)
    await _refuse_while_unfinished(jobs, user_id)
    return await _add(jobs, new_job(new_id(), user_id, request, recordings), recordings)


async def _earlier_with_key(
    jobs: EnrolmentRepository, user_id: str, request: EnrolmentRequest
) -> EnrolmentJob | None:
    """The job an earlier request with the same `Idempotency-Key` created (a retry gets it
    back, whatever became of it); a different request reusing the key is refused."""
    assert request.idempotency_key is not None
    earlier = await jobs.by_idempotency_key(user_id, request.idempotency_key)
    if earlier is not None and earlier.request_digest != request.digest():
        raise ConflictError(
            "This Idempotency-Key was already used for a different enrolment request; "
            "use a new key for a new request.",
            code="idempotency_key_reused",
        )
    return earlier


async def _refuse_while_unfinished(jobs: EnrolmentRepository, user_id: str) -> None:
    if await jobs.unfinished_for_user(user_id) is not None:
        raise _already_unfinished()


async def _add(
    jobs: EnrolmentRepository, job: EnrolmentJob, recordings: list[Recording]
) -> EnrolmentJob:
    try:
        return await jobs.add(job, recordings)
    except JobAlreadyQueued as exc:  # another request of the user's got there first
        raise _already_unfinished() from exc
    except IntegrityError as exc:  # a concurrent request with the same Idempotency-Key won
        if job.idempotency_key is None:
            raise
        raise ConflictError(
            "A request with this Idempotency-Key is being recorded; retry it to get its job.",
            code="idempotency_key_in_flight",
        ) from exc


def _already_unfinished() -> ConflictError:
    return ConflictError(
        "An enrolment is already queued or running for this user.", code="enrolment_running"
    )


def _check_method(request: EnrolmentRequest) -> None:
    if request.method not in ENROLMENT_METHODS:
        raise BadRequestError(
            f"Unknown method {request.method!r}; supported: {', '.join(ENROLMENT_METHODS)}.",
            param="method",
        )


def _check_count(count: int, limits: EnrolmentSettings, what: str) -> None:
    if count < limits.min_utterances:
        raise BadRequestError(
            f"Enrolment needs at least {limits.min_utterances} recordings; {what} {count}.",
            param="files",
            code="too_few_recordings",
        )
    if count > limits.max_utterances:
        raise BadRequestError(
            f"At most {limits.max_utterances} recordings per enrolment; {what} {count}.",
            param="files",
            code="too_many_recordings",
        )


def _check_stored(
    recordings: list[Recording], since: datetime | None, limits: EnrolmentSettings
) -> None:
    what = "the user has stored" + (f" since {since.isoformat()}" if since else "")
    _check_count(len(recordings), limits, what)
    total = sum(recording.duration_seconds for recording in recordings)
    if total > limits.max_total_seconds:
        raise BadRequestError(
            f"The stored recordings hold {total:.0f} s, more than the "
            f"{limits.max_total_seconds:.0f} s an enrolment takes; choose fewer with since.",
            param="since",
            code="too_much_audio",
        )


def _check_shape(request: EnrolmentRequest, limits: EnrolmentSettings) -> None:
    count = len(request.recordings)
    if count != len(request.transcripts):
        raise BadRequestError(
            f"Got {count} files but {len(request.transcripts)} transcripts; send one transcript "
            "per file, in the same order.",
            param="transcripts",
            code="count_mismatch",
        )
    _check_count(count, limits, "got")
    for index, (recording, transcript) in enumerate(
        zip(request.recordings, request.transcripts, strict=True)
    ):
        check_file_size(recording, f"files[{index}]", limits)
        checked_transcript(transcript, f"transcripts[{index}]", limits)


def _decode_all(request: EnrolmentRequest, limits: EnrolmentSettings) -> list[CheckedRecording]:
    checked: list[CheckedRecording] = []
    total = 0.0
    for index, (recording, transcript) in enumerate(
        zip(request.recordings, request.transcripts, strict=True)
    ):
        param = f"files[{index}]"
        audio = decode_recording(recording, param, limits)
        total += len(audio) / SAMPLE_RATE
        if total > limits.max_total_seconds:
            raise BadRequestError(
                f"The recordings exceed {limits.max_total_seconds:.0f} s in total "
                f"(at files[{index}]).",
                param=param,
                code="too_much_audio",
            )
        text = checked_transcript(transcript, f"transcripts[{index}]", limits)
        checked.append(CheckedRecording(audio=audio, transcript=text))
    return checked


async def list_jobs(
    session: AsyncSession, principal: Principal, user_id: str
) -> list[EnrolmentJob]:
    """The user's jobs, newest first."""
    await get_speaker(session, principal, user_id)
    return await EnrolmentRepository(session).list_for_user(user_id)


async def get_job(session: AsyncSession, principal: Principal, job_id: str) -> EnrolmentJob:
    job = await EnrolmentRepository(session).get(job_id)
    if job is None or not (principal.is_admin or principal.user_id == job.user_id):
        raise NotFoundError(f"No enrolment job with id {job_id!r}.", param="job_id")
    return job


async def cancel_job(session: AsyncSession, principal: Principal, job_id: str) -> EnrolmentJob:
    """A queued job is cancelled at once; a running one is stopped by its worker within
    seconds (its status says `running` with `cancel_requested` until then)."""
    job = await get_job(session, principal, job_id)
    principal.require_access_to(job.user_id)
    jobs = EnrolmentRepository(session)
    while True:  # a worker may claim, re-queue or finish the job meanwhile: cancel it as it is now
        status = EnrolmentStatus(job.status)
        if status.finished:
            raise ConflictError(f"The job has already {status}.", code="job_finished")
        if await jobs.cancel(job):
            return job
