"""The optional auto-retrain policy (`enrolment.auto_retrain_after`, off by default): after
enough new recordings, the service queues a retraining for the user by itself."""

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import EnrolmentSettings
from app.db.job_queue import JobAlreadyQueued
from app.db.models import EnrolmentJob, Recording, new_id
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.repositories.recordings import RecordingRepository
from app.services.enrolment_jobs import EnrolmentRequest, new_job

__all__ = ["queue_if_due", "queue_waiting"]

logger = logging.getLogger(__name__)


async def queue_if_due(
    session: AsyncSession, user_id: str, limits: EnrolmentSettings
) -> EnrolmentJob | None:
    """Queues an automatic retraining when the user has added `auto_retrain_after` recordings on
    their own since their last job was created, has no job queued or running, and the
    service-wide cap on automatic jobs leaves room; the job, or None. Called in the transaction
    that added a recording."""
    if not limits.auto_retrain_after or not await _enough_new_recordings(session, user_id, limits):
        return None
    jobs = EnrolmentRepository(session)
    await jobs.lock_automatic_jobs()
    if await jobs.count_unfinished_automatic() >= limits.auto_retrain_max_concurrent:
        return None
    stored = await RecordingRepository(session).list_for_user(user_id)
    recordings = newest_that_fit(stored, limits)
    if len(recordings) < limits.min_utterances:
        return None
    retraining = EnrolmentRequest(recordings=[], transcripts=[])
    job = new_job(new_id(), user_id, retraining, recordings, automatic=True)
    try:
        await jobs.add(job, recordings)
    except JobAlreadyQueued:  # the user asked for one meanwhile
        return None
    logger.info(
        "automatic retraining queued",
        extra={"job_id": job.id, "user_id": user_id, "utterances": len(recordings)},
    )
    return job


async def queue_waiting(session: AsyncSession, limits: EnrolmentSettings) -> list[EnrolmentJob]:
    """Queues the retrainings of users whose threshold is crossed but who were held back by the
    cap, the one waiting longest first, while the cap leaves room; the jobs queued. Called by
    the worker when room may have freed (a job finished) and on its idle tick, so that no one
    waits for their next recording."""
    if not limits.auto_retrain_after:
        return []
    jobs = EnrolmentRepository(session)
    await jobs.lock_automatic_jobs()
    room = limits.auto_retrain_max_concurrent - await jobs.count_unfinished_automatic()
    if room <= 0:
        return []
    waiting = await RecordingRepository(session).users_due_for_retraining(limits.auto_retrain_after)
    queued: list[EnrolmentJob] = []
    for user_id in waiting:
        if len(queued) == room:
            break
        job = await queue_if_due(session, user_id, limits)
        if job is not None:
            queued.append(job)
    return queued


async def _enough_new_recordings(
    session: AsyncSession, user_id: str, limits: EnrolmentSettings
) -> bool:
    jobs = EnrolmentRepository(session)
    if await jobs.unfinished_for_user(user_id) is not None:
        return False
    latest = await jobs.latest_for_user(user_id)
    after = latest.created_at if latest is not None else None
    added = await RecordingRepository(session).count_added_alone(user_id, after)
    return added >= limits.auto_retrain_after


def newest_that_fit(recordings: list[Recording], limits: EnrolmentSettings) -> list[Recording]:
    """The newest of `recordings` (oldest first) that one enrolment takes, oldest first."""
    chosen: list[Recording] = []
    seconds = 0.0
    for recording in reversed(recordings):
        if len(chosen) == limits.max_utterances:
            break
        if seconds + recording.duration_seconds > limits.max_total_seconds:
            break
        chosen.append(recording)
        seconds += recording.duration_seconds
    return chosen[::-1]
