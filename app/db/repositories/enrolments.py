from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import EnrolmentJob, Recording

ACTIVE_STATUSES = ("queued", "running")


class EnrolmentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, job: EnrolmentJob, recordings: list[Recording]) -> EnrolmentJob:
        self._session.add(job)
        await self._session.flush()
        self._session.add_all(recordings)
        await self._session.flush()
        return job

    async def get(self, job_id: str) -> EnrolmentJob | None:
        return await self._session.get(EnrolmentJob, job_id)

    async def unfinished_for_user(self, user_id: str) -> EnrolmentJob | None:
        result = await self._session.execute(
            select(EnrolmentJob).where(
                EnrolmentJob.user_id == user_id, EnrolmentJob.status.in_(ACTIVE_STATUSES)
            )
        )
        return result.scalars().first()

    async def recordings(self, job_id: str) -> list[Recording]:
        result = await self._session.execute(
            select(Recording).where(Recording.enrolment_id == job_id).order_by(Recording.position)
        )
        return list(result.scalars())

    async def claim_next(self, worker_id: str) -> EnrolmentJob | None:
        """Moves the oldest queued job to running for `worker_id`; None when none is queued.

        The conditional UPDATE makes the claim safe between processes: of two workers racing
        for the same job, exactly one sees its row updated.
        """
        while True:
            candidate = await self._session.scalar(
                select(EnrolmentJob.id)
                .where(EnrolmentJob.status == "queued")
                .order_by(EnrolmentJob.created_at)
                .limit(1)
            )
            if candidate is None:
                return None
            now = utcnow()
            result = await self._session.execute(
                update(EnrolmentJob)
                .where(EnrolmentJob.id == candidate, EnrolmentJob.status == "queued")
                .values(
                    status="running",
                    worker_id=worker_id,
                    started_at=now,
                    heartbeat_at=now,
                    attempts=EnrolmentJob.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) == 1:
                return await self._session.get(EnrolmentJob, candidate, populate_existing=True)

    async def stale_running(self, heartbeat_before: datetime) -> list[EnrolmentJob]:
        result = await self._session.execute(
            select(EnrolmentJob).where(
                EnrolmentJob.status == "running", EnrolmentJob.heartbeat_at < heartbeat_before
            )
        )
        return list(result.scalars())

    async def count_by_status(self) -> dict[str, int]:
        result = await self._session.execute(
            select(EnrolmentJob.status, func.count()).group_by(EnrolmentJob.status)
        )
        return {status: count for status, count in result.all()}
