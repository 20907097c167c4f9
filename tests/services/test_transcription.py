"""The transcription use case: what a request holds while it waits."""

import asyncio

import httpx
from sqlalchemy.pool import QueuePool

from app.engine.whisper import WhisperEngine
from app.metrics import Metrics
from app.services.adapters import LOAD_CONCURRENCY, ActiveAdapters
from app.services.auth import Principal, Role
from app.services.transcription import TranscriptionRequest, TranscriptionService
from app.state import ServiceState
from tests.conftest import create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.audio import speech_16k, to_bytes
from tests.support.stores import CountingStore


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
    gate = asyncio.Event()
    store = CountingStore(state.adapter_store, gate=gate)
    service = TranscriptionService(
        state.engine,
        state.sessions,
        ActiveAdapters(store, state.engine),
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
    pool = state.db_engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0

    gate.set()
    outcomes = await asyncio.gather(*requests)
    assert [outcome.adapter_id for outcome in outcomes] == [adapter for _, adapter in users]
