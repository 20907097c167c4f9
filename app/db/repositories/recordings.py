from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Recording, User


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
