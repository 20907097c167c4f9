"""With SQLite (the embedded default) there is no procrastinate: `run_jobs` finds queued rows in
this process and runs them through the same `JobWorker.run_job` procrastinate calls."""

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.enrolment_status import EnrolmentStatus
from app.engine.training import TrainingResult
from app.engine.whisper import WhisperEngine
from app.queue.dispatch import queue_conninfo, run_jobs
from app.services import enrolment_worker
from app.services.enrolment_worker import EnrolmentWorker
from app.services.job_worker import WorkerContext
from tests.conftest import make_settings
from tests.support.adapters import random_adapter
from tests.support.enrolments import queued_job, stored_job
from tests.support.waiting import until


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pqm.db'}"


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "poll_interval_s": 0.05},
    )


async def test_sqlite_runs_queued_jobs_in_process_through_the_same_task(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = {"activate": True, "reason": "the adapter saves words"}
    result = TrainingResult(adapter=random_adapter(nf4_engine, 7), metrics={"gate": gate})
    monkeypatch.setattr(enrolment_worker, "run_in_subprocess", lambda *_: result)
    assert queue_conninfo(context) is None
    ran: list[tuple[str, int | None]] = []
    run_job = EnrolmentWorker.run_job

    async def recording_run_job(
        self: EnrolmentWorker, job_id: str, queue_job_id: int | None = None
    ) -> bool:
        ran.append((job_id, queue_job_id))
        return await run_job(self, job_id, queue_job_id)

    monkeypatch.setattr(EnrolmentWorker, "run_job", recording_run_job)
    job_id = await queued_job(sessions)
    stop = asyncio.Event()
    running = asyncio.create_task(run_jobs(context, [EnrolmentWorker(context)], stop))

    async def succeeded() -> bool:
        return (await stored_job(sessions, job_id)).status == EnrolmentStatus.SUCCEEDED

    try:
        await until(succeeded, within_s=120, what="the job's success")
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=120)
    assert ran == [(job_id, None)]
    assert (await stored_job(sessions, job_id)).queue_job_id is None
