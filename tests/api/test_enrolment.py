"""Enrolment over HTTP: validation, job lifecycle, and the trained adapter in use."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.config import Settings
from app.db.models import AdapterBlob, EnrolmentJob, Recording
from app.engine.whisper import WhisperEngine
from app.main import create_app
from app.services.active_bank import NO_ACTIVE_BANK
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user, make_settings
from tests.support.api import assert_openai_error
from tests.support.audio import silence, speech_16k, to_bytes
from tests.support.enrolments import wait_for_job

# A German voice reading English: tiny.en gets it badly wrong, so adaptation has work to do.
VOICE = {"voice": "de", "speed": 150}
TRAIN_SENTENCES = (
    "Please open the window in the kitchen.",
    "The weather will be warm and sunny tomorrow.",
    "My brother works at the hospital downtown.",
    "We need more milk, bread and butter.",
    "Turn left after the old church on the corner.",
    "The meeting starts at nine in the morning.",
)
HELD_OUT = "Please open the kitchen window tomorrow morning."


@pytest.fixture(scope="module")
def recordings() -> list[tuple[bytes, str]]:
    return [(to_bytes(speech_16k(text, **VOICE), 16_000), text) for text in TRAIN_SENTENCES]


def enrolment_form(
    recordings: list[tuple[bytes, str]], **fields: str
) -> tuple[list[tuple[str, tuple[str, bytes]]], dict[str, object]]:
    files = [("files", (f"r{index}.wav", wav)) for index, (wav, _) in enumerate(recordings)]
    data: dict[str, object] = {"transcripts": [text for _, text in recordings], **fields}
    return files, data


async def enrol(
    client: httpx.AsyncClient,
    user: dict[str, str],
    recordings: list[tuple[bytes, str]],
    **fields: str,
) -> httpx.Response:
    files, data = enrolment_form(recordings, **fields)
    return await client.post(
        f"/v1/users/{user['id']}/enrolments",
        files=files,
        data=data,
        headers=bearer(user["api_key"]),
    )


@pytest.fixture
def enrolment_settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={
            "worker": True,
            "min_utterances": 4,
            "gate_folds": 2,
            "poll_interval_s": 0.2,
            "heartbeat_interval_s": 0.5,
            "training_threads": 2,
        },
    )


@pytest.fixture
async def live_app(
    enrolment_settings: Settings, nf4_engine: WhisperEngine
) -> AsyncIterator[FastAPI]:
    application = create_app(enrolment_settings, recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def live_client(live_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=live_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as http:
        yield http


@pytest.mark.slow
async def test_enrol_then_transcribe_personalised(
    live_client: httpx.AsyncClient, recordings: list[tuple[bytes, str]]
) -> None:
    client = live_client
    alice = await create_user(client, "alice")
    as_alice = bearer(alice["api_key"])

    response = await enrol(client, alice, recordings, epochs="3")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["utterance_count"] == len(recordings)

    _, job = await wait_for_job(client, job["id"], as_alice)
    assert job["status"] == "succeeded", job
    metrics = job["metrics"]
    assert isinstance(metrics, dict)
    assert {"wer_before", "wer_after", "train_seconds"} <= set(metrics)
    adapter_id = job["adapter_id"]
    assert isinstance(adapter_id, str)
    assert job["activation_reason"]

    adapters = (await client.get(f"/v1/users/{alice['id']}/adapters", headers=as_alice)).json()
    assert [a["id"] for a in adapters["data"]] == [adapter_id]
    listed = adapters["data"][0]
    assert listed["active"] is job["activated"]
    assert listed["parameter_count"] < 0.02 * 37_760_640
    if not job["activated"]:
        activated = await client.post(
            f"/v1/users/{alice['id']}/adapters/{adapter_id}/activate", headers=as_alice
        )
        assert activated.status_code == 200

    held_out = to_bytes(speech_16k(HELD_OUT, **VOICE), 16_000)
    form = {"model": "whisper-tiny.en"}
    personal = await client.post(
        "/v1/audio/transcriptions", files={"file": ("h.wav", held_out)}, data=form, headers=as_alice
    )
    assert personal.headers["x-adapter-id"] == adapter_id
    base = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("h.wav", held_out)},
        data={**form, "personalise": "false"},
        headers=as_alice,
    )
    assert base.headers["x-adapter-id"] == "none"

    deleted = await client.delete(
        f"/v1/users/{alice['id']}/adapters/{adapter_id}", headers=as_alice
    )
    assert deleted.status_code == 204
    after = await client.post(
        "/v1/audio/transcriptions", files={"file": ("h.wav", held_out)}, data=form, headers=as_alice
    )
    assert after.headers["x-adapter-id"] == "none"
    assert after.json() == base.json()

    finished = await client.delete(f"/v1/enrolments/{job['id']}", headers=as_alice)
    assert assert_openai_error(finished, 409)["code"] == "job_finished"


async def test_count_mismatch_and_empty_transcript(
    client: httpx.AsyncClient, recordings: list[tuple[bytes, str]]
) -> None:
    alice = await create_user(client)
    files, data = enrolment_form(recordings)
    data["transcripts"] = [text for _, text in recordings][:-1]
    response = await client.post(
        f"/v1/users/{alice['id']}/enrolments", files=files, data=data, headers=ADMIN
    )
    assert assert_openai_error(response, 400)["param"] == "transcripts"

    blank = [(wav, text if index != 2 else "   ") for index, (wav, text) in enumerate(recordings)]
    response = await enrol(client, alice, blank)
    assert assert_openai_error(response, 400)["param"] == "transcripts[2]"

    escaped = [
        (wav, text if index != 1 else f"\x1b[2J{text}")
        for index, (wav, text) in enumerate(recordings)
    ]
    response = await enrol(client, alice, escaped)
    error = assert_openai_error(response, 400)
    assert error["param"] == "transcripts[1]"
    assert "U+001B" in str(error["message"])

    response = await enrol(client, alice, recordings, method="dora")
    error = assert_openai_error(response, 400)
    assert error["param"] == "method"
    assert "supported: lora, saml, auto" in str(error["message"])


async def test_saml_without_an_expert_bank_is_refused_naming_the_remedy(
    client: httpx.AsyncClient, app: FastAPI, recordings: list[tuple[bytes, str]]
) -> None:
    alice = await create_user(client)
    response = await enrol(client, alice, recordings, method="saml")
    error = assert_openai_error(response, 400)
    assert (error["param"], error["code"]) == ("method", "no_active_expert_bank")
    assert NO_ACTIVE_BANK in str(error["message"])
    assert "pqm experts build" in str(error["message"])
    state: ServiceState = app.state.pqm
    async with state.sessions() as session:
        for table in (EnrolmentJob, Recording):
            assert await session.scalar(select(func.count()).select_from(table)) == 0


@pytest.mark.slow
async def test_the_default_auto_without_an_expert_bank_trains_lora_alone(
    live_client: httpx.AsyncClient, recordings: list[tuple[bytes, str]]
) -> None:
    alice = await create_user(live_client, "alice")
    as_alice = bearer(alice["api_key"])
    few = recordings[:4]  # the fewest an enrolment takes here: the job stays small
    response = await enrol(live_client, alice, few, epochs="1")  # no method: `auto`
    assert response.status_code == 202, response.text
    assert response.json()["method"] == "auto"

    _, job = await wait_for_job(live_client, str(response.json()["id"]), as_alice)
    assert job["status"] == "succeeded", job
    metrics = job["metrics"]
    assert isinstance(metrics, dict)
    choice = metrics["method_choice"]
    assert (choice["winner"], list(choice["gates"])) == ("lora", ["lora"])
    assert choice["gates"]["lora"] == metrics["gate"]
    listed = await live_client.get(f"/v1/users/{alice['id']}/adapters", headers=as_alice)
    adapters = listed.json()["data"]
    assert [(a["id"], a["method"]) for a in adapters] == [(job["adapter_id"], "lora")]


async def test_one_undecodable_file_rejects_everything(
    client: httpx.AsyncClient, app: FastAPI, recordings: list[tuple[bytes, str]]
) -> None:
    alice = await create_user(client)
    broken = list(recordings)
    broken[3] = (b"this is not audio" * 100, broken[3][1])
    response = await enrol(client, alice, broken)
    error = assert_openai_error(response, 400)
    assert error["param"] == "files[3]"
    assert "files[3]" in str(error["message"])
    state: ServiceState = app.state.pqm
    async with state.sessions() as session:
        for table in (EnrolmentJob, Recording, AdapterBlob):
            assert await session.scalar(select(func.count()).select_from(table)) == 0


async def test_too_little_audio(
    client: httpx.AsyncClient, recordings: list[tuple[bytes, str]]
) -> None:
    alice = await create_user(client)
    response = await enrol(client, alice, recordings[:3])
    assert assert_openai_error(response, 400)["code"] == "too_few_recordings"
    short = list(recordings)
    short[1] = (to_bytes(speech_16k("Hi")[:1600], 16_000), "hi")
    response = await enrol(client, alice, short)
    assert assert_openai_error(response, 400)["param"] == "files[1]"
    too_long = list(recordings)
    too_long[0] = (to_bytes(np.concatenate([silence(31.0)]) + 0.01, 16_000), "long")
    response = await enrol(client, alice, too_long)
    assert assert_openai_error(response, 400)["param"] == "files[0]"


@pytest.fixture
def small_limits_settings(tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "min_utterances": 4, "gate_folds": 2},
    )


async def test_enrolment_rules_for_owners_and_jobs(
    small_limits_settings: Settings,
    nf4_engine: WhisperEngine,
    recordings: list[tuple[bytes, str]],
) -> None:
    application = create_app(small_limits_settings, recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            alice = await create_user(client, "alice")
            bob = await create_user(client, "bob")
            as_bob = bearer(bob["api_key"])
            files, data = enrolment_form(recordings)
            other = await client.post(
                f"/v1/users/{alice['id']}/enrolments", files=files, data=data, headers=as_bob
            )
            assert_openai_error(other, 404)

            first = await enrol(client, alice, recordings)
            assert first.status_code == 202
            job = first.json()
            second = await enrol(client, alice, recordings)
            assert assert_openai_error(second, 409)["code"] == "enrolment_running"

            assert_openai_error(
                await client.get(f"/v1/enrolments/{job['id']}", headers=as_bob), 404
            )
            assert_openai_error(
                await client.delete(f"/v1/enrolments/{job['id']}", headers=as_bob), 404
            )
            cancelled = await client.delete(
                f"/v1/enrolments/{job['id']}", headers=bearer(alice["api_key"])
            )
            assert cancelled.status_code == 200
            assert cancelled.json()["status"] == "cancelled"
            again = await client.delete(f"/v1/enrolments/{job['id']}", headers=ADMIN)
            assert assert_openai_error(again, 409)["code"] == "job_finished"

            # Recordings are kept with the job, and erased with the user.
            state: ServiceState = application.state.pqm
            async with state.sessions() as session:
                keys = list(await session.scalars(select(Recording.blob_key)))
            assert len(keys) == len(recordings)
            assert all([await state.adapter_store.exists(key) for key in keys])
            deleted = await client.delete(f"/v1/users/{alice['id']}", headers=ADMIN)
            assert deleted.status_code == 204
            assert not any([await state.adapter_store.exists(key) for key in keys])
            async with state.sessions() as session:
                assert await session.scalar(select(func.count()).select_from(Recording)) == 0


async def test_prompts(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/prompts", params={"n": 60, "seed": 7}, headers=ADMIN)
    prompts = response.json()["data"]
    assert len(prompts) == len(set(prompts)) == 60
    again = await client.get("/v1/prompts", params={"n": 60, "seed": 7}, headers=ADMIN)
    assert again.json()["data"] == prompts
    assert_openai_error(await client.get("/v1/prompts", params={"n": 0}, headers=ADMIN), 422)
    assert_openai_error(await client.get("/v1/prompts"), 401)
