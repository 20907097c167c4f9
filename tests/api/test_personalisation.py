"""Each user is served with their own active adapter, never anyone else's."""

import asyncio
import logging

import httpx
import numpy as np
import pytest
from sqlalchemy import update

from app.db.models import Adapter
from app.db.session import transaction
from app.engine.whisper import WhisperEngine
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.api import assert_openai_error
from tests.support.audio import speech_16k, to_bytes

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back tomorrow morning.",
    "We should meet at the station at seven.",
)


@pytest.fixture(scope="module")
def wavs() -> list[bytes]:
    return [to_bytes(speech_16k(text, speed=130), 16_000) for text in SENTENCES]


async def transcribe(
    client: httpx.AsyncClient, wav: bytes, headers: dict[str, str], **fields: str
) -> httpx.Response:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": "whisper-1", **fields},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response


@pytest.fixture
async def two_users(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> dict[str, dict[str, str]]:
    users = {}
    for name, seed in (("alice", 1), ("bob", 2)):
        user = await create_user(client, name)
        user["adapter_id"] = await install_adapter(
            state, user["id"], random_adapter(nf4_engine, seed)
        )
        users[name] = user
    return users


async def test_users_get_their_own_adapter(
    client: httpx.AsyncClient, two_users: dict[str, dict[str, str]], wavs: list[bytes]
) -> None:
    alice, bob = two_users["alice"], two_users["bob"]
    base = await transcribe(client, wavs[0], ADMIN)
    assert base.headers["x-adapter-id"] == "none"
    as_alice = await transcribe(client, wavs[0], bearer(alice["api_key"]))
    as_bob = await transcribe(client, wavs[0], bearer(bob["api_key"]))
    assert as_alice.headers["x-adapter-id"] == alice["adapter_id"]
    assert as_bob.headers["x-adapter-id"] == bob["adapter_id"]
    texts = {as_alice.json()["text"], as_bob.json()["text"], base.json()["text"]}
    assert len(texts) == 3, "the test adapters must change the transcript, each differently"

    forced_base = await transcribe(client, wavs[0], bearer(alice["api_key"]), personalise="false")
    assert forced_base.headers["x-adapter-id"] == "none"
    assert forced_base.json() == base.json()

    for_alice = await transcribe(client, wavs[0], ADMIN, user=alice["id"])
    assert for_alice.headers["x-adapter-id"] == alice["adapter_id"]
    assert for_alice.json() == as_alice.json()


async def test_naming_someone_else_is_404(
    client: httpx.AsyncClient, two_users: dict[str, dict[str, str]], wavs: list[bytes]
) -> None:
    alice, bob = two_users["alice"], two_users["bob"]
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wavs[0])},
        data={"model": "whisper-1", "user": bob["id"]},
        headers=bearer(alice["api_key"]),
    )
    assert_openai_error(response, 404)
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wavs[0])},
        data={"model": "whisper-1", "user": "nobody"},
        headers=ADMIN,
    )
    assert_openai_error(response, 404)


async def test_interleaved_concurrent_requests_match_sequential(
    client: httpx.AsyncClient, two_users: dict[str, dict[str, str]], wavs: list[bytes]
) -> None:
    callers = [two_users["alice"], two_users["bob"]]
    expected = {
        (caller["id"], index): (await transcribe(client, wav, bearer(caller["api_key"]))).json()
        for caller in callers
        for index, wav in enumerate(wavs)
    }
    jobs = [(caller, index) for _ in range(2) for index in range(len(wavs)) for caller in callers]
    responses = await asyncio.gather(
        *(transcribe(client, wavs[index], bearer(caller["api_key"])) for caller, index in jobs)
    )
    for (caller, index), response in zip(jobs, responses, strict=True):
        assert response.headers["x-adapter-id"] == caller["adapter_id"]
        assert response.json() == expected[(caller["id"], index)]


async def test_deleting_the_active_adapter_takes_effect_at_once(
    client: httpx.AsyncClient, two_users: dict[str, dict[str, str]], wavs: list[bytes]
) -> None:
    alice = two_users["alice"]
    as_alice = bearer(alice["api_key"])
    listed = (await client.get(f"/v1/users/{alice['id']}/adapters", headers=as_alice)).json()
    assert [a["id"] for a in listed["data"]] == [alice["adapter_id"]]
    assert listed["data"][0]["active"] is True
    deleted = await client.delete(
        f"/v1/users/{alice['id']}/adapters/{alice['adapter_id']}", headers=as_alice
    )
    assert deleted.status_code == 204
    after = await transcribe(client, wavs[0], as_alice)
    assert after.headers["x-adapter-id"] == "none"
    listed = (await client.get(f"/v1/users/{alice['id']}/adapters", headers=as_alice)).json()
    assert listed["data"] == []


async def test_deactivation_in_the_database_is_seen_on_the_next_request(
    client: httpx.AsyncClient,
    state: ServiceState,
    two_users: dict[str, dict[str, str]],
    wavs: list[bytes],
) -> None:
    """Another process (a worker, a second replica) changes the database; no cache hides it."""
    bob = two_users["bob"]
    as_bob = bearer(bob["api_key"])
    assert (await transcribe(client, wavs[1], as_bob)).headers["x-adapter-id"] == bob["adapter_id"]
    async with transaction(state.sessions) as session:
        await session.execute(update(Adapter).values(active=False))
    assert (await transcribe(client, wavs[1], as_bob)).headers["x-adapter-id"] == "none"


async def test_other_users_adapters_are_404(
    client: httpx.AsyncClient, two_users: dict[str, dict[str, str]]
) -> None:
    alice, bob = two_users["alice"], two_users["bob"]
    as_alice = bearer(alice["api_key"])
    path = f"/v1/users/{bob['id']}/adapters"
    assert_openai_error(await client.get(path, headers=as_alice), 404)
    assert_openai_error(await client.delete(f"{path}/{bob['adapter_id']}", headers=as_alice), 404)
    assert_openai_error(
        await client.post(f"{path}/{bob['adapter_id']}/activate", headers=as_alice), 404
    )
    # Bob's adapter id under Alice's own path is just as unknown.
    own = f"/v1/users/{alice['id']}/adapters/{bob['adapter_id']}"
    assert_openai_error(await client.delete(own, headers=as_alice), 404)


async def test_explicit_activation(
    client: httpx.AsyncClient,
    state: ServiceState,
    nf4_engine: WhisperEngine,
    wavs: list[bytes],
) -> None:
    carol = await create_user(client, "carol")
    first = await install_adapter(state, carol["id"], random_adapter(nf4_engine, 3))
    second = await install_adapter(state, carol["id"], random_adapter(nf4_engine, 4), active=False)
    as_carol = bearer(carol["api_key"])
    assert (await transcribe(client, wavs[2], as_carol)).headers["x-adapter-id"] == first
    response = await client.post(
        f"/v1/users/{carol['id']}/adapters/{second}/activate", headers=as_carol
    )
    assert response.status_code == 200
    assert response.json()["active"] is True
    assert (await transcribe(client, wavs[2], as_carol)).headers["x-adapter-id"] == second
    listed = (await client.get(f"/v1/users/{carol['id']}/adapters", headers=as_carol)).json()
    assert {a["id"]: a["active"] for a in listed["data"]} == {first: False, second: True}


@pytest.mark.parametrize("damage", ["corrupt-blob", "missing-blob", "other-base-model"])
async def test_broken_adapters_are_refused_and_the_base_model_serves(
    client: httpx.AsyncClient,
    state: ServiceState,
    nf4_engine: WhisperEngine,
    wavs: list[bytes],
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dave = await create_user(client, "dave")
    weights = random_adapter(nf4_engine, 5)
    if damage == "other-base-model":
        weights = type(weights)(
            tensors=weights.tensors,
            rank=weights.rank,
            alpha=weights.alpha,
            base_fingerprint="0" * 64,
        )
    adapter_id = await install_adapter(state, dave["id"], weights)
    async with state.sessions() as session:
        row = await session.get(Adapter, adapter_id)
        assert row is not None
        key = row.blob_key
    if damage == "corrupt-blob":
        data = bytearray(await state.adapter_store.get(key))
        data[-5] ^= 0xFF
        await state.adapter_store.put(key, bytes(data))
    elif damage == "missing-blob":
        await state.adapter_store.delete(key)
    with caplog.at_level(logging.ERROR):
        response = await transcribe(client, wavs[0], bearer(dave["api_key"]))
    assert response.headers["x-adapter-id"] == "none"
    base = await transcribe(client, wavs[0], ADMIN)
    assert response.json() == base.json()
    assert any("adapter refused" in record.getMessage() for record in caplog.records)
    assert np.isfinite(len(response.json()["text"]))
