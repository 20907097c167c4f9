"""Enrolment jobs in a real, migrated database, moved through their states by the repository;
and a job followed over HTTP until it finishes."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.enrolment_status import EnrolmentStatus
from app.db.migrate import upgrade_to_head
from app.db.models import EnrolmentJob, User
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.repositories.users import UserRepository
from app.db.session import create_engine, create_sessionmaker, transaction


@asynccontextmanager
async def migrated_sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    upgrade_to_head(database_url)
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def new_job(session: AsyncSession, **fields: object) -> EnrolmentJob:
    """A job not yet recorded, for a new user."""
    user = await UserRepository(session).add(
        User(name="alice", api_key_hash="0" * 64, api_key_prefix="pqm-0")
    )
    return EnrolmentJob(
        user_id=user.id, method="lora", params={}, utterance_count=4, audio_seconds=8.0, **fields
    )


async def queued_job(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with transaction(sessions) as session:
        job = await EnrolmentRepository(session).add(await new_job(session), [])
        return job.id


async def claim(sessions: async_sessionmaker[AsyncSession], worker_id: str) -> str:
    """The id of the job that `worker_id` claimed."""
    async with transaction(sessions) as session:
        claimed = await EnrolmentRepository(session).claim_next(worker_id)
    assert claimed is not None
    assert (claimed.status, claimed.worker_id) == (EnrolmentStatus.RUNNING, worker_id)
    return claimed.id


async def running_job(sessions: async_sessionmaker[AsyncSession]) -> str:
    job_id = await queued_job(sessions)
    assert await claim(sessions, "worker-1") == job_id
    return job_id


async def stored_job(sessions: async_sessionmaker[AsyncSession], job_id: str) -> EnrolmentJob:
    async with sessions() as session:
        job = await EnrolmentRepository(session).get(job_id)
    assert job is not None
    return job


async def wait_for_job(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str], within_s: float = 600
) -> tuple[list[str], dict[str, object]]:
    """Polls the job until it finishes: every status seen (in order) and the finished job.
    Its progress must never go backwards."""
    deadline = time.monotonic() + within_s
    statuses: list[str] = []
    progress: list[float] = []
    while True:
        job: dict[str, object] = (
            await client.get(f"/v1/enrolments/{job_id}", headers=headers)
        ).json()
        if not statuses or statuses[-1] != job["status"]:
            statuses.append(str(job["status"]))
        progress.append(float(str(job["progress"])))
        if EnrolmentStatus(str(job["status"])).finished:
            assert progress == sorted(progress), "progress went backwards"
            return statuses, job
        assert time.monotonic() < deadline, f"job still {job['status']} after {within_s} s"
        await asyncio.sleep(0.5)  # a polling interval, not a synchronisation
