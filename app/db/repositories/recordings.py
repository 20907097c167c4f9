from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.enrolment_status import UNFINISHED
from app.db.models import EnrolmentJob, Recording, User


@dataclass(frozen=True, slots=True)
class RecordingUsage:
    count: int
    seconds: float


class RecordingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, recording: Recording) -> Recording:
        self._session.add(recording)
        await self._session.flush()
        return recording

    async def get_for_user(self, user_id: str, recording_id: str) -> Recording | None:
        result = await self._session.execute(
            select(Recording).where(Recording.id == recording_id, Recording.user_id == user_id)
        )
        return result.scalar_one_or_none()

    async def list_for_user(self, user_id: str, since: datetime | None = None) -> list[Recording]:
        """Oldest first (the order an enrolment trains on them); `since`: created then or
        later."""
        statement = select(Recording).where(Recording.user_id == user_id)
        if since is not None:
            statement = statement.where(Recording.created_at >= since)
        result = await self._session.execute(statement.order_by(Recording.created_at, Recording.id))
        return list(result.scalars())

    async def count_added_alone(self, user_id: str, after: datetime | None) -> int:
        """The user's recordings added on their own (not by an enrolment upload), created after
        `after` (None: ever)."""
        statement = (
            select(func.count())
            .select_from(Recording)
            .where(Recording.user_id == user_id, Recording.enrolment_id.is_(None))
        )
        if after is not None:
            statement = statement.where(Recording.created_at > after)
        return int(await self._session.scalar(statement) or 0)

    async def users_due_for_retraining(self, added_alone: int) -> list[str]:
        """Users with no job queued or running who have added at least `added_alone` recordings
        on their own since their last job was created (see `count_added_alone`); the one
        waiting longest (whose first such recording is oldest) first."""
        last_job_created = (
            select(func.max(EnrolmentJob.created_at))
            .where(EnrolmentJob.user_id == Recording.user_id)
            .scalar_subquery()
        )
        has_unfinished_job = exists().where(
            EnrolmentJob.user_id == Recording.user_id, EnrolmentJob.status.in_(UNFINISHED)
        )
        result = await self._session.execute(
            select(Recording.user_id)
            .where(
                Recording.enrolment_id.is_(None),
                or_(last_job_created.is_(None), Recording.created_at > last_job_created),
                ~has_unfinished_job,
            )
            .group_by(Recording.user_id)
            .having(func.count() >= added_alone)
            .order_by(func.min(Recording.created_at), Recording.user_id)
        )
        return list(result.scalars())

    async def usage_locked(self, user_id: str) -> RecordingUsage:
        """What the user's recordings add up to, with the user's row locked for the rest of the
        transaction (PostgreSQL), so that two uploads cannot both pass a quota check made on
        the same count."""
        await self._session.execute(select(User.id).where(User.id == user_id).with_for_update())
        count, seconds = (
            await self._session.execute(
                select(
                    func.count(), func.coalesce(func.sum(Recording.duration_seconds), 0.0)
                ).where(Recording.user_id == user_id)
            )
        ).one()
        return RecordingUsage(count=int(count), seconds=float(seconds))

    async def delete(self, recording: Recording) -> None:
        await self._session.execute(delete(Recording).where(Recording.id == recording.id))
