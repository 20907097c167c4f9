"""`EnrolmentRepository` moves a job only along the state machine, and only from the state the
caller saw, against real SQLite and PostgreSQL databases."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.enrolment_status import EnrolmentStatus, IllegalTransitionError
from app.db.models import EnrolmentJob
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.session import transaction
from tests.support.enrolments import (
    claim,
    migrated_sessions,
    new_job,
    queued_job,
    running_job,
    stored_job,
)

pytestmark = pytest.mark.postgres

S = EnrolmentStatus


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_sessions(database_url) as sessions:
        yield sessions


async def _status(sessions: async_sessionmaker[AsyncSession], job_id: str) -> str:
    return (await stored_job(sessions, job_id)).status


async def test_a_new_job_is_queued_and_a_claim_runs_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await queued_job(sessions)
    assert await _status(sessions, job_id) == "queued"
    async with transaction(sessions) as session:
        claimed = await EnrolmentRepository(session).claim_next("worker-1")
        assert claimed is not None
        assert claimed.id == job_id
        assert await EnrolmentRepository(session).claim_next("worker-2") is None
    assert await _status(sessions, job_id) == "running"


@pytest.mark.parametrize("status", list(S))
async def test_a_job_is_added_only_without_a_status(
    sessions: async_sessionmaker[AsyncSession], status: EnrolmentStatus
) -> None:
    async with transaction(sessions) as session:
        job = await new_job(session, status=status)
        with pytest.raises(ValueError, match=f"this one is {status}"):
            await EnrolmentRepository(session).add(job, [])


@pytest.mark.parametrize("outcome", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
async def test_a_running_job_finishes(
    sessions: async_sessionmaker[AsyncSession], outcome: EnrolmentStatus
) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        assert await jobs.finish(job, outcome, error="boom" if outcome is S.FAILED else None)
    async with sessions() as session:
        job = await EnrolmentRepository(session).get(job_id)
    assert job is not None
    assert job.status == outcome.value
    assert job.finished_at is not None
    assert job.error == ("boom" if outcome is S.FAILED else None)
    assert (job.progress == 1.0) is (outcome is S.SUCCEEDED)


async def test_a_running_job_is_requeued(sessions: async_sessionmaker[AsyncSession]) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        assert await jobs.requeue(job, "re-queued: test", refund_attempt=True)
    async with sessions() as session:
        job = await EnrolmentRepository(session).get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.progress) == ("queued", 0, 0.0)
    assert job.message == "re-queued: test"


async def test_a_queued_job_is_cancelled_but_never_finished_otherwise(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await queued_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        for outcome in (S.SUCCEEDED, S.FAILED):
            with pytest.raises(IllegalTransitionError, match=f"job queued cannot become {outcome}"):
                await jobs.finish(job, outcome)
        with pytest.raises(IllegalTransitionError, match="job queued cannot become queued"):
            await jobs.requeue(job, "again", refund_attempt=False)
        assert await jobs.cancel(job)
    assert await _status(sessions, job_id) == "cancelled"


@pytest.mark.parametrize("outcome", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
async def test_a_finished_job_never_changes_again(
    sessions: async_sessionmaker[AsyncSession], outcome: EnrolmentStatus
) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        await jobs.finish(job, outcome)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        for other in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
            with pytest.raises(IllegalTransitionError, match="it is finished"):
                await jobs.finish(job, other)
        with pytest.raises(IllegalTransitionError, match="it is finished"):
            await jobs.requeue(job, "again", refund_attempt=False)
        assert await jobs.claim_next("worker-2") is None
    assert await _status(sessions, job_id) == outcome.value


async def test_finish_takes_only_an_outcome(sessions: async_sessionmaker[AsyncSession]) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        with pytest.raises(ValueError, match="not an outcome"):
            await jobs.finish(job, S.QUEUED)


async def test_counts_by_status(sessions: async_sessionmaker[AsyncSession]) -> None:
    await running_job(sessions)
    async with sessions() as session:
        assert await EnrolmentRepository(session).count_by_status() == {S.RUNNING: 1}


async def _loaded(session: AsyncSession, job_id: str) -> EnrolmentJob:
    job = await EnrolmentRepository(session).get(job_id)
    assert job is not None
    return job


async def test_a_running_job_is_only_asked_to_stop(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as session:
        assert await EnrolmentRepository(session).cancel(await _loaded(session, job_id))
    job = await stored_job(sessions, job_id)
    assert (job.status, job.cancel_requested, job.finished_at) == (S.RUNNING, True, None)


# Two sessions stand for two processes: one loads a job, the other changes it and commits, and
# only then does the first try its change, which must not overwrite the other's.


async def test_a_job_claimed_after_it_was_loaded_is_not_cancelled_as_queued(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await queued_job(sessions)
    async with transaction(sessions) as api:
        jobs = EnrolmentRepository(api)
        job = await _loaded(api, job_id)
        await claim(sessions, "worker-1")
        assert not await jobs.cancel(job)
        assert (job.status, job.worker_id, job.cancel_requested) == (S.RUNNING, "worker-1", False)
        assert await jobs.cancel(job)  # as it is now: its worker is asked to stop it
    job = await stored_job(sessions, job_id)
    assert (job.status, job.cancel_requested, job.finished_at) == (S.RUNNING, True, None)


async def test_a_job_whose_cancel_was_asked_after_it_was_loaded_does_not_succeed(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as worker:
        jobs = EnrolmentRepository(worker)
        job = await _loaded(worker, job_id)
        async with transaction(sessions) as api:
            assert await EnrolmentRepository(api).cancel(await _loaded(api, job_id))
        assert not await jobs.finish(job, S.SUCCEEDED)
        assert (job.status, job.cancel_requested) == (S.RUNNING, True)
        assert await jobs.finish(job, S.CANCELLED)
    assert await _status(sessions, job_id) == "cancelled"


async def test_a_job_finished_after_it_was_loaded_is_not_requeued(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as sweep:
        job = await _loaded(sweep, job_id)
        async with transaction(sessions) as worker:
            assert await EnrolmentRepository(worker).finish(await _loaded(worker, job_id), S.FAILED)
        assert not await EnrolmentRepository(sweep).requeue(job, "again", refund_attempt=True)
        assert job.status == S.FAILED
    job = await stored_job(sessions, job_id)
    assert (job.status, job.attempts) == (S.FAILED, 1)


async def test_a_job_another_worker_runs_now_is_not_finished_for_the_first(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as sweep:
        job = await _loaded(sweep, job_id)
        async with transaction(sessions) as other_sweep:
            requeued = await _loaded(other_sweep, job_id)
            assert await EnrolmentRepository(other_sweep).requeue(
                requeued, "again", refund_attempt=False
            )
        await claim(sessions, "worker-2")
        assert not await EnrolmentRepository(sweep).finish(job, S.FAILED, error="stale")
        assert (job.status, job.worker_id) == (S.RUNNING, "worker-2")
    job = await stored_job(sessions, job_id)
    assert (job.status, job.worker_id, job.attempts, job.error) == (S.RUNNING, "worker-2", 2, None)


async def test_only_the_worker_that_runs_a_job_heartbeats_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as sweep:
        assert await EnrolmentRepository(sweep).requeue(
            await _loaded(sweep, job_id), "again", refund_attempt=False
        )
    await claim(sessions, "worker-2")
    async with transaction(sessions) as first:
        jobs = EnrolmentRepository(first)
        assert await jobs.claimed(job_id, "worker-1") is None
        assert not await jobs.heartbeat(job_id, "worker-1", progress=0.5, message="stale")
    job = await stored_job(sessions, job_id)
    assert (job.worker_id, job.progress, job.message) == ("worker-2", 0.0, "again")
    async with transaction(sessions) as second:
        jobs = EnrolmentRepository(second)
        assert await jobs.claimed(job_id, "worker-2") is not None
        assert await jobs.heartbeat(job_id, "worker-2", progress=0.25, message="training")
    job = await stored_job(sessions, job_id)
    assert (job.worker_id, job.progress, job.message) == ("worker-2", 0.25, "training")
