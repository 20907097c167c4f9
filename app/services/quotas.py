"""Per-user limits on what is kept: recordings count and their total seconds."""

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import QuotaSettings
from app.db.repositories.recordings import RecordingRepository
from app.errors import QuotaExceededError


async def check_room_for(
    session: AsyncSession, user_id: str, count: int, seconds: float, quotas: QuotaSettings
) -> None:
    """Refuses (403, `quota_exceeded`) recordings that would take the user past a quota."""
    usage = await RecordingRepository(session).usage_locked(user_id)
    if usage.count + count > quotas.max_recordings:
        raise QuotaExceededError(
            f"This user keeps {usage.count} recordings; adding {count} would pass the quota of "
            f"{quotas.max_recordings}. Delete some first.",
            code="recording_count_quota_exceeded",
        )
    if usage.seconds + seconds > quotas.max_recording_seconds:
        raise QuotaExceededError(
            f"This user keeps {usage.seconds:.0f} s of recordings; adding {seconds:.0f} s would "
            f"pass the quota of {quotas.max_recording_seconds:.0f} s. Delete some first.",
            code="recording_seconds_quota_exceeded",
        )
