"""Retraining from stored recordings, end to end: recordings uploaded one at a time, a job with
no files, the real in-process worker training it, the gate's evidence on the finished job."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.db.repositories.enrolments import EnrolmentRepository
from app.engine.whisper import WhisperEngine
from app.main import create_app
from app.state import ServiceState
from tests.conftest import bearer, create_user, make_settings
from tests.support.enrolments import wait_for_job
from tests.support.speech import SENTENCES, wav_of

FINISHED = ("succeeded", "failed", "cancelled")
STATUS_ORDER = ("queued", "running", *FINISHED)


@pytest.fixture
async def worker_app(
    tmp_path: Path, tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={
            "worker": True,
            "min_utterances": 2,  # the smallest allowed: a short training
            "gate_folds": 2,
            "poll_interval_s": 0.2,
            "heartbeat_interval_s": 0.5,
            "training_threads": 2,
        },
    )
    application = create_app(settings, recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def worker_client(worker_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=worker_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as http:
        yield http


async def add_recording(
    client: httpx.AsyncClient, user: dict[str, str], text: str, origin: str
) -> dict[str, object]:
    response = await client.post(
        f"/v1/users/{user['id']}/recordings",
        files={"file": ("clip.wav", wav_of(text))},
        data={"transcript": text, "origin": origin},
        headers=bearer(user["api_key"]),
    )
    assert response.status_code == 201, response.text
    recording: dict[str, object] = response.json()
    return recording


@pytest.mark.slow
async def test_a_retraining_since_a_time_trains_through_the_worker_on_the_newer_recordings(
    worker_app: FastAPI, worker_client: httpx.AsyncClient
) -> None:
    client = worker_client
    alice = await create_user(client)
    as_alice = bearer(alice["api_key"])
    for text in SENTENCES[:2]:
        await add_recording(client, alice, text, "enrolment")
    newer = [await add_recording(client, alice, text, "correction") for text in SENTENCES[2:4]]

    response = await client.post(
        f"/v1/users/{alice['id']}/enrolments",
        data={"since": str(newer[0]["created_at"]), "epochs": "1", "rank": "1"},
        headers=as_alice,
    )
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] == "queued"
    assert queued["utterance_count"] == len(newer)
    state: ServiceState = worker_app.state.pqm
    async with state.sessions() as session:
        trained_on = await EnrolmentRepository(session).recordings(queued["id"])
    assert [r.id for r in trained_on] == [r["id"] for r in newer]

    seen, job = await wait_for_job(client, queued["id"], as_alice)
    assert job["status"] == "succeeded", job
    # Polling may miss the short `running` phase; the statuses it saw keep their order, and a
    # job that started and finished was claimed (running) on the way.
    assert seen == sorted(seen, key=STATUS_ORDER.index)
    assert job["started_at"] is not None
    assert job["finished_at"] is not None
    assert job["progress"] == 1.0

    metrics = job["metrics"]
    assert isinstance(metrics, dict)
    gate = metrics["gate"]
    assert gate["utterances"] == job["utterance_count"] == len(newer)
    assert gate["folds"] == 2
    assert len(gate["recordings"]) == len(newer)
    assert all(words > 0 and served >= 0 and new >= 0 for words, served, new in gate["recordings"])
    assert sum(words for words, _, _ in gate["recordings"]) == gate["words"]
    assert sum(served for _, served, _ in gate["recordings"]) == gate["errors_served"]
    assert sum(new for _, _, new in gate["recordings"]) == gate["errors_new"]
    assert job["activated"] is gate["activate"]
    assert job["activation_reason"] == gate["reason"]

    adapters = (await client.get(f"/v1/users/{alice['id']}/adapters", headers=as_alice)).json()
    [adapter] = adapters["data"]
    assert (adapter["id"], adapter["enrolment_id"]) == (job["adapter_id"], job["id"])
    assert adapter["active"] is job["activated"]
    assert adapter["rank"] == 1
