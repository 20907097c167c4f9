"""The host tier of the adapter cache: bounded in bytes, one load for concurrent first requests,
every tier dropped when the user's active adapter changes (whoever changed it)."""

import asyncio

import httpx
import pytest
from sqlalchemy import update

from app.db.models import Adapter
from app.db.session import transaction
from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.whisper import WhisperEngine
from app.metrics import Metrics
from app.services.adapters import TENSOR_OVERHEAD_BYTES, ActiveAdapters
from app.state import ServiceState
from tests.conftest import create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.stores import CountingStore


def _size(weights: AdapterWeights) -> int:
    """What the host tier counts for an adapter: its data and its tensors' objects."""
    data = sum(t.numel() * t.element_size() for t in weights.tensors.values())
    return data + TENSOR_OVERHEAD_BYTES * len(weights.tensors)


async def _users_with_adapters(
    client: httpx.AsyncClient, state: ServiceState, engine: WhisperEngine, count: int
) -> list[tuple[str, str]]:
    users = []
    for index in range(count):
        user = await create_user(client, f"user{index}")
        adapter_id = await install_adapter(state, user["id"], random_adapter(engine, 100 + index))
        users.append((user["id"], adapter_id))
    return users


async def _resolve(adapters: ActiveAdapters, state: ServiceState, user_id: str) -> str | None:
    async with state.sessions() as session:
        resolved = await adapters.resolve(session, user_id)
    return None if resolved is None else resolved.id


async def test_the_host_tier_stays_within_its_byte_budget(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    users = await _users_with_adapters(client, state, nf4_engine, 5)
    one = _size(random_adapter(nf4_engine, 0))
    store = CountingStore(state.adapter_store)
    metrics = Metrics()
    adapters = ActiveAdapters(store, state.engine, capacity_bytes=int(4.5 * one), metrics=metrics)

    for user_id, adapter_id in users:
        assert await _resolve(adapters, state, user_id) == adapter_id
        assert adapters.cached_bytes <= 4.5 * one
    # A load first makes room for the file and its parsed copy (2 adapters' worth), so three
    # adapters stay cached, not four.
    assert adapters.cached_bytes == 3 * one
    assert len(store.reads) == 5
    await _resolve(adapters, state, users[-1][0])  # still cached
    assert len(store.reads) == 5
    await _resolve(adapters, state, users[0][0])  # evicted long ago: loaded again
    assert len(store.reads) == 6
    text = metrics.render().decode()
    assert 'pqm_adapter_cache_events_total{event="eviction",tier="host"} 3.0' in text
    assert 'pqm_adapter_cache_events_total{event="hit",tier="host"} 1.0' in text
    assert "pqm_adapter_load_seconds_count 6.0" in text


async def test_concurrent_first_requests_share_one_load(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    [(user_id, adapter_id)] = await _users_with_adapters(client, state, nf4_engine, 1)
    store = CountingStore(state.adapter_store, delay_s=0.2)
    adapters = ActiveAdapters(store, state.engine)

    resolved = await asyncio.gather(*(_resolve(adapters, state, user_id) for _ in range(8)))

    assert resolved == [adapter_id] * 8
    assert len(store.reads) == 1


@pytest.mark.parametrize("change", ["deleted", "replaced"])
async def test_a_change_made_elsewhere_drops_the_old_adapter_from_every_tier(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine, change: str
) -> None:
    [(user_id, adapter_id)] = await _users_with_adapters(client, state, nf4_engine, 1)
    adapters = ActiveAdapters(state.adapter_store, state.engine)
    assert await _resolve(adapters, state, user_id) == adapter_id
    cached = adapters.cached_bytes
    assert cached > 0

    # Another process (a worker, a second replica) changes the database directly.
    new_id = None
    async with transaction(state.sessions) as session:
        await session.execute(update(Adapter).where(Adapter.id == adapter_id).values(active=False))
    if change == "replaced":
        new_id = await install_adapter(state, user_id, random_adapter(nf4_engine, 999))

    assert await _resolve(adapters, state, user_id) == new_id
    assert adapters.cached_bytes == (cached if change == "replaced" else 0)
