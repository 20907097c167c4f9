"""The transcription use case: what a request holds while it waits."""

import asyncio
from dataclasses import dataclass, field

import httpx

from adapters_store import AdapterStore, StoredBlob
from app.engine.whisper import WhisperEngine
from app.metrics import Metrics
from app.services.adapters import LOAD_CONCURRENCY, ActiveAdapters
from app.services.auth import Principal, Role
from app.services.transcription import TranscriptionRequest, TranscriptionService
from app.state import ServiceState
from tests.conftest import create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.audio import speech_16k, to_bytes


@dataclass
class GatedStore:
    """The real store, whose reads wait until the gate opens."""

    inner: AdapterStore
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def get(self, key: str) -> bytes:
        self.arrived.put_nowait(key)
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

    def bind(self, _session: object) -> AdapterStore:
        return self


async def test_requests_waiting_for_cold_adapters_hold_no_database_connection(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    """A burst of new users must not exhaust the connection pool while their adapters load
    (found in a benchmark: 32 first requests, 15 pooled connections, 500s after 30 s)."""
    users = []
    for index in range(LOAD_CONCURRENCY + 2):
        user = await create_user(client, f"new{index}")
        adapter_id = await install_adapter(state, user["id"], random_adapter(nf4_engine, index))
        users.append((user["id"], adapter_id))
    store = GatedStore(state.adapter_store)
    service = TranscriptionService(
        nf4_engine,
        state.scheduler,
        state.sessions,
        ActiveAdapters(store, nf4_engine),
        Metrics(),
        max_audio_seconds=60,
        retry_after_s=1,
    )
    wav = to_bytes(speech_16k("Good morning.", speed=140), 16_000)
    requests = [
        asyncio.create_task(
            service.transcribe(
                Principal(Role.USER, user_id), TranscriptionRequest(wav, service.model_id)
            )
        )
        for user_id, _ in users
    ]
    for _ in range(LOAD_CONCURRENCY):  # two loads read, the others queue behind them
        await store.arrived.get()
    await asyncio.sleep(0.1)
    assert state.db_engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    store.gate.set()
    outcomes = await asyncio.gather(*requests)
    assert [outcome.adapter_id for outcome in outcomes] == [adapter for _, adapter in users]
