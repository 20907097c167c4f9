"""Adapter stores for tests: the real store, watched and slowed down."""

import asyncio
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore, StoredBlob


@dataclass
class CountingStore:
    """The real store, counting reads; optionally slow, or held until `gate` opens (to keep
    loads in flight). Every read is announced on `arrived` as it starts."""

    inner: AdapterStore
    delay_s: float = 0.0
    gate: asyncio.Event | None = None
    reads: list[str] = field(default_factory=list)
    arrived: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    @property
    def joins_transactions(self) -> bool:
        return self.inner.joins_transactions

    async def get(self, key: str) -> bytes:
        self.reads.append(key)
        self.arrived.put_nowait(key)
        await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        return await self.inner.get(key)

    async def put(self, key: str, data: bytes) -> StoredBlob:
        return await self.inner.put(key, data)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(prefix)

    def bind(self, session: AsyncSession) -> AdapterStore:
        return self
