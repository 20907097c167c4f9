"""`Idempotency-Key` on enrolment POSTs, on SQLite and PostgreSQL: a client's retry gets the
first request's job back and never starts a second; reusing a key for another request is a 409."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.db.models import EnrolmentJob, Recording
from app.engine.whisper import WhisperEngine
from app.main import create_app
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user, make_settings
from tests.support.api import assert_openai_error
from tests.support.speech import SENTENCES, wav_of

pytestmark = pytest.mark.postgres

RECORDINGS = [(wav_of(text), text) for text in SENTENCES[:4]]


@dataclass
class Service:
    state: ServiceState
    client: httpx.AsyncClient

    async def enrol(self, user: dict[str, str], key: str | None, **fields: str) -> httpx.Response:
        files = [("files", (f"r{i}.wav", wav)) for i, (wav, _) in enumerate(RECORDINGS)]
        data = {"transcripts": [text for _, text in RECORDINGS], **fields}
        headers = bearer(user["api_key"]) | ({"Idempotency-Key": key} if key else {})
        return await self.client.post(
            f"/v1/users/{user['id']}/enrolments", files=files, data=data, headers=headers
        )

    async def count(self, model: type[EnrolmentJob] | type[Recording]) -> int:
        async with self.state.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def settings(database_url: str, tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url=database_url,
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "min_utterances": 4, "gate_folds": 2},
    )


@pytest.fixture
async def service(settings: Settings, nf4_engine: WhisperEngine) -> AsyncIterator[Service]:
    application = create_app(settings, recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield Service(application.state.pqm, client)


async def test_a_retry_gets_the_first_job_back_even_after_it_ended(service: Service) -> None:
    alice = await create_user(service.client, "alice")

    first = await service.enrol(alice, "enrol-1")
    retry = await service.enrol(alice, "enrol-1")

    assert (first.status_code, retry.status_code) == (202, 202)
    assert retry.json()["id"] == first.json()["id"]
    assert await service.count(EnrolmentJob) == 1
    assert await service.count(Recording) == len(RECORDINGS)

    job_id = first.json()["id"]
    cancelled = await service.client.delete(f"/v1/enrolments/{job_id}", headers=ADMIN)
    assert cancelled.json()["status"] == "cancelled"
    late = await service.enrol(alice, "enrol-1")
    assert (late.status_code, late.json()["id"], late.json()["status"]) == (
        202,
        job_id,
        "cancelled",
    )
    fresh = await service.enrol(alice, "enrol-2")
    assert fresh.status_code == 202
    assert fresh.json()["id"] != job_id


async def test_a_key_reused_for_another_request_is_refused(service: Service) -> None:
    alice = await create_user(service.client, "alice")
    assert (await service.enrol(alice, "same-key")).status_code == 202

    other = await service.enrol(alice, "same-key", seed="7")

    assert assert_openai_error(other, 409)["code"] == "idempotency_key_reused"
    assert await service.count(EnrolmentJob) == 1


async def test_keys_belong_to_their_user(service: Service) -> None:
    alice = await create_user(service.client, "alice")
    bob = await create_user(service.client, "bob")

    mine = await service.enrol(alice, "shared-name")
    theirs = await service.enrol(bob, "shared-name")

    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]


async def test_simultaneous_retries_start_one_job(service: Service) -> None:
    alice = await create_user(service.client, "alice")

    replies = await asyncio.gather(*(service.enrol(alice, "burst") for _ in range(4)))

    assert {reply.status_code for reply in replies} <= {202, 409}
    assert await service.count(EnrolmentJob) == 1
    [job_id] = {reply.json()["id"] for reply in replies if reply.status_code == 202}
    assert (await service.enrol(alice, "burst")).json()["id"] == job_id


@pytest.mark.parametrize("key", ["", "x" * 256, "has space"])
async def test_a_malformed_key_is_a_422(service: Service, key: str) -> None:
    alice = await create_user(service.client, "alice")
    files = [("files", (f"r{i}.wav", wav)) for i, (wav, _) in enumerate(RECORDINGS)]
    data = {"transcripts": [text for _, text in RECORDINGS]}
    headers = bearer(alice["api_key"]) | {"Idempotency-Key": key}

    response = await service.client.post(
        f"/v1/users/{alice['id']}/enrolments", files=files, data=data, headers=headers
    )

    assert_openai_error(response, 422)
    assert await service.count(EnrolmentJob) == 0
