"""Cancelling an enrolment job that a worker changes at the same moment, against real SQLite and
PostgreSQL databases: two sessions stand for the API process and a worker."""

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.enrolment_status import EnrolmentStatus
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.session import transaction
from app.errors import ConflictError
from app.services.auth import Principal, Role
from app.services.enrolment import cancel_job, get_job
from tests.support.enrolments import claim, queued_job, running_job, stored_job

pytestmark = pytest.mark.postgres

ADMIN = Principal(role=Role.ADMIN)


async def test_a_job_claimed_while_being_cancelled_is_stopped_by_its_worker(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await queued_job(sessions)
    async with transaction(sessions) as api:
        seen = await get_job(api, ADMIN, job_id)
        assert seen.status == EnrolmentStatus.QUEUED
        await claim(sessions, "worker-1")
        job = await cancel_job(api, ADMIN, job_id)  # works on `seen`, still in `api`'s map
        assert (job.status, job.cancel_requested) == (EnrolmentStatus.RUNNING, True)
    job = await stored_job(sessions, job_id)
    assert (job.status, job.worker_id, job.cancel_requested) == ("running", "worker-1", True)


async def test_a_job_finished_while_being_cancelled_is_a_conflict(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await running_job(sessions)
    async with transaction(sessions) as api:
        seen = await get_job(api, ADMIN, job_id)
        assert seen.status == EnrolmentStatus.RUNNING
        async with transaction(sessions) as worker:
            jobs = EnrolmentRepository(worker)
            running = await get_job(worker, ADMIN, job_id)
            assert await jobs.finish(running, EnrolmentStatus.SUCCEEDED)
        with pytest.raises(ConflictError, match="already succeeded"):
            await cancel_job(api, ADMIN, job_id)
    job = await stored_job(sessions, job_id)
    assert (job.status, job.cancel_requested) == ("succeeded", False)
