from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import InviteLink


class InviteLinkRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, link: InviteLink) -> InviteLink:
        self._session.add(link)
        await self._session.flush()
        return link

    async def usable_by_token_hash(self, token_hash: str, now: datetime) -> InviteLink | None:
        """The link with this token, unless it was revoked or has expired."""
        result = await self._session.execute(
            select(InviteLink).where(
                InviteLink.token_hash == token_hash,
                InviteLink.revoked_at.is_(None),
                InviteLink.expires_at > now,
            )
        )
        return result.scalar_one_or_none()

    async def list_for_user(self, user_id: str) -> list[InviteLink]:
        """Newest first."""
        result = await self._session.execute(
            select(InviteLink)
            .where(InviteLink.user_id == user_id)
            .order_by(InviteLink.created_at.desc(), InviteLink.id)
        )
        return list(result.scalars())

    async def get_for_user(self, user_id: str, link_id: str) -> InviteLink | None:
        result = await self._session.execute(
            select(InviteLink).where(InviteLink.id == link_id, InviteLink.user_id == user_id)
        )
        return result.scalar_one_or_none()

    async def revoke(self, link: InviteLink, now: datetime) -> None:
        """Revoking twice keeps the first time."""
        await self._session.execute(
            update(InviteLink)
            .where(InviteLink.id == link.id, InviteLink.revoked_at.is_(None))
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        await self._session.refresh(link)
