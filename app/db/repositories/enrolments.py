from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.enrolment_status import UNFINISHED
from app.db.models import EnrolmentJob, EnrolmentRecording, Recording
from app.db.repositories.jobs import JobRepository

_AUTOMATIC_JOBS_LOCK = 0x50514D02
"""PostgreSQL advisory lock key of `lock_automatic_jobs`: "PQM" and 2 (migrations take "PQM")."""


class EnrolmentRepository(JobRepository[EnrolmentJob]):
    """Enrolment jobs and their recordings; their status changes as `JobRepository` says."""

    def __init__(self, session: AsyncSession) -> None:
        super().__init__(session, EnrolmentJob)

    async def add(self, job: EnrolmentJob, recordings: list[Recording]) -> EnrolmentJob:
        """Records a new job (given without a status), queued, to train on `recordings` in
        that order: new ones (its upload) are recorded with it, stored ones are linked. Raises
        `JobAlreadyQueued` (recording none of it) while another job of the user waits."""
        async with self._queueing(job):
            self._session.add_all(recordings)
            await self._session.flush()
            self._session.add_all(
                EnrolmentRecording(
                    enrolment_id=job.id, position=position, recording_id=recording.id
                )
                for position, recording in enumerate(recordings)
            )
            await self._session.flush()
        return job

    async def by_idempotency_key(self, user_id: str, key: str) -> EnrolmentJob | None:
        return await self._session.scalar(
            select(EnrolmentJob).where(
                EnrolmentJob.user_id == user_id, EnrolmentJob.idempotency_key == key
            )
        )

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
