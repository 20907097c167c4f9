"""What every background job worker shares: running one queued job of one kind to its outcome,
and recovering jobs whose worker stopped.

A job is dispatched in one of two ways (`app.queue`), both ending in `JobWorker.run_job`: with
PostgreSQL by procrastinate (the job row's procrastinate job, deferred in the transaction that
queued the row), with SQLite by `run_workers`, a loop in this process that finds queued rows.
Any number of workers may share one database (every status change is a conditional update). The
heavy part of a job runs in a child process with bounded threads, so that serving keeps its
cores; while it runs, the job's heartbeat and progress are written every few seconds, and a job
whose heartbeat stops (its worker died) is re-queued or failed by the next sweep.

One process runs every kind of job, one job at a time.
"""

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters_store import AdapterStore
from app.config import EnrolmentSettings, Settings
from app.db import job_queue
from app.db.base import utcnow
from app.db.enrolment_status import EnrolmentStatus
from app.db.models import JobMixin
from app.db.repositories.jobs import JobRepository
from app.db.session import transaction
from app.engine.facade import SpeechEngine
from app.engine.training import ServingNumerics, TrainingCancelled, TrainingProgress
from app.engine.types import Precision
from app.services.model_loading import resolve_model_dir

__all__ = [
    "ClaimLost",
    "JobWorker",
    "Progress",
    "StopCheck",
    "WorkerContext",
    "default_worker_id",
    "run_workers",
]

logger = logging.getLogger(__name__)

J = TypeVar("J", bound=JobMixin)
R = TypeVar("R")

Progress = Callable[[TrainingProgress], None]
StopCheck = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What the workers of one process share: the database, the store and the served model."""

    sessions: async_sessionmaker[AsyncSession]
    store: AdapterStore
    engine: SpeechEngine
    """The served model: adapters are checked against it before they are stored."""
    model_dir: Path
    precision: Precision
    device: str
    """The served model's device setting (`auto`, `cpu`, `cuda`): training runs there too."""
    numerics: ServingNumerics
    """How serving computes: the gate transcribes the same way."""
    settings: EnrolmentSettings

    @classmethod
    def create(
        cls,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        store: AdapterStore,
        engine: SpeechEngine,
    ) -> "WorkerContext":
        return cls(
            sessions=sessions,
            store=store,
            engine=engine,
            model_dir=resolve_model_dir(settings),
            precision=settings.model.precision,
            device=settings.model.device,
            numerics=ServingNumerics(
                compute_dtype=settings.model.compute_dtype,
                base_window=settings.model.encoder_window,
            ),
            settings=settings.enrolment,
        )


class ClaimLost(Exception):
    """The job is no longer this worker's to end: a sweep re-queued it (the worker looked
    stopped, its heartbeat late) and another worker may run it now, or it finished or was
    deleted meanwhile. This worker's result is discarded."""


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobWorker(ABC, Generic[J]):
    """Runs jobs of one kind, one at a time. A kind says where its jobs live (`_jobs`) and does
    one job's work (`_work`), recording its success through `_succeeding`; any exception ends
    the job: `TrainingCancelled` cancelled (re-queued when the worker shuts down), anything
    else failed."""

    kind: str
    """What a job of this kind is called in logs and errors ("enrolment")."""
    task_name: str
    """The procrastinate task that dispatches jobs of this kind (`job_queue`)."""

    def __init__(self, context: WorkerContext, worker_id: str | None = None) -> None:
        self._ctx = context
        self.worker_id = worker_id or default_worker_id()
        self._stopping = asyncio.Event()

    @abstractmethod
    def _jobs(self, session: AsyncSession) -> JobRepository[J]: ...

    @abstractmethod
    async def _work(self, job: J) -> None: ...

    def _log_fields(self, job: J) -> dict[str, str]:
        """What a log line about `job` names besides its id and this worker."""
        return {}

    def stop_with(self, stop: asyncio.Event) -> None:
        """A job running when `stop` is set is stopped and re-queued."""
        self._stopping = stop

    async def run(self, stop: asyncio.Event) -> None:
        """Works until `stop` is set."""
        await run_workers([self], stop, self._ctx.settings.poll_interval_s)

    async def run_once(self) -> bool:
        """Runs the oldest queued job if there is one (the in-process dispatch)."""
        await self.recover_stale_jobs()
        await self.housekeeping()
        async with self._ctx.sessions() as session:
            job_id = await self._jobs(session).next_queued()
        return job_id is not None and await self.run_job(job_id)

    async def run_job(self, job_id: str, queue_job_id: int | None = None) -> bool:
        """What a job does, however it was dispatched: claims the queued job and runs it to its
        outcome. False when it is not queued (any more): cancelled, deleted, finished or taken
        by another worker. `queue_job_id`: the procrastinate job dispatching it, which must be
        the row's own."""
        async with transaction(self._ctx.sessions) as session:
            job = await self._jobs(session).claim(job_id, self.worker_id, queue_job_id)
        if job is None:
            return False
        await self.process(job)
        return True

    async def stored(self, job_id: str) -> J | None:
        async with self._ctx.sessions() as session:
            return await self._jobs(session).get(job_id)

    async def housekeeping(self) -> None:
        """What this kind does besides its jobs, before each look for a queued job (SQLite)
        or on each sweep (PostgreSQL)."""

    async def recover_stale_jobs(self) -> None:
        """Re-queues or fails the running jobs whose heartbeat stopped."""
        cutoff = utcnow() - timedelta(seconds=self._ctx.settings.stale_after_s)
        async with transaction(self._ctx.sessions) as session:
            jobs = self._jobs(session)
            for job in await jobs.stale_running(cutoff):
                await self._recover(jobs, job, stale_before=cutoff)

    async def recover_stalled_dispatch(self, queue_job_id: int, job_id: str) -> None:
        """Ends a procrastinate job whose worker stopped (procrastinate's heartbeats say so) and,
        in the same transaction, re-queues or fails the job row it was running."""
        async with transaction(self._ctx.sessions) as session:
            jobs = self._jobs(session)
            job = await jobs.get(job_id)
            failed = False
            if job is not None and job.queue_job_id == queue_job_id:
                if job.status == EnrolmentStatus.RUNNING:
                    failed = not await self._recover(jobs, job)
                elif job.status == EnrolmentStatus.QUEUED:  # it stopped before its claim
                    await job_queue.defer(session, job)
            await job_queue.close_stalled(session, queue_job_id, failed=failed)

    async def _recover(
        self, jobs: JobRepository[J], job: J, stale_before: datetime | None = None
    ) -> bool:
        """Re-queues (True) or fails a running job whose worker stopped: failed once it used its
        attempts or a cancel was asked. False too when another sweep, its worker or a client
        changed it first."""
        settings = self._ctx.settings
        retried = job.attempts < settings.max_attempts and not job.cancel_requested
        if retried:
            message = f"re-queued: its worker stopped (attempt {job.attempts})"
            recovered = await jobs.requeue(
                job, message, refund_attempt=False, stale_before=stale_before
            )
        else:
            error = f"the worker stopped while running this {self.kind}"
            recovered = await jobs.finish(
                job, EnrolmentStatus.FAILED, error=error, stale_before=stale_before
            )
        if recovered:
            logger.warning(
                "recovered a job whose worker stopped",
                extra={"job_id": job.id, "kind": self.kind, "status": job.status},
            )
        return retried and recovered

    async def process(self, job: J) -> None:
        log = {"job_id": job.id, "worker_id": self.worker_id, **self._log_fields(job)}
        logger.info("%s started", self.kind, extra=log)
        try:
            await self._work_to_outcome(job, log)
        except ClaimLost:
            logger.warning(
                "%s result discarded: the job is no longer this worker's "
                "(re-queued by a sweep and perhaps claimed by another worker, or finished)",
                self.kind,
                extra=log,
            )

    async def _work_to_outcome(self, job: J, log: dict[str, str]) -> None:
        try:
            await self._work(job)
        except ClaimLost:
            raise
        except TrainingCancelled:
            if self._stopping.is_set():
                await self._requeue(job.id)
                logger.info("%s interrupted by shutdown; re-queued", self.kind, extra=log)
            else:
                await self._set_outcome(job.id, EnrolmentStatus.CANCELLED, error=None)
                logger.info("%s cancelled", self.kind, extra=log)
        except Exception as exc:
            await self._set_outcome(job.id, EnrolmentStatus.FAILED, error=_describe(exc))
            logger.exception("%s failed", self.kind, extra=log)

    async def _in_child(self, job_id: str, call: Callable[[Progress, StopCheck], R]) -> R:
        """Runs `call` (blocking: it starts and supervises a child process) in a thread while
        the job's heartbeat and the latest progress it reported are recorded; its stop check
        turns true once the job was cancelled, deleted or taken from this worker, or the worker
        shuts down. Cancelled itself, it stops the child and waits for it to end first (a
        thread cannot be cancelled, and would leave the child training)."""
        latest: list[TrainingProgress] = []
        stop = threading.Event()
        running = asyncio.ensure_future(asyncio.to_thread(call, latest.append, stop.is_set))
        try:
            while not running.done():
                await asyncio.wait({running}, timeout=self._ctx.settings.heartbeat_interval_s)
                alive = await self._heartbeat(job_id, latest[-1] if latest else None)
                if not alive or self._stopping.is_set():
                    stop.set()
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait({running})
            raise
        return running.result()

    async def _heartbeat(self, job_id: str, progress: TrainingProgress | None) -> bool:
        """Records progress; False when the job was cancelled, deleted or is no longer this
        worker's meanwhile: its work should stop."""
        async with transaction(self._ctx.sessions) as session:
            jobs = self._jobs(session)
            if progress is None:
                return await jobs.heartbeat(job_id, self.worker_id)
            return await jobs.heartbeat(
                job_id,
                self.worker_id,
                progress=round(min(progress.fraction, 0.99), 4),
                eta_seconds=progress.eta_seconds,
                message=progress.message,
            )

    async def _claimed(self, session: AsyncSession, job_id: str) -> J:
        """The job, while it still runs for this worker; raises `ClaimLost` otherwise."""
        job = await self._jobs(session).claimed(job_id, self.worker_id)
        if job is None:
            raise ClaimLost(job_id)
        return job

    @contextlib.asynccontextmanager
    async def _succeeding(self, job_id: str) -> AsyncIterator[tuple[AsyncSession, J]]:
        """One transaction: what the caller records in it with the job (locked, still this
        worker's, not cancelled) and the job's success, or none of it."""
        async with transaction(self._ctx.sessions) as session:
            jobs = self._jobs(session)
            job = await jobs.claimed(job_id, self.worker_id, for_update=True)
            if job is None:
                raise ClaimLost(job_id)
            if job.cancel_requested:
                raise TrainingCancelled("the job was cancelled while finishing")
            yield session, job
            if not await jobs.finish(job, EnrolmentStatus.SUCCEEDED):
                # Cancelled or taken over meanwhile: ending it as cancelled tells which.
                raise TrainingCancelled("the job changed while finishing")

    async def _requeue(self, job_id: str) -> None:
        message = "re-queued: the worker shut down"
        await self._end_own_run(
            job_id, lambda jobs, job: jobs.requeue(job, message, refund_attempt=True)
        )

    async def _set_outcome(self, job_id: str, outcome: EnrolmentStatus, error: str | None) -> None:
        await self._end_own_run(job_id, lambda jobs, job: jobs.finish(job, outcome, error=error))

    async def _end_own_run(
        self, job_id: str, change: Callable[[JobRepository[J], J], Awaitable[bool]]
    ) -> None:
        """Applies `change` while the job is still running for this worker; raises `ClaimLost`
        once it is not. A change refused because a client asked to cancel meanwhile is tried
        again on the job as it is now."""
        async with transaction(self._ctx.sessions) as session:
            jobs = self._jobs(session)
            job = await jobs.claimed(job_id, self.worker_id)
            while job is not None and self._runs(job):
                if await change(jobs, job):
                    return
        raise ClaimLost(job_id)

    def _runs(self, job: J) -> bool:
        return job.status == EnrolmentStatus.RUNNING and job.worker_id == self.worker_id


async def run_workers(
    workers: Sequence[JobWorker[Any]], stop: asyncio.Event, poll_interval_s: float
) -> None:
    """The in-process dispatch (SQLite; see `app.queue.dispatch`). Works until `stop` is set,
    one job at a time in this process: each turn the workers are asked in order, and the first
    with a queued job runs it, so that an earlier kind's jobs go first whenever both kinds wait
    (a long job of a later kind still delays them while it runs). A job running when `stop` is
    set is stopped and re-queued."""
    for worker in workers:
        worker.stop_with(stop)
        log = {"kind": worker.kind, "worker_id": worker.worker_id}
        logger.info("job worker started", extra=log)
    while not stop.is_set():
        try:
            if await _any_ran(workers, stop):
                continue
        except Exception:  # the worker must outlive any single failure
            logger.exception("job worker iteration failed")
        await _wait(stop, poll_interval_s)


async def _any_ran(workers: Sequence[JobWorker[Any]], stop: asyncio.Event) -> bool:
    for worker in workers:
        if stop.is_set():
            return False
        if await worker.run_once():
            return True
    return False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
