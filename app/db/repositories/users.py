from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import User


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, user: User) -> User:
        self._session.add(user)
        await self._session.flush()
        return user

    async def get(self, user_id: str) -> User | None:
        return await self._session.get(User, user_id)

    async def get_by_key_hash(self, key_hash: str) -> User | None:
        result = await self._session.execute(select(User).where(User.api_key_hash == key_hash))
        return result.scalar_one_or_none()

    async def delete(self, user_id: str) -> bool:
        result = await self._session.execute(delete(User).where(User.id == user_id))
        return bool(getattr(result, "rowcount", 0))

    async def replace_key(self, user: User, key_hash: str, key_prefix: str) -> None:
        user.api_key_hash = key_hash
        user.api_key_prefix = key_prefix
        await self._session.flush()
