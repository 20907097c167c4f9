"""What every kind of background job shares in the database: claiming, heartbeats, cancelling,
re-queueing and finishing, each a status change through `check_transition`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import Update, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import job_queue
from app.db.base import utcnow
from app.db.enrolment_status import EnrolmentStatus, check_transition
from app.db.models import JobMixin

__all__ = ["JobRepository"]


J = TypeVar("J", bound=JobMixin)


class JobRepository(Generic[J]):
    """Jobs of one kind (`model`). Every change of a job's status is made here, through
    `check_transition`, as an UPDATE conditional on the status it changes from: with several
    workers and API processes, someone else may change a job between reading and writing it.
    A job that becomes queued gets its procrastinate job in the same transaction, and one
    cancelled while queued loses it (PostgreSQL; see `job_queue`)."""

    def __init__(self, session: AsyncSession, model: type[J]) -> None:
        self._session = session
        self._model = model

    async def get(self, job_id: str) -> J | None:
        return await self._session.get(self._model, job_id)

    @asynccontextmanager
    async def _queueing(self, job: J) -> AsyncIterator[None]:
        """Records a new job (given without a status) queued, with what the block adds, then
        its procrastinate job. With PostgreSQL in a savepoint: when the queueing lock refuses
        the job (`JobAlreadyQueued`), none of it is recorded and the transaction goes on."""
        if job.status is not None:
            raise ValueError(f"a new job has no status yet; this one is {job.status}")
        if not job_queue.uses_queue(self._session):
            await self._add_queued(job)
            yield
            return
        async with self._session.begin_nested():
            await self._add_queued(job)
            yield
            await job_queue.defer(self._session, job)

    async def _add_queued(self, job: J) -> None:
        job.status = check_transition(None, EnrolmentStatus.QUEUED)
        self._session.add(job)
        await self._session.flush()

    async def claimed(self, job_id: str, worker_id: str, *, for_update: bool = False) -> J | None:
        """The job while it runs for `worker_id`; None once it does not: it finished, was
        deleted, or a sweep re-queued it (its worker looked stopped) and perhaps another worker
        claimed it."""
        statement = (
            select(self._model)
            .where(
                self._model.id == job_id,
                self._model.status == EnrolmentStatus.RUNNING,
                self._model.worker_id == worker_id,
            )
            .execution_options(populate_existing=True)
        )
        if for_update:
            statement = statement.with_for_update()
        return await self._session.scalar(statement)

    async def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        *,
        progress: float | None = None,
        eta_seconds: float | None = None,
        message: str | None = None,
    ) -> bool:
        """Records that `worker_id` still runs the job, and its progress if given. False when
        the job is no longer that worker's to run or a cancel was asked: the worker should stop.
        """
        values: dict[str, object] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values.update(progress=progress, eta_seconds=eta_seconds, message=message)
        result = await self._session.execute(
            update(self._model)
            .where(
                self._model.id == job_id,
                self._model.status == EnrolmentStatus.RUNNING,
                self._model.worker_id == worker_id,
                self._model.cancel_requested.is_(False),
            )
            .values(values)
            .execution_options(synchronize_session=False)
        )
        return getattr(result, "rowcount", 0) == 1

    async def claim_next(self, worker_id: str) -> J | None:
        """Moves the oldest queued job to running for `worker_id`; None when none is queued.

        The conditional UPDATE makes the claim safe between processes: of two workers racing
        for the same job, exactly one sees its row updated.
        """
        while True:
            candidate = await self.next_queued()
            if candidate is None:
                return None
            claimed = await self.claim(candidate, worker_id)
            if claimed is not None:
                return claimed

    async def next_queued(self) -> str | None:
        """The oldest queued job's id."""
        return await self._session.scalar(
            select(self._model.id)
            .where(self._model.status == EnrolmentStatus.QUEUED)
            .order_by(self._model.created_at)
            .limit(1)
        )

    async def claim(self, job_id: str, worker_id: str, queue_job_id: int | None = None) -> J | None:
        """Moves the queued job to running for `worker_id`; None when it is not queued (any
        more): another worker claimed it, or it was cancelled. `queue_job_id`: only while that
        procrastinate job is the one that dispatches it."""
        queued = EnrolmentStatus.QUEUED
        now = utcnow()
        conditions = [self._model.id == job_id, self._model.status == queued]
        if queue_job_id is not None:
            conditions.append(self._model.queue_job_id == queue_job_id)
        result = await self._session.execute(
            update(self._model)
            .where(*conditions)
            .values(
                status=check_transition(queued, EnrolmentStatus.RUNNING),
                worker_id=worker_id,
                started_at=now,
                heartbeat_at=now,
                attempts=self._model.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return None
        return await self._session.get(self._model, job_id, populate_existing=True)

    async def cancel(self, job: J) -> bool:
        """Cancels a queued job; a running one is only marked `cancel_requested`, for its
        worker to stop and finish it cancelled. False when someone else changed the job first
        (see `_change_if_unchanged`)."""
        if job.status == EnrolmentStatus.RUNNING:
            return await self._change_if_unchanged(
                job, update(self._model).values(cancel_requested=True)
            )
        if not await self.finish(job, EnrolmentStatus.CANCELLED):
            return False
        await job_queue.cancel_queued(self._session, job)
        return True

    async def requeue(
        self,
        job: J,
        message: str,
        *,
        refund_attempt: bool,
        stale_before: datetime | None = None,
    ) -> bool:
        """Puts a running job back in the queue for any worker to retry; `refund_attempt`: the
        interrupted attempt does not count towards the job's limit; `stale_before`: only while
        the job's last heartbeat is older (its worker looks stopped). False when someone else
        changed the job first (see `_change_if_unchanged`) or its worker heartbeat since."""
        statement = update(self._model).values(
            status=check_transition(job.status, EnrolmentStatus.QUEUED),
            progress=0.0,
            eta_seconds=None,
            message=message,
        )
        if refund_attempt:  # a running job was claimed, so it has at least one attempt
            statement = statement.values(attempts=self._model.attempts - 1)
        if not await self._change_if_unchanged(job, self._if_stale(statement, stale_before)):
            return False
        await job_queue.defer(self._session, job)
        return True

    async def finish(
        self,
        job: J,
        outcome: EnrolmentStatus,
        error: str | None = None,
        *,
        stale_before: datetime | None = None,
    ) -> bool:
        """Ends the job with `outcome` (a finished status); `error` says why it failed;
        `stale_before` as in `requeue`. False when someone else changed the job first (see
        `_change_if_unchanged`) or its worker heartbeat since."""
        if not outcome.finished:
            raise ValueError(f"{outcome} is not an outcome")
        statement = update(self._model).values(
            status=check_transition(job.status, outcome),
            error=error[:2000] if error else None,
            finished_at=utcnow(),
            eta_seconds=None,
        )
        if outcome is EnrolmentStatus.SUCCEEDED:
            statement = statement.values(progress=1.0)
        if outcome is EnrolmentStatus.CANCELLED:
            statement = statement.values(cancel_requested=True)
        return await self._change_if_unchanged(job, self._if_stale(statement, stale_before))

    async def _change_if_unchanged(self, job: J, statement: Update) -> bool:
        """Applies `statement` to the job's row only while its status, worker and cancel
        request are still those `job` was loaded with, then reloads `job`. False when someone
        else changed them first (a worker claimed it, a sweep re-queued it, a client cancelled
        it): `job` then shows the job as it is now, for the caller to decide again.

        As in `claim_next`, the condition is in the UPDATE itself: checking the loaded object
        would let two processes each see the old status and both change it.
        """
        result = await self._session.execute(
            statement.where(
                self._model.id == job.id,
                self._model.status == job.status,
                self._model.worker_id.is_not_distinct_from(job.worker_id),
                self._model.cancel_requested == job.cancel_requested,
            ).execution_options(synchronize_session=False)
        )
        await self._session.refresh(job)
        return getattr(result, "rowcount", 0) == 1

    async def stale_running(self, heartbeat_before: datetime) -> list[J]:
        result = await self._session.execute(
            select(self._model).where(
                self._model.status == EnrolmentStatus.RUNNING,
                self._model.heartbeat_at < heartbeat_before,
            )
        )
        return list(result.scalars())

    async def count_by_status(self) -> dict[EnrolmentStatus, int]:
        result = await self._session.execute(
            select(self._model.status, func.count()).group_by(self._model.status)
        )
        return {EnrolmentStatus(status): count for status, count in result.all()}

    def _if_stale(self, statement: Update, stale_before: datetime | None) -> Update:
        """`statement`, limited to a job whose heartbeat is older than `stale_before` (when
        given): a sweep read the job as stale, but its worker may have heartbeat since."""
        if stale_before is None:
            return statement
        return statement.where(self._model.heartbeat_at < stale_before)
