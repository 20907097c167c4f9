"""Hostile safetensors headers (issue #15): refused as 400 `invalid_adapter` on import, never
served, and checked off the inference thread, so a hostile file delays nobody's transcription."""

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy import update

from adapters_store.base import sha256_hex
from app.db.models import Adapter
from app.db.session import transaction
from app.engine.whisper import WhisperEngine
from app.services.adapters import ActiveAdapters
from app.state import ServiceState
from tests.conftest import bearer, create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.api import assert_openai_error
from tests.support.hostile_tensor_files import NAMED, SIBLINGS

HANG_GUARD_S = 120
"""Only so that a request stuck behind the blocked inference thread fails the test instead of
hanging it: the outcome asserted never depends on how long anything takes."""


async def new_user(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    user = await create_user(client, "mallory")
    return user["id"], bearer(user["api_key"])


async def upload(
    client: httpx.AsyncClient, user_id: str, headers: dict[str, str], data: bytes
) -> httpx.Response:
    return await client.post(
        f"/v1/users/{user_id}/adapters",
        files={"file": ("adapter.safetensors", data, "application/octet-stream")},
        headers=headers,
    )


def assert_refused(response: httpx.Response, reason: str) -> None:
    error = assert_openai_error(response, 400)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "file",
        "invalid_adapter",
    )
    assert "not a safetensors file" in str(error["message"])
    assert reason in str(error["message"])


@pytest.fixture
async def inference_thread_blocked(state: ServiceState) -> AsyncIterator[None]:
    """The scheduler's inference thread busy in a call until the test ends."""
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait()

    blocking = state.engine.scheduler.call(block)
    try:
        assert await asyncio.to_thread(started.wait, HANG_GUARD_S)
        yield
    finally:
        release.set()
        await asyncio.wrap_future(blocking)


@pytest.mark.parametrize("case", list(NAMED))
async def test_the_probes_headers_are_400_invalid_adapter(
    client: httpx.AsyncClient, case: str
) -> None:
    make, reason = NAMED[case]
    user_id, headers = await new_user(client)
    assert_refused(await upload(client, user_id, headers, make()), reason)
    listed = await client.get(f"/v1/users/{user_id}/adapters", headers=headers)
    assert listed.json()["data"] == []


async def test_every_sibling_header_is_400_invalid_adapter(client: httpx.AsyncClient) -> None:
    user_id, headers = await new_user(client)
    for case, (make, reason) in SIBLINGS.items():
        response = await upload(client, user_id, headers, make())
        assert response.status_code == 400, (case, response.text)
        assert_refused(response, reason)


@pytest.mark.usefixtures("inference_thread_blocked")
async def test_hostile_headers_are_refused_while_the_inference_thread_is_busy(
    client: httpx.AsyncClient,
) -> None:
    """The header is checked off the inference thread: with that thread blocked, the refusals
    still come back (before, each waited for the thread, and a 38 MiB header then held it for
    14-20 s)."""
    user_id, headers = await new_user(client)
    for make, reason in NAMED.values():
        response = await asyncio.wait_for(upload(client, user_id, headers, make()), HANG_GUARD_S)
        assert_refused(response, reason)


async def _stored_before_these_checks(
    state: ServiceState, engine: WhisperEngine, user_id: str, data: bytes
) -> str:
    """An active adapter whose stored file is `data`, recorded with its checksum: as an adapter
    imported before these checks existed would be."""
    adapter_id = await install_adapter(state, user_id, random_adapter(engine, 7))
    async with transaction(state.sessions) as session:
        row = await session.get(Adapter, adapter_id)
        assert row is not None
        await state.adapter_store.bind(session).put(row.blob_key, data)
        await session.execute(
            update(Adapter)
            .where(Adapter.id == adapter_id)
            .values(size_bytes=len(data), sha256=sha256_hex(data))
        )
    return adapter_id


async def _weights_for(adapters: ActiveAdapters, state: ServiceState, user_id: str) -> object:
    async with state.sessions() as session:
        return await adapters.resolve(session, user_id)


@pytest.mark.usefixtures("inference_thread_blocked")
@pytest.mark.parametrize("case", list(NAMED))
async def test_a_stored_hostile_file_is_never_served_and_refused_off_the_inference_thread(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine, case: str
) -> None:
    make: Callable[[], bytes] = NAMED[case][0]
    user_id, _ = await new_user(client)
    await _stored_before_these_checks(state, nf4_engine, user_id, make())
    adapters = ActiveAdapters(state.adapter_store, state.engine)

    resolved = await asyncio.wait_for(_weights_for(adapters, state, user_id), HANG_GUARD_S)

    assert resolved is None  # the base model serves the user
    assert adapters.cached_bytes == 0
