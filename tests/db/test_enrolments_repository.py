"""`EnrolmentRepository` moves a job only along the state machine, against real SQLite and
PostgreSQL databases."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.enrolment_status import EnrolmentStatus, IllegalTransitionError
from app.db.migrate import upgrade_to_head
from app.db.models import EnrolmentJob, User
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.repositories.users import UserRepository
from app.db.session import create_engine, create_sessionmaker, transaction

pytestmark = pytest.mark.postgres

S = EnrolmentStatus


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    upgrade_to_head(database_url)
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def _new_job(session: AsyncSession, **fields: object) -> EnrolmentJob:
    user = await UserRepository(session).add(
        User(name="alice", api_key_hash="0" * 64, api_key_prefix="pqm-0")
    )
    return EnrolmentJob(
        user_id=user.id, method="lora", params={}, utterance_count=4, audio_seconds=8.0, **fields
    )


async def _queued_job(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with transaction(sessions) as session:
        job = await EnrolmentRepository(session).add(await _new_job(session), [])
        return job.id


async def _running_job(sessions: async_sessionmaker[AsyncSession]) -> str:
    job_id = await _queued_job(sessions)
    async with transaction(sessions) as session:
        claimed = await EnrolmentRepository(session).claim_next("worker-1")
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.attempts) == (job_id, S.RUNNING, 1)
    return job_id


async def _status(sessions: async_sessionmaker[AsyncSession], job_id: str) -> str:
    async with sessions() as session:
        job = await EnrolmentRepository(session).get(job_id)
    assert job is not None
    return job.status


async def test_a_new_job_is_queued_and_a_claim_runs_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await _queued_job(sessions)
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
        job = await _new_job(session, status=status)
        with pytest.raises(ValueError, match=f"this one is {status}"):
            await EnrolmentRepository(session).add(job, [])


@pytest.mark.parametrize("outcome", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
async def test_a_running_job_finishes(
    sessions: async_sessionmaker[AsyncSession], outcome: EnrolmentStatus
) -> None:
    job_id = await _running_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        await jobs.finish(job, outcome, error="boom" if outcome is S.FAILED else None)
    async with sessions() as session:
        job = await EnrolmentRepository(session).get(job_id)
    assert job is not None
    assert job.status == outcome.value
    assert job.finished_at is not None
    assert job.error == ("boom" if outcome is S.FAILED else None)
    assert (job.progress == 1.0) is (outcome is S.SUCCEEDED)


async def test_a_running_job_is_requeued(sessions: async_sessionmaker[AsyncSession]) -> None:
    job_id = await _running_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        await jobs.requeue(job, "re-queued: test", refund_attempt=True)
    async with sessions() as session:
        job = await EnrolmentRepository(session).get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.progress) == ("queued", 0, 0.0)
    assert job.message == "re-queued: test"


async def test_a_queued_job_is_cancelled_but_never_finished_otherwise(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await _queued_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        for outcome in (S.SUCCEEDED, S.FAILED):
            with pytest.raises(IllegalTransitionError, match=f"job queued cannot become {outcome}"):
                await jobs.finish(job, outcome)
        with pytest.raises(IllegalTransitionError, match="job queued cannot become queued"):
            await jobs.requeue(job, "again", refund_attempt=False)
        await jobs.finish(job, S.CANCELLED)
    assert await _status(sessions, job_id) == "cancelled"


@pytest.mark.parametrize("outcome", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
async def test_a_finished_job_never_changes_again(
    sessions: async_sessionmaker[AsyncSession], outcome: EnrolmentStatus
) -> None:
    job_id = await _running_job(sessions)
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
    job_id = await _running_job(sessions)
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        with pytest.raises(ValueError, match="not an outcome"):
            await jobs.finish(job, S.QUEUED)


async def test_counts_by_status(sessions: async_sessionmaker[AsyncSession]) -> None:
    await _running_job(sessions)
    async with sessions() as session:
        assert await EnrolmentRepository(session).count_by_status() == {S.RUNNING: 1}
