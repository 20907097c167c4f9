"""GET /v1/auth/check answers for the key alone (a proxy's `auth_request` asks it); a database
out of reach is a 503 with `Retry-After`, never a 500."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.engine.whisper import WhisperEngine
from app.main import create_app
from tests.conftest import ADMIN, POSTGRES_ADMIN_URL, bearer, create_user, make_settings
from tests.support.api import assert_openai_error
from tests.support.audio import speech_16k, to_bytes


async def test_a_valid_key_passes_and_nothing_else_does(client: httpx.AsyncClient) -> None:
    alice = await create_user(client)
    for key in (alice["api_key"], ADMIN["Authorization"].removeprefix("Bearer ")):
        passed = await client.get("/v1/auth/check", headers=bearer(key))
        assert (passed.status_code, passed.content) == (204, b"")
    spaced = await client.get("/v1/auth/check", headers={"Authorization": f"bEaReR  {key}  "})
    assert spaced.status_code == 204
    assert_openai_error(await client.get("/v1/auth/check"), 401)
    wrong = await client.get("/v1/auth/check", headers=bearer(alice["api_key"] + "x"))
    assert assert_openai_error(wrong, 401)["code"] == "invalid_api_key"


async def test_an_offered_request_id_is_kept_and_a_malformed_one_replaced(
    client: httpx.AsyncClient,
) -> None:
    kept = await client.get("/healthz", headers={"X-Request-Id": "proxy-0123456789abcdef"})
    assert kept.headers["x-request-id"] == "proxy-0123456789abcdef"
    for malformed in ("short", "has space in it", "x" * 65):
        replaced = await client.get("/healthz", headers={"X-Request-Id": malformed})
        assert replaced.headers["x-request-id"] != malformed


@pytest.fixture
async def postgres_app(
    postgres_url: str, tmp_path: Path, tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        tmp_path / "data",
        database_url=postgres_url,
        model={"path": tiny_en_dir},
        enrolment={"worker": False},
    )
    application = create_app(settings, recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        yield application


def _drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.postgres
async def test_a_database_out_of_reach_answers_503_with_retry_after(
    postgres_app: FastAPI, postgres_url: str
) -> None:
    transport = httpx.ASGITransport(app=postgres_app)
    wav = to_bytes(speech_16k("Hello there.", voice="en-us", speed=120), 16_000)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as client:
        alice = await create_user(client)
        as_alice = bearer(alice["api_key"])
        assert (await client.get("/v1/auth/check", headers=as_alice)).status_code == 204
        # Every connection is terminated and none can be made again: as a stopped server.
        _drop_database(postgres_url)
        refused = [
            await client.get("/v1/auth/check", headers=as_alice),
            await client.get(f"/v1/users/{alice['id']}", headers=ADMIN),
            await client.post(
                "/v1/audio/transcriptions",
                files={"file": ("a.wav", wav)},
                data={"model": "whisper-1"},
                headers=as_alice,
            ),
        ]
    for response in refused:
        error = assert_openai_error(response, 503)
        assert error["code"] == "database_unavailable"
        assert response.headers["retry-after"] == "2"
