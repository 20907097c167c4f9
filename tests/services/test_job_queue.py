"""Jobs on procrastinate (PostgreSQL): each job row's procrastinate job is written in the row's own
transaction, procrastinate's locks keep one enrolment per user waiting, a cancel reaches the queue,
and a procrastinate worker runs `JobWorker.run_job`, the same task SQLite runs in-process."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.enrolment_status import EnrolmentStatus
from app.db.job_queue import ENROLMENT_TASK, EXPERT_BANK_TASK, JobAlreadyQueued
from app.db.models import EnrolmentJob
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.session import transaction
from app.engine.training import TrainingCancelled, TrainingRequest, TrainingResult
from app.engine.whisper import WhisperEngine
from app.queue.dispatch import queue_conninfo, run_jobs
from app.queue.procrastinate_worker import prune_finished, queue_app
from app.services import enrolment_worker
from app.services.enrolment_worker import EnrolmentWorker
from app.services.expert_banks import BankBuild, record_bank
from app.services.job_worker import Progress, StopCheck, WorkerContext
from tests.conftest import make_settings
from tests.support.adapters import random_adapter
from tests.support.enrolments import new_job, stored_job
from tests.support.waiting import until

S = EnrolmentStatus


class Rollback(Exception):
    pass


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    # Heartbeats often, so that a cancel reaches a running job soon; sweeps never find a job
    # stale on their own here; procrastinate polls once an hour: a job deferred while its worker
    # waits runs because LISTEN/NOTIFY woke it.
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={
            "worker": False,
            "heartbeat_interval_s": 0.05,
            "stale_after_s": 3600,
            "poll_interval_s": 3600,
        },
    )


async def _queue_job(session: AsyncSession, user_id: str | None = None) -> EnrolmentJob:
    """A new job for the user `user_id`, or for a new user."""
    if user_id is None:
        job = await new_job(session)
    else:
        job = EnrolmentJob(
            user_id=user_id, method="lora", params={}, utterance_count=4, audio_seconds=8.0
        )
    return await EnrolmentRepository(session).add(job, [])


async def _queue_jobs(sessions: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await session.execute(
            text(
                "SELECT id, status, task_name, args, lock, queueing_lock "
                "FROM procrastinate_jobs ORDER BY id"
            )
        )
        return [dict(row._mapping) for row in rows]


async def test_a_job_and_its_queue_job_are_committed_together(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions) as session:
        job = await _queue_job(session)

    lock = f"enrolment:{job.user_id}"
    assert await _queue_jobs(sessions) == [
        {
            "id": job.queue_job_id,
            "status": "todo",
            "task_name": ENROLMENT_TASK,
            "args": {"job_id": job.id},
            "lock": lock,
            "queueing_lock": lock,
        }
    ]


async def test_an_expert_bank_build_is_queued_with_its_row(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions) as session:
        bank = await record_bank(session, "f" * 64, BankBuild(experts=2), [])

    rows = await _queue_jobs(sessions)
    queued = [(row["task_name"], row["args"], row["lock"]) for row in rows]
    assert queued == [(EXPERT_BANK_TASK, {"job_id": bank.id}, None)]


async def test_a_rolled_back_job_leaves_no_queue_job(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    queued: list[EnrolmentJob] = []
    with pytest.raises(Rollback):
        await _queue_then_roll_back(sessions, queued)
    job = queued[0]
    assert job.queue_job_id is not None

    assert await _queue_jobs(sessions) == []
    async with sessions() as session:
        assert await EnrolmentRepository(session).get(job.id) is None


async def _queue_then_roll_back(
    sessions: async_sessionmaker[AsyncSession], queued: list[EnrolmentJob]
) -> None:
    async with transaction(sessions) as session:
        queued.append(await _queue_job(session))
        raise Rollback


async def test_a_second_enrolment_of_a_user_is_refused_while_one_waits(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions) as session:
        first = await _queue_job(session)

    async with transaction(sessions) as session:
        with pytest.raises(JobAlreadyQueued):
            await _queue_job(session, first.user_id)
        # Refused in a savepoint: the transaction goes on, without the second job.
        jobs = await EnrolmentRepository(session).list_for_user(first.user_id)
        assert [job.id for job in jobs] == [first.id]

    assert [job["args"] for job in await _queue_jobs(sessions)] == [{"job_id": first.id}]


async def test_two_enrolments_of_a_user_at_once_queue_one(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Two requests that both passed the service's check: the queueing lock lets one in."""
    async with transaction(sessions) as session:
        user_id = (await new_job(session)).user_id

    async with transaction(sessions) as first:
        await _queue_job(first, user_id)
        # Whether it reaches the lock's index before or after this commits, it is refused.
        second = asyncio.create_task(_queue_in_own_transaction(sessions, user_id))

    with pytest.raises(JobAlreadyQueued):
        await second
    assert len(await _queue_jobs(sessions)) == 1


async def _queue_in_own_transaction(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> None:
    async with transaction(sessions) as session:
        await _queue_job(session, user_id)


async def test_cancelling_a_queued_job_cancels_its_queue_job_and_frees_the_lock(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions) as session:
        job = await _queue_job(session)
    async with transaction(sessions) as session:
        queued = await EnrolmentRepository(session).get(job.id)
        assert queued is not None
        assert await EnrolmentRepository(session).cancel(queued)

    assert [row["status"] for row in await _queue_jobs(sessions)] == ["cancelled"]
    async with transaction(sessions) as session:
        await _queue_job(session, job.user_id)
    assert [row["status"] for row in await _queue_jobs(sessions)] == ["cancelled", "todo"]


async def test_a_procrastinate_worker_runs_a_deferred_enrolment(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    nf4_engine: WhisperEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = {"activate": True, "reason": "the adapter saves words"}
    result = TrainingResult(adapter=random_adapter(nf4_engine, 7), metrics={"gate": gate})
    monkeypatch.setattr(enrolment_worker, "run_in_subprocess", lambda *_: result)

    async with _worker(context):
        async with transaction(sessions) as session:
            job = await _queue_job(session)
        await until(_status_is(sessions, job.id, S.SUCCEEDED), within_s=120)

    assert [row["status"] for row in await _queue_jobs(sessions)] == ["succeeded"]
    assert (await stored_job(sessions, job.id)).activated


@pytest.fixture
def training_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every enrolment's training raises `RuntimeError: boom`."""

    def fails(*_: object) -> TrainingResult:
        raise RuntimeError("boom")

    monkeypatch.setattr(enrolment_worker, "run_in_subprocess", fails)


async def test_a_failed_job_fails_its_queue_job(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    training_fails: None,
) -> None:
    async with _worker(context):
        async with transaction(sessions) as session:
            job = await _queue_job(session)
        await until(_status_is(sessions, job.id, S.FAILED), within_s=120)

    assert (await stored_job(sessions, job.id)).error == "RuntimeError: boom"
    assert [row["status"] for row in await _queue_jobs(sessions)] == ["failed"]


async def test_procrastinates_records_of_long_finished_jobs_are_pruned(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    training_fails: None,
) -> None:
    async with _worker(context):
        async with transaction(sessions) as session:
            old = await _queue_job(session)
        await until(_status_is(sessions, old.id, S.FAILED), within_s=120)
        async with transaction(sessions) as session:
            recent = await _queue_job(session, old.user_id)
        await until(_status_is(sessions, recent.id, S.FAILED), within_s=120)
    async with transaction(sessions) as session:
        waiting = await _queue_job(session, old.user_id)
        # The failed job and the one still waiting look a day old.
        await session.execute(
            text(
                "UPDATE procrastinate_events SET at = at - interval '25 hours' "
                "WHERE job_id IN (:old, :waiting)"
            ),
            {"old": old.queue_job_id, "waiting": waiting.queue_job_id},
        )

    app = queue_app(queue_conninfo(context) or "", {})
    async with app.open_async():
        await prune_finished(app, kept_h=24)

    left = {row["id"] for row in await _queue_jobs(sessions)}
    assert left == {recent.queue_job_id, waiting.queue_job_id}
    async with sessions() as session:  # the job rows stay
        assert await EnrolmentRepository(session).get(old.id) is not None


async def test_a_running_job_is_cancelled(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = _train_until_stopped(monkeypatch)

    async with _worker(context):
        async with transaction(sessions) as session:
            job = await _queue_job(session)
        await asyncio.wait_for(started.wait(), timeout=120)
        async with transaction(sessions) as session:
            running = await EnrolmentRepository(session).get(job.id)
            assert running is not None
            assert running.status == S.RUNNING
            assert await EnrolmentRepository(session).cancel(running)
        await until(_status_is(sessions, job.id, S.CANCELLED), within_s=120)

    assert [row["status"] for row in await _queue_jobs(sessions)] == ["aborted"]


async def test_a_job_running_when_the_worker_stops_is_handed_to_a_new_queue_job(
    sessions: async_sessionmaker[AsyncSession],
    context: WorkerContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = _train_until_stopped(monkeypatch)

    async with _worker(context):
        async with transaction(sessions) as session:
            job = await _queue_job(session)
        await asyncio.wait_for(started.wait(), timeout=120)

    stopped = await stored_job(sessions, job.id)
    assert (stopped.status, stopped.attempts) == (S.QUEUED, 0)
    assert stopped.message == "re-queued: the worker shut down"
    assert stopped.queue_job_id != job.queue_job_id
    assert [row["status"] for row in await _queue_jobs(sessions)] == ["aborted", "todo"]


def _train_until_stopped(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Training that runs until told to stop; the event is set once it started."""
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def train(
        request: TrainingRequest, progress: Progress, should_stop: StopCheck
    ) -> TrainingResult:
        loop.call_soon_threadsafe(started.set)
        while not should_stop():
            time.sleep(0.01)  # a stand-in for training steps
        raise TrainingCancelled("training was cancelled")

    monkeypatch.setattr(enrolment_worker, "run_in_subprocess", train)
    return started


class _worker:
    """`run_jobs` with one enrolment worker, in the background while the block runs."""

    def __init__(self, context: WorkerContext) -> None:
        self._context = context
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        workers = [EnrolmentWorker(self._context)]
        self._task = asyncio.create_task(run_jobs(self._context, workers, self._stop))
        # procrastinate fetches once, then waits for a notification (or the hourly poll): a job
        # deferred after that fetch but before its listener ran LISTEN would wait an hour. The
        # fetch runs on a pooled connection, the listener opens its own: it listens after it.
        await until(_listening(self._context.sessions), within_s=120, what="LISTEN")

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout=120)


def _listening(sessions: async_sessionmaker[AsyncSession]) -> Callable[[], Awaitable[bool]]:
    """Whether procrastinate's listener on this test's database ran LISTEN (its last query for
    30 s, until its first keep-alive)."""

    async def check() -> bool:
        async with sessions() as session:
            listeners = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
                )
            )
        return bool(listeners)

    return check


def _status_is(
    sessions: async_sessionmaker[AsyncSession], job_id: str, status: EnrolmentStatus
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await stored_job(sessions, job_id)).status == status

    return check
