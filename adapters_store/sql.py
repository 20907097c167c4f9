from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters_store.base import (
    BlobCorruptedError,
    BlobNotFoundError,
    StoredBlob,
    sha256_hex,
    validate_key,
)
from app.db.models import AdapterBlob
from app.db.session import transaction


class SqlBlobStore:
    """Blobs in the service database: one backup covers users, metadata and weights alike.

    Built on a sessionmaker, every operation is its own transaction. `bind(session)` gives a
    store whose operations join that session's transaction instead (they flush, the owner of
    the session commits), so blobs and the rows that point at them commit together, and a
    request never waits on a second connection for a lock it holds itself (SQLite).
    """

    joins_transactions = True

    def __init__(self, sessions: async_sessionmaker[AsyncSession] | AsyncSession) -> None:
        self._sessions = sessions

    def bind(self, session: AsyncSession) -> "SqlBlobStore":
        return SqlBlobStore(session)

    @asynccontextmanager
    async def _unit(self) -> AsyncIterator[AsyncSession]:
        if isinstance(self._sessions, AsyncSession):
            yield self._sessions
            await self._sessions.flush()
        else:
            async with transaction(self._sessions) as session:
                yield session

    async def put(self, key: str, data: bytes) -> StoredBlob:
        blob = StoredBlob(key=validate_key(key), size=len(data), sha256=sha256_hex(data))
        async with self._unit() as session:
            await session.merge(
                AdapterBlob(key=blob.key, data=data, size=blob.size, sha256=blob.sha256)
            )
        return blob

    async def get(self, key: str) -> bytes:
        async with self._unit() as session:
            row = (
                await session.execute(
                    select(AdapterBlob.data, AdapterBlob.sha256).where(
                        AdapterBlob.key == validate_key(key)
                    )
                )
            ).one_or_none()
        if row is None:
            raise BlobNotFoundError(key)
        data, expected = row
        if sha256_hex(data) != expected:
            raise BlobCorruptedError(f"checksum mismatch for {key!r}")
        return bytes(data)

    async def delete(self, key: str) -> None:
        async with self._unit() as session:
            await session.execute(delete(AdapterBlob).where(AdapterBlob.key == validate_key(key)))

    async def exists(self, key: str) -> bool:
        async with self._unit() as session:
            found = await session.scalar(
                select(AdapterBlob.key).where(AdapterBlob.key == validate_key(key))
            )
        return found is not None

    async def delete_prefix(self, prefix: str) -> int:
        pattern = validate_key(prefix).replace("\\", "\\\\").replace("%", "\\%")
        pattern = pattern.replace("_", "\\_") + "/%"
        async with self._unit() as session:
            result = await session.execute(
                delete(AdapterBlob).where(AdapterBlob.key.like(pattern, escape="\\"))
            )
        return int(getattr(result, "rowcount", 0) or 0)
