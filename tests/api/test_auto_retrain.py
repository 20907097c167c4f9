"""The auto-retrain policy over HTTP, on SQLite and PostgreSQL: after enough recordings added on
their own, the service queues a retraining by itself, one per user, a few service-wide."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.config import EnrolmentSettings, Settings
from app.db import job_queue
from app.db.enrolment_status import EnrolmentStatus
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.session import transaction
from app.engine.whisper import WhisperEngine
from app.main import create_app
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user, make_settings
from tests.support.speech import SENTENCES, wav_of

pytestmark = pytest.mark.postgres

AFTER = 3


@pytest.fixture
async def auto_app(
    database_url: str, tmp_path: Path, tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> AsyncIterator[FastAPI]:
    """No worker: the tests move jobs through their states themselves."""
    settings = make_settings(
        tmp_path / "data",
        database_url=database_url,
        model={"path": tiny_en_dir},
        enrolment={
            "worker": False,
            "min_utterances": 2,
            "gate_folds": 2,
            "auto_retrain_after": AFTER,
        },
    )
    application = create_app(settings, recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def auto_client(auto_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=auto_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as http:
        yield http


@pytest.fixture
def auto_state(auto_app: FastAPI) -> ServiceState:
    state: ServiceState = auto_app.state.pqm
    return state


async def add_recordings(client: httpx.AsyncClient, user: dict[str, str], count: int) -> None:
    for index in range(count):
        text = SENTENCES[index % len(SENTENCES)]
        response = await client.post(
            f"/v1/users/{user['id']}/recordings",
            files={"file": ("clip.wav", wav_of(text))},
            data={"transcript": text},
            headers=bearer(user["api_key"]),
        )
        assert response.status_code == 201, response.text


async def jobs_of(client: httpx.AsyncClient, user: dict[str, str]) -> list[dict[str, object]]:
    """Newest first."""
    response = await client.get(f"/v1/users/{user['id']}/enrolments", headers=ADMIN)
    assert response.status_code == 200, response.text
    jobs: list[dict[str, object]] = response.json()["data"]
    return jobs


async def start_job(state: ServiceState, job_id: str) -> None:
    """Claims the job as a worker does. With PostgreSQL, its procrastinate job stops waiting too,
    as a procrastinate worker's fetch would make it (freeing the user's queueing lock)."""
    async with transaction(state.sessions) as session:
        claimed = await EnrolmentRepository(session).claim_next("test-worker")
        assert claimed is not None
        await job_queue.cancel_queued(session, claimed)
    assert claimed.id == job_id


async def finish_job(state: ServiceState, job_id: str) -> None:
    async with transaction(state.sessions) as session:
        jobs = EnrolmentRepository(session)
        job = await jobs.get(job_id)
        assert job is not None
        assert await jobs.finish(job, EnrolmentStatus.SUCCEEDED)


async def test_crossing_the_threshold_queues_exactly_one_retraining(
    auto_client: httpx.AsyncClient,
) -> None:
    alice = await create_user(auto_client)
    await add_recordings(auto_client, alice, AFTER - 1)
    assert await jobs_of(auto_client, alice) == []

    await add_recordings(auto_client, alice, 1)
    [job] = await jobs_of(auto_client, alice)
    assert (job["status"], job["automatic"], job["utterance_count"]) == ("queued", True, AFTER)
    assert job["params"] == {
        "rank": None,
        "epochs": None,
        "seed": 0,
        "retrain": True,
        "since": None,
    }

    await add_recordings(auto_client, alice, 1)
    assert [j["id"] for j in await jobs_of(auto_client, alice)] == [job["id"]]


async def test_a_second_crossing_while_it_runs_queues_nothing(
    auto_client: httpx.AsyncClient, auto_state: ServiceState
) -> None:
    alice = await create_user(auto_client)
    await add_recordings(auto_client, alice, AFTER)
    [first] = await jobs_of(auto_client, alice)
    await start_job(auto_state, str(first["id"]))

    await add_recordings(auto_client, alice, AFTER)
    [running] = await jobs_of(auto_client, alice)
    assert (running["id"], running["status"]) == (first["id"], "running")

    # What was added while it ran is new to the next one: it comes with the next recording.
    await finish_job(auto_state, str(first["id"]))
    await add_recordings(auto_client, alice, 1)
    second, _ = await jobs_of(auto_client, alice)
    assert (second["status"], second["automatic"]) == ("queued", True)
    assert second["utterance_count"] == 2 * AFTER + 1


async def test_the_cap_on_automatic_jobs_holds_across_users(
    auto_client: httpx.AsyncClient, auto_state: ServiceState
) -> None:
    alice, bob = await create_user(auto_client, "alice"), await create_user(auto_client, "bob")
    await add_recordings(auto_client, alice, AFTER)
    [alices] = await jobs_of(auto_client, alice)
    await add_recordings(auto_client, bob, AFTER)
    assert await jobs_of(auto_client, bob) == []
    await start_job(auto_state, str(alices["id"]))
    await add_recordings(auto_client, bob, 1)
    assert await jobs_of(auto_client, bob) == []

    await finish_job(auto_state, str(alices["id"]))
    await add_recordings(auto_client, bob, 1)
    [bobs] = await jobs_of(auto_client, bob)
    assert (bobs["status"], bobs["automatic"], bobs["utterance_count"]) == (
        "queued",
        True,
        AFTER + 2,
    )


async def test_an_enrolment_upload_does_not_count_towards_the_next(
    auto_client: httpx.AsyncClient,
) -> None:
    alice = await create_user(auto_client)
    files = [("files", (f"r{i}.wav", wav_of(text))) for i, text in enumerate(SENTENCES[:4])]
    uploaded = await auto_client.post(
        f"/v1/users/{alice['id']}/enrolments",
        files=files,
        data={"transcripts": list(SENTENCES[:4])},
        headers=bearer(alice["api_key"]),
    )
    assert uploaded.status_code == 202, uploaded.text
    assert uploaded.json()["automatic"] is False
    await auto_client.delete(f"/v1/enrolments/{uploaded.json()['id']}", headers=ADMIN)

    await add_recordings(auto_client, alice, AFTER - 1)
    assert len(await jobs_of(auto_client, alice)) == 1
    await add_recordings(auto_client, alice, 1)
    automatic, _ = await jobs_of(auto_client, alice)
    assert automatic["automatic"] is True
    assert automatic["utterance_count"] == 4 + AFTER


def test_the_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        EnrolmentSettings().auto_retrain_after,
        EnrolmentSettings().auto_retrain_max_concurrent,
    ) == (0, 1)
    monkeypatch.setenv("PQM_ENROLMENT__AUTO_RETRAIN_AFTER", "20")
    monkeypatch.setenv("PQM_ENROLMENT__AUTO_RETRAIN_MAX_CONCURRENT", "2")
    enrolment = Settings().enrolment
    assert (enrolment.auto_retrain_after, enrolment.auto_retrain_max_concurrent) == (20, 2)


async def test_off_by_default(client: httpx.AsyncClient, settings: Settings) -> None:
    alice = await create_user(client)
    await add_recordings(client, alice, settings.enrolment.min_utterances + 2)
    assert await jobs_of(client, alice) == []
