"""`kill -9` of a `pqm worker` (procrastinate, PostgreSQL) while it trains: its training child
exits by itself, and the sweep re-queues the job with a new procrastinate job and says why; the
job never stays running."""

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.enrolment_status import EnrolmentStatus
from app.engine.whisper import WhisperEngine
from app.main import create_app
from app.queue.dispatch import queue_conninfo
from app.queue.procrastinate_worker import queue_app, recover
from app.services.enrolment_worker import EnrolmentWorker
from app.services.job_worker import JobWorker, WorkerContext
from tests.conftest import ADMIN, ADMIN_KEY, create_user, make_settings
from tests.support.audio import speech_16k, to_bytes
from tests.support.enrolments import stored_job
from tests.support.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SENTENCES = (
    "Please open the window in the kitchen.",
    "The weather will be warm and sunny tomorrow.",
    "My brother works at the hospital downtown.",
    "We need more milk, bread and butter.",
)


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path, postgres_url: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url=postgres_url,
        model={"path": tiny_en_dir},
        enrolment={
            "worker": False,
            "min_utterances": 4,
            "gate_folds": 2,
            "max_attempts": 2,
            "stale_after_s": 3600,
        },
    )


@pytest.fixture
async def api(settings: Settings, nf4_engine: WhisperEngine) -> AsyncIterator[FastAPI]:
    application = create_app(settings, recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def worker_process(settings: Settings, postgres_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """`pqm worker` on the same database, heartbeating often so that progress shows soon."""
    env = {
        **os.environ,
        "PQM_DATABASE_URL": postgres_url,
        "PQM_DATA_DIR": str(settings.data_dir),
        "PQM_ADMIN_KEY": ADMIN_KEY,
        "PQM_MODEL__PATH": str(settings.model.path),
        "PQM_ENROLMENT__MIN_UTTERANCES": "4",
        "PQM_ENROLMENT__GATE_FOLDS": "2",
        "PQM_ENROLMENT__HEARTBEAT_INTERVAL_S": "0.5",
        "PQM_ENROLMENT__STALE_AFTER_S": "3600",
        "PQM_LOG_JSON": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


async def _enrol(api: FastAPI) -> str:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as client:
        user = await create_user(client)
        files = [
            ("files", (f"r{index}.wav", to_bytes(speech_16k(sentence), 16_000)))
            for index, sentence in enumerate(SENTENCES)
        ]
        response = await client.post(
            f"/v1/users/{user['id']}/enrolments",
            files=files,
            data={"transcripts": list(SENTENCES)},
            headers=ADMIN,
        )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_a_killed_worker_leaves_no_training_child_and_its_job_is_requeued(
    api: FastAPI,
    worker_process: subprocess.Popen[bytes],
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
) -> None:
    job_id = await _enrol(api)

    async def training() -> bool:
        assert worker_process.poll() is None, "the worker exited"
        return (await stored_job(sessions, job_id)).progress > 0

    # Progress recorded: the training child runs and reports over its pipe.
    await until(training, within_s=600, what="training under the worker")
    children = psutil.Process(worker_process.pid).children(recursive=True)
    assert children
    os.kill(worker_process.pid, signal.SIGKILL)
    worker_process.wait(timeout=60)

    async def children_gone() -> bool:
        return not any(_alive(child) for child in children)

    await until(children_gone, within_s=600, what="the training child's exit")
    job = await stored_job(sessions, job_id)
    assert job.status == EnrolmentStatus.RUNNING, "nothing recorded its end but the sweep"

    await _sweep(context, stalled_after_s=0)  # its heartbeats stopped with it: stalled now

    job = await stored_job(sessions, job_id)
    assert (job.status, job.attempts) == (EnrolmentStatus.QUEUED, 1)
    assert job.message == "re-queued: its worker stopped (attempt 1)"
    async with sessions() as session:
        statuses = await session.execute(text("SELECT status FROM procrastinate_jobs ORDER BY id"))
        assert [str(status) for status in statuses.scalars()] == ["aborted", "todo"]


async def _sweep(context: WorkerContext, stalled_after_s: float) -> None:
    conninfo = queue_conninfo(context)
    assert conninfo is not None
    worker = EnrolmentWorker(context)
    by_task: dict[str, JobWorker[Any]] = {worker.task_name: worker}
    app = queue_app(conninfo, by_task)
    async with app.open_async():
        await recover(app, by_task, stalled_after_s)


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
