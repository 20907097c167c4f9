from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Adapter, AdapterStatus


class AdapterRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, adapter: Adapter) -> Adapter:
        self._session.add(adapter)
        await self._session.flush()
        return adapter

    async def get_for_user(self, user_id: str, adapter_id: str) -> Adapter | None:
        result = await self._session.execute(
            select(Adapter).where(Adapter.id == adapter_id, Adapter.user_id == user_id)
        )
        return result.scalar_one_or_none()

    async def list_for_user(self, user_id: str) -> list[Adapter]:
        result = await self._session.execute(
            select(Adapter).where(Adapter.user_id == user_id).order_by(Adapter.version.desc())
        )
        return list(result.scalars())

    async def active_for_user(self, user_id: str) -> Adapter | None:
        result = await self._session.execute(
            select(Adapter).where(
                Adapter.user_id == user_id,
                Adapter.active.is_(True),
                Adapter.status == AdapterStatus.READY,
            )
        )
        return result.scalar_one_or_none()

    async def next_version(self, user_id: str) -> int:
        current = await self._session.scalar(
            select(func.max(Adapter.version)).where(Adapter.user_id == user_id)
        )
        return int(current or 0) + 1

    async def activate(self, adapter: Adapter) -> None:
        """Makes `adapter` the user's only active adapter (the partial unique index backs this)."""
        await self._session.execute(
            update(Adapter)
            .where(Adapter.user_id == adapter.user_id, Adapter.active.is_(True))
            .values(active=False)
        )
        await self._session.flush()
        adapter.active = True
        adapter.note = None
        await self._session.flush()

    async def quarantine(self, adapter_id: str, reason: str) -> None:
        """Marks the adapter quarantined and inactive (whoever's it is; a deleted one is left
        deleted)."""
        await self._session.execute(
            update(Adapter)
            .where(Adapter.id == adapter_id)
            .values(status=AdapterStatus.QUARANTINED, active=False, note=reason[:500])
        )
        await self._session.flush()

    async def delete(self, adapter: Adapter) -> None:
        await self._session.delete(adapter)
        await self._session.flush()
