"""The enrolment worker against real SQLite and PostgreSQL databases, with training replaced by
a stand-in that decides how it ends. Two workers share the database: a worker whose job was
re-queued by a sweep (it looked stopped) and claimed by another must not end that other run."""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters_store.sql import SqlBlobStore
from app.config import EnrolmentSettings, Settings
from app.db.base import utcnow
from app.db.enrolment_status import EnrolmentStatus
from app.db.models import Adapter, AdapterBlob, EnrolmentJob, Recording, User
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.repositories.recordings import RecordingRepository
from app.db.repositories.users import UserRepository
from app.db.session import transaction
from app.engine.facade import SpeechEngine
from app.engine.training import TrainingCancelled, TrainingRequest, TrainingResult
from app.engine.whisper import WhisperEngine
from app.services import enrolment_worker
from app.services.auto_retrain import queue_if_due
from app.services.enrolment_worker import EnrolmentWorker
from app.services.job_worker import WorkerContext
from tests.conftest import make_settings
from tests.support.adapters import random_adapter
from tests.support.enrolments import claim, queued_job, stored_job

pytestmark = pytest.mark.postgres

S = EnrolmentStatus
Ending = Callable[[], TrainingResult]
"""How the stand-in training ends, once the job was taken over: a result or an exception."""


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    # A heartbeat far apart: the only one the stand-in training sees is the one after it ends.
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "heartbeat_interval_s": 3600, "max_attempts": 2},
    )


async def _make_stale(
    sessions: async_sessionmaker[AsyncSession], job_id: str, **values: object
) -> None:
    """As if the job's worker had stopped heartbeating a day ago (and `values` were so)."""
    async with transaction(sessions) as session:
        await session.execute(
            update(EnrolmentJob)
            .where(EnrolmentJob.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(days=1), **values)
        )


def _training_taken_over(
    monkeypatch: pytest.MonkeyPatch,
    take_over: Callable[[], Coroutine[Any, Any, None]],
    ending: Ending,
) -> None:
    """Training that, while it runs, lets `take_over` (a coroutine function) run on the event
    loop to its end, then ends with `ending`."""
    loop = asyncio.get_running_loop()

    def run(request: TrainingRequest, *_: object) -> TrainingResult:
        asyncio.run_coroutine_threadsafe(take_over(), loop).result()
        return ending()

    monkeypatch.setattr(enrolment_worker, "run_in_subprocess", run)


def _fails() -> TrainingResult:
    raise RuntimeError("boom")


def _is_cancelled() -> TrainingResult:
    raise TrainingCancelled("stopped on request")


def _succeeds(engine: WhisperEngine) -> Ending:
    gate = {"activate": True, "reason": "the adapter saves words"}
    return lambda: TrainingResult(adapter=random_adapter(engine, 7), metrics={"gate": gate})


async def _count(sessions: async_sessionmaker[AsyncSession], model: type[object]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _assert_second_worker_runs_it(
    sessions: async_sessionmaker[AsyncSession], job_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = await stored_job(sessions, job_id)
    assert (job.status, job.worker_id, job.attempts) == (S.RUNNING, "worker-2", 2)
    assert (job.error, job.adapter_id, job.finished_at) == (None, None, None)
    assert await _count(sessions, Adapter) == 0
    assert await _count(sessions, AdapterBlob) == 0
    assert "enrolment result discarded" in caplog.text


@pytest.mark.parametrize("ending", ["succeeds", "fails", "is_cancelled"])
async def test_a_swept_worker_does_not_end_the_run_of_the_worker_that_took_its_job(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    ending: str,
) -> None:
    job_id = await queued_job(sessions)
    first, second = EnrolmentWorker(context, "worker-1"), EnrolmentWorker(context, "worker-2")

    async def take_over() -> None:
        await _make_stale(sessions, job_id)
        await second.recover_stale_jobs()
        assert await claim(sessions, second.worker_id) == job_id

    endings = {"succeeds": _succeeds(nf4_engine), "fails": _fails, "is_cancelled": _is_cancelled}
    _training_taken_over(monkeypatch, take_over, endings[ending])
    with caplog.at_level(logging.WARNING):
        assert await first.run_once()
    await _assert_second_worker_runs_it(sessions, job_id, caplog)


async def test_a_swept_worker_shutting_down_does_not_requeue_the_job_another_runs(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = await queued_job(sessions)
    first, second = EnrolmentWorker(context, "worker-1"), EnrolmentWorker(context, "worker-2")
    stop = asyncio.Event()

    async def take_over_and_shut_down() -> None:
        await _make_stale(sessions, job_id)
        await second.recover_stale_jobs()
        assert await claim(sessions, second.worker_id) == job_id
        stop.set()

    _training_taken_over(monkeypatch, take_over_and_shut_down, _is_cancelled)
    with caplog.at_level(logging.WARNING):
        await first.run(stop)
    await _assert_second_worker_runs_it(sessions, job_id, caplog)


async def test_a_worker_still_ends_its_own_run(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = await queued_job(sessions)

    async def nothing() -> None:
        pass

    _training_taken_over(monkeypatch, nothing, _fails)
    assert await EnrolmentWorker(context, "worker-1").run_once()
    job = await stored_job(sessions, job_id)
    assert (job.status, job.worker_id, job.error) == (S.FAILED, "worker-1", "RuntimeError: boom")


@pytest.mark.parametrize("attempts", [1, 2], ids=["requeue", "fail"])
async def test_a_job_whose_worker_heartbeats_while_the_sweep_decides_stays_with_it(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
    attempts: int,
) -> None:
    job_id = await queued_job(sessions)
    await claim(sessions, "worker-1")
    # At `max_attempts` (2) a sweep fails the job rather than re-queue it.
    await _make_stale(sessions, job_id, attempts=attempts)
    read_stale = EnrolmentRepository.stale_running

    async def read_then_heartbeat(
        self: EnrolmentRepository, heartbeat_before: datetime
    ) -> list[EnrolmentJob]:
        stale = await read_stale(self, heartbeat_before)
        async with transaction(sessions) as worker:
            assert await EnrolmentRepository(worker).heartbeat(job_id, "worker-1")
        return stale

    monkeypatch.setattr(EnrolmentRepository, "stale_running", read_then_heartbeat)
    await EnrolmentWorker(context, "worker-2").recover_stale_jobs()
    job = await stored_job(sessions, job_id)
    assert (job.status, job.worker_id, job.attempts, job.error) == (
        S.RUNNING,
        "worker-1",
        attempts,
        None,
    )


async def _user_adds_recordings(
    sessions: async_sessionmaker[AsyncSession], name: str, limits: EnrolmentSettings
) -> str:
    """A new user adding `auto_retrain_after` recordings on their own, as the recordings
    service does (which may queue their automatic retraining)."""
    async with transaction(sessions) as session:
        user = await UserRepository(session).add(
            User(name=name, api_key_hash=name.ljust(64, "0"), api_key_prefix=f"pqm-{name}")
        )
        for _ in range(limits.auto_retrain_after):
            recording = Recording(
                user_id=user.id, transcript="hello", blob_key="k", duration_seconds=2.0
            )
            await RecordingRepository(session).add(recording)
            await queue_if_due(session, user.id, limits)
        return user.id


async def _automatic_jobs(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[str, str]]:
    async with sessions() as session:
        result = await session.execute(
            select(EnrolmentJob.user_id, EnrolmentJob.status)
            .where(EnrolmentJob.automatic.is_(True))
            .order_by(EnrolmentJob.created_at)
        )
        return [(user_id, status) for user_id, status in result.all()]


async def test_a_user_held_back_by_the_cap_is_queued_when_room_frees(
    sessions: async_sessionmaker[AsyncSession], tmp_path: Path, tiny_en_dir: Path
) -> None:
    limits = EnrolmentSettings(
        min_utterances=2, auto_retrain_after=2, auto_retrain_max_concurrent=1
    )
    settings = make_settings(tmp_path / "data", model={"path": tiny_en_dir})
    context = WorkerContext.create(
        settings.model_copy(update={"enrolment": limits}),
        sessions,
        SqlBlobStore(sessions),
        cast(SpeechEngine, None),
    )
    alice = await _user_adds_recordings(sessions, "alice", limits)
    bob = await _user_adds_recordings(sessions, "bob", limits)
    worker = EnrolmentWorker(context, "worker-1")
    assert await _automatic_jobs(sessions) == [(alice, S.QUEUED)]

    job_id = await claim(sessions, "worker-1")
    await worker.queue_waiting_retrainings()  # alice's job still runs: no room
    assert await _automatic_jobs(sessions) == [(alice, S.RUNNING)]

    async with transaction(sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.claimed(job_id, "worker-1")
        assert job is not None
        assert await jobs.finish(job, S.SUCCEEDED)
    await worker.queue_waiting_retrainings()
    assert await _automatic_jobs(sessions) == [(alice, S.SUCCEEDED), (bob, S.QUEUED)]


def test_the_training_config_takes_the_services_settings_and_the_users_choices() -> None:
    settings = EnrolmentSettings(training_threads=3, joined_windows=True)

    config = enrolment_worker.training_config({"rank": 4, "epochs": 2, "seed": 5}, settings)

    assert (config.threads, config.joined_windows, config.seed) == (3, True, 5)
    assert (config.rank, config.epochs, config.lora_alpha) == (4, 2, 8.0)
    assert not enrolment_worker.training_config({}, EnrolmentSettings()).joined_windows
