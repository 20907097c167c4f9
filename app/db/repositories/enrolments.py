from datetime import datetime

from sqlalchemy import Update, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.enrolment_status import UNFINISHED, EnrolmentStatus, check_transition
from app.db.models import EnrolmentJob, EnrolmentRecording, Recording

_AUTOMATIC_JOBS_LOCK = 0x50514D02
"""PostgreSQL advisory lock key of `lock_automatic_jobs`: "PQM" and 2 (migrations take "PQM")."""


class EnrolmentRepository:
    """Jobs and their recordings. Every change of a job's status is made here, through
    `check_transition`, as an UPDATE conditional on the status it changes from: with several
    workers and API processes, someone else may change a job between reading and writing it."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, job: EnrolmentJob, recordings: list[Recording]) -> EnrolmentJob:
        """Records a new job (given without a status), queued, to train on `recordings` in
        that order: new ones (its upload) are recorded with it, stored ones are linked."""
        if job.status is not None:
            raise ValueError(f"a new job has no status yet; this one is {job.status}")
        job.status = check_transition(None, EnrolmentStatus.QUEUED)
        self._session.add(job)
        await self._session.flush()
        self._session.add_all(recordings)
        await self._session.flush()
        self._session.add_all(
            EnrolmentRecording(enrolment_id=job.id, position=position, recording_id=recording.id)
            for position, recording in enumerate(recordings)
        )
        await self._session.flush()
        return job

    async def get(self, job_id: str) -> EnrolmentJob | None:
        return await self._session.get(EnrolmentJob, job_id)

    async def unfinished_for_user(self, user_id: str) -> EnrolmentJob | None:
        result = await self._session.execute(
            select(EnrolmentJob).where(
                EnrolmentJob.user_id == user_id, EnrolmentJob.status.in_(UNFINISHED)
            )
        )
        return result.scalars().first()

    async def latest_for_user(self, user_id: str) -> EnrolmentJob | None:
        return await self._session.scalar(
            select(EnrolmentJob)
            .where(EnrolmentJob.user_id == user_id)
            .order_by(EnrolmentJob.created_at.desc(), EnrolmentJob.id)
            .limit(1)
        )

    async def count_unfinished_automatic(self) -> int:
        """Automatic jobs queued or running, service-wide. Call `lock_automatic_jobs` first
        when the count decides whether to add one."""
        count = await self._session.scalar(
            select(func.count())
            .select_from(EnrolmentJob)
            .where(EnrolmentJob.automatic.is_(True), EnrolmentJob.status.in_(UNFINISHED))
        )
        return int(count or 0)

    async def lock_automatic_jobs(self) -> None:
        """Until the transaction ends, no one else passes this point, so that two users' uploads
        cannot both see room under the cap on automatic jobs. PostgreSQL: a transaction-level
        advisory lock; SQLite takes one writer at a time, and callers have written already."""
        if self._session.get_bind().dialect.name == "postgresql":
            await self._session.execute(select(func.pg_advisory_xact_lock(_AUTOMATIC_JOBS_LOCK)))

    async def recordings(self, job_id: str) -> list[Recording]:
        result = await self._session.execute(
            select(Recording)
            .join(EnrolmentRecording, EnrolmentRecording.recording_id == Recording.id)
            .where(EnrolmentRecording.enrolment_id == job_id)
            .order_by(EnrolmentRecording.position)
        )
        return list(result.scalars())

    async def list_for_user(self, user_id: str) -> list[EnrolmentJob]:
        """Newest first."""
        result = await self._session.execute(
            select(EnrolmentJob)
            .where(EnrolmentJob.user_id == user_id)
            .order_by(EnrolmentJob.created_at.desc(), EnrolmentJob.id)
        )
        return list(result.scalars())

    async def claimed(
        self, job_id: str, worker_id: str, *, for_update: bool = False
    ) -> EnrolmentJob | None:
        """The job while it runs for `worker_id`; None once it does not: it finished, was
        deleted, or a sweep re-queued it (its worker looked stopped) and perhaps another worker
        claimed it."""
        statement = (
            select(EnrolmentJob)
            .where(
                EnrolmentJob.id == job_id,
                EnrolmentJob.status == EnrolmentStatus.RUNNING,
                EnrolmentJob.worker_id == worker_id,
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
            update(EnrolmentJob)
            .where(
                EnrolmentJob.id == job_id,
                EnrolmentJob.status == EnrolmentStatus.RUNNING,
                EnrolmentJob.worker_id == worker_id,
                EnrolmentJob.cancel_requested.is_(False),
            )
            .values(values)
            .execution_options(synchronize_session=False)
        )
        return getattr(result, "rowcount", 0) == 1

    async def claim_next(self, worker_id: str) -> EnrolmentJob | None:
        """Moves the oldest queued job to running for `worker_id`; None when none is queued.

        The conditional UPDATE makes the claim safe between processes: of two workers racing
        for the same job, exactly one sees its row updated.
        """
        queued = EnrolmentStatus.QUEUED
        while True:
            candidate = await self._session.scalar(
                select(EnrolmentJob.id)
                .where(EnrolmentJob.status == queued)
                .order_by(EnrolmentJob.created_at)
                .limit(1)
            )
            if candidate is None:
                return None
            now = utcnow()
            result = await self._session.execute(
                update(EnrolmentJob)
                .where(EnrolmentJob.id == candidate, EnrolmentJob.status == queued)
                .values(
                    status=check_transition(queued, EnrolmentStatus.RUNNING),
                    worker_id=worker_id,
                    started_at=now,
                    heartbeat_at=now,
                    attempts=EnrolmentJob.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) == 1:
                return await self._session.get(EnrolmentJob, candidate, populate_existing=True)

    async def cancel(self, job: EnrolmentJob) -> bool:
        """Cancels a queued job; a running one is only marked `cancel_requested`, for its
        worker to stop and finish it cancelled. False when someone else changed the job first
        (see `_change_if_unchanged`)."""
        if job.status == EnrolmentStatus.RUNNING:
            return await self._change_if_unchanged(
                job, update(EnrolmentJob).values(cancel_requested=True)
            )
        return await self.finish(job, EnrolmentStatus.CANCELLED)

    async def requeue(
        self,
        job: EnrolmentJob,
        message: str,
        *,
        refund_attempt: bool,
        stale_before: datetime | None = None,
    ) -> bool:
        """Puts a running job back in the queue for any worker to retry; `refund_attempt`: the
        interrupted attempt does not count towards the job's limit; `stale_before`: only while
        the job's last heartbeat is older (its worker looks stopped). False when someone else
        changed the job first (see `_change_if_unchanged`) or its worker heartbeat since."""
        statement = update(EnrolmentJob).values(
            status=check_transition(job.status, EnrolmentStatus.QUEUED),
            progress=0.0,
            eta_seconds=None,
            message=message,
        )
        if refund_attempt:  # a running job was claimed, so it has at least one attempt
            statement = statement.values(attempts=EnrolmentJob.attempts - 1)
        return await self._change_if_unchanged(job, _if_stale(statement, stale_before))

    async def finish(
        self,
        job: EnrolmentJob,
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
        statement = update(EnrolmentJob).values(
            status=check_transition(job.status, outcome),
            error=error[:2000] if error else None,
            finished_at=utcnow(),
            eta_seconds=None,
        )
        if outcome is EnrolmentStatus.SUCCEEDED:
            statement = statement.values(progress=1.0)
        if outcome is EnrolmentStatus.CANCELLED:
            statement = statement.values(cancel_requested=True)
        return await self._change_if_unchanged(job, _if_stale(statement, stale_before))

    async def _change_if_unchanged(self, job: EnrolmentJob, statement: Update) -> bool:
        """Applies `statement` to the job's row only while its status, worker and cancel
        request are still those `job` was loaded with, then reloads `job`. False when someone
        else changed them first (a worker claimed it, a sweep re-queued it, a client cancelled
        it): `job` then shows the job as it is now, for the caller to decide again.

        As in `claim_next`, the condition is in the UPDATE itself: checking the loaded object
        would let two processes each see the old status and both change it.
        """
        result = await self._session.execute(
            statement.where(
                EnrolmentJob.id == job.id,
                EnrolmentJob.status == job.status,
                EnrolmentJob.worker_id.is_not_distinct_from(job.worker_id),
                EnrolmentJob.cancel_requested == job.cancel_requested,
            ).execution_options(synchronize_session=False)
        )
        await self._session.refresh(job)
        return getattr(result, "rowcount", 0) == 1

    async def stale_running(self, heartbeat_before: datetime) -> list[EnrolmentJob]:
        result = await self._session.execute(
            select(EnrolmentJob).where(
                EnrolmentJob.status == EnrolmentStatus.RUNNING,
                EnrolmentJob.heartbeat_at < heartbeat_before,
            )
        )
        return list(result.scalars())

    async def count_by_status(self) -> dict[EnrolmentStatus, int]:
        result = await self._session.execute(
            select(EnrolmentJob.status, func.count()).group_by(EnrolmentJob.status)
        )
        return {EnrolmentStatus(status): count for status, count in result.all()}


def _if_stale(statement: Update, stale_before: datetime | None) -> Update:
    """`statement`, limited to a job whose heartbeat is older than `stale_before` (when given):
    a sweep read the job as stale, but its worker may have heartbeat since."""
    if stale_before is None:
        return statement
    return statement.where(EnrolmentJob.heartbeat_at < stale_before)
