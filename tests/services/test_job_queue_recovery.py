"""Jobs whose procrastinate worker stopped (PostgreSQL): the sweep ends the procrastinate job and,
in the same transaction, re-queues the row with a new one or fails it with the reason, never
leaving it running. The worker here is declared in procrastinate's tables and then left silent,
as a killed one would be (the real kill: `test_job_queue_kill.py`)."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from procrastinate import App
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.enrolment_status import EnrolmentStatus
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.session import transaction
from app.queue.dispatch import queue_conninfo
from app.queue.procrastinate_worker import queue_app, recover
from app.services.enrolment_worker import EnrolmentWorker
from app.services.job_worker import JobWorker, WorkerContext
from tests.conftest import make_settings
from tests.support.enrolments import queued_job, stored_job

S = EnrolmentStatus


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "max_attempts": 2, "stale_after_s": 3600},
    )


@pytest.fixture
async def queue(
    context: WorkerContext,
) -> AsyncIterator[tuple[App, dict[str, JobWorker[Any]]]]:
    conninfo = queue_conninfo(context)
    assert conninfo is not None
    worker = EnrolmentWorker(context, "silent-worker")
    by_task: dict[str, JobWorker[Any]] = {worker.task_name: worker}
    app = queue_app(conninfo, by_task)
    async with app.open_async():
        yield app, by_task


async def _taken_by_a_worker_that_stops(
    app: App, sessions: async_sessionmaker[AsyncSession], attempts: int
) -> tuple[str, int]:
    """A queued job that a procrastinate worker fetched and claimed (its `attempts`-th
    attempt), after which that worker went silent."""
    job_id = await queued_job(sessions)
    worker_id = await app.job_manager.register_worker()
    fetched = await app.job_manager.fetch_job(queues=None, worker_id=worker_id)
    assert fetched is not None
    assert fetched.id is not None
    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        claimed = await jobs.claim(job_id, "silent-worker", queue_job_id=fetched.id)
        assert claimed is not None
        claimed.attempts = attempts
    return job_id, fetched.id


async def _queue_statuses(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        rows = await session.execute(text("SELECT status FROM procrastinate_jobs ORDER BY id"))
        return [str(status) for status in rows.scalars()]


async def test_a_job_whose_worker_stopped_is_requeued_with_a_new_queue_job(
    sessions: async_sessionmaker[AsyncSession], queue: tuple[App, dict[str, JobWorker[Any]]]
) -> None:
    app, by_task = queue
    job_id, stalled_id = await _taken_by_a_worker_that_stops(app, sessions, attempts=1)

    # Its worker's last heartbeat is in the past, and none will follow: stalled after 0 s.
    await recover(app, by_task, stalled_after_s=0)

    job = await stored_job(sessions, job_id)
    assert (job.status, job.attempts) == (S.QUEUED, 1)
    assert job.message == "re-queued: its worker stopped (attempt 1)"
    assert job.queue_job_id not in (None, stalled_id)
    assert await _queue_statuses(sessions) == ["aborted", "todo"]


async def test_a_job_whose_worker_stopped_on_its_last_attempt_fails_with_the_reason(
    sessions: async_sessionmaker[AsyncSession], queue: tuple[App, dict[str, JobWorker[Any]]]
) -> None:
    app, by_task = queue
    job_id, _ = await _taken_by_a_worker_that_stops(app, sessions, attempts=2)

    await recover(app, by_task, stalled_after_s=0)

    job = await stored_job(sessions, job_id)
    assert job.status == S.FAILED
    assert job.error == "the worker stopped while running this enrolment"
    assert await _queue_statuses(sessions) == ["failed"]


async def test_a_job_whose_worker_stopped_before_claiming_it_is_queued_again(
    sessions: async_sessionmaker[AsyncSession], queue: tuple[App, dict[str, JobWorker[Any]]]
) -> None:
    app, by_task = queue
    job_id = await queued_job(sessions)
    worker_id = await app.job_manager.register_worker()
    assert await app.job_manager.fetch_job(queues=None, worker_id=worker_id) is not None

    await recover(app, by_task, stalled_after_s=0)

    assert (await stored_job(sessions, job_id)).status == S.QUEUED
    assert await _queue_statuses(sessions) == ["aborted", "todo"]
