"""The queue side of a job row. With PostgreSQL every queued job row has a procrastinate job that
dispatches it (its id in `queue_job_id`), written in the same transaction as the row, on the
session's own connection: the row and its procrastinate job are committed or rolled back
together. With SQLite there is none: the in-process worker finds queued rows itself.

procrastinate locks: an enrolment's job carries its user in `lock` (two never run at once) and
`queueing_lock` (two are never waiting at once; a second is refused with `JobAlreadyQueued`).
"""

from typing import Any, LiteralString

import psycopg
from procrastinate import PsycopgConnector, exceptions
from procrastinate.jobs import Status
from procrastinate.manager import JobManager
from procrastinate.tasks import configure_task
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import EnrolmentJob, ExpertBank, JobMixin

__all__ = [
    "ENROLMENT_TASK",
    "EXPERT_BANK_TASK",
    "QUEUE",
    "JobAlreadyQueued",
    "cancel_queued",
    "close_stalled",
    "defer",
    "procrastinate_owns",
    "uses_queue",
]

QUEUE = "pqm-jobs"
ENROLMENT_TASK = "pqm.enrolment"
EXPERT_BANK_TASK = "pqm.expert_bank_build"


def procrastinate_owns(name: str | None) -> bool:
    """Whether a table (or index, type, ...) is procrastinate's, which the ORM's metadata does
    not describe (for Alembic's comparisons)."""
    return name is not None and name.startswith("procrastinate_")


class JobAlreadyQueued(Exception):
    """Another job with the same queueing lock (an enrolment of the same user) is waiting."""


def uses_queue(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def defer(session: AsyncSession, job: JobMixin) -> None:
    """Queues the procrastinate job that will run `job` (a row just queued or re-queued,
    flushed), in the session's transaction; records its id on `job`. Nothing on SQLite."""
    if not uses_queue(session):
        return
    manager = JobManager(PsycopgConnector())
    connection = await _connection(session)
    if job.queue_job_id is not None:  # re-queued: its earlier one gives way if it still waits
        await manager.cancel_job_by_id_async(job.queue_job_id, connection=connection)
    lock = _lock(job)
    deferrer = configure_task(
        name=_task(job),
        job_manager=manager,
        queue=QUEUE,
        lock=lock,
        queueing_lock=lock,
        connection=connection,
    )
    try:
        job.queue_job_id = await deferrer.defer_async(job_id=job.id)
    except exceptions.AlreadyEnqueued as exc:
        raise JobAlreadyQueued(str(exc)) from exc
    await session.flush()


async def cancel_queued(session: AsyncSession, job: JobMixin) -> None:
    """Cancels the procrastinate job of a queued row being cancelled, so that its queueing lock
    frees at once."""
    if uses_queue(session) and job.queue_job_id is not None:
        manager = JobManager(PsycopgConnector())
        connection = await _connection(session)
        await manager.cancel_job_by_id_async(job.queue_job_id, connection=connection)


async def close_stalled(session: AsyncSession, queue_job_id: int, failed: bool) -> None:
    """Ends a procrastinate job whose worker stopped (it stays `doing` otherwise, holding its
    lock), in the session's transaction: the row's fate is decided in the same one. `failed`:
    its row failed with it; otherwise aborted (the row was re-queued with a new procrastinate
    job, or had ended already)."""
    status = Status.FAILED if failed else Status.ABORTED
    manager = JobManager(_InTransaction(await _connection(session)))
    await manager.finish_job_by_id_async(queue_job_id, status=status, delete_job=False)


def _task(job: JobMixin) -> str:
    if isinstance(job, EnrolmentJob):
        return ENROLMENT_TASK
    if isinstance(job, ExpertBank):
        return EXPERT_BANK_TASK
    raise TypeError(f"no task runs a {type(job).__name__}")


def _lock(job: JobMixin) -> str | None:
    return f"enrolment:{job.user_id}" if isinstance(job, EnrolmentJob) else None


async def _connection(session: AsyncSession) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under the session, in its transaction."""
    raw = await (await session.connection()).get_raw_connection()
    connection = raw.driver_connection
    if not isinstance(connection, psycopg.AsyncConnection):
        raise TypeError(f"procrastinate needs psycopg, not {type(connection).__name__}")
    return connection


class _InTransaction(PsycopgConnector):
    """A connector that runs `execute_query_async` (finishing a job, which procrastinate offers
    no `connection` argument for) on one given connection. Any other query would need the pool
    it never opens, and fails loudly (`AppNotOpen`)."""

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        super().__init__()
        self._connection = connection

    async def execute_query_async(self, query: LiteralString, **arguments: Any) -> None:
        await self.execute_query_all_async_with_connection(self._connection, query, **arguments)
