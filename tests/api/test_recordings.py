"""Recordings as a resource over HTTP, on SQLite and PostgreSQL: corrections and enrolment
uploads alike, validated as enrolment files, within per-user quotas; retraining on them."""

import io
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from app.config import Settings
from app.db.repositories.enrolments import EnrolmentRepository
from app.engine.whisper import WhisperEngine
from app.main import create_app
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user, make_settings
from tests.support.api import assert_openai_error
from tests.support.speech import SENTENCES, long_wav, wav_of

pytestmark = pytest.mark.postgres

MAX_RECORDINGS = 9


@pytest.fixture
def settings(database_url: str, tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url=database_url,
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "min_utterances": 4, "gate_folds": 2},
        quotas={"max_recordings": MAX_RECORDINGS},
    )


AppWith = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def app_with(
    database_url: str, tmp_path: Path, tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> AppWith:
    """A client of the service started with these settings (on the test's database)."""

    @asynccontextmanager
    async def start(**overrides: object) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(
            tmp_path / "data",
            database_url=database_url,
            model={"path": tiny_en_dir},
            enrolment={"worker": False},
            **overrides,
        )
        application = create_app(settings, recognizer=nf4_engine)
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield client

    return start


def recordings_path(user: dict[str, str]) -> str:
    return f"/v1/users/{user['id']}/recordings"


async def add(
    client: httpx.AsyncClient,
    user: dict[str, str],
    text: str,
    audio: bytes | None = None,
    **fields: str,
) -> httpx.Response:
    return await client.post(
        recordings_path(user),
        files={"file": ("clip.wav", wav_of(text) if audio is None else audio)},
        data={"transcript": text, **fields},
        headers=bearer(user["api_key"]),
    )


async def enrol(
    client: httpx.AsyncClient, user: dict[str, str], texts: tuple[str, ...], **fields: str
) -> httpx.Response:
    files = [("files", (f"r{i}.wav", wav_of(text))) for i, text in enumerate(texts)]
    return await client.post(
        f"/v1/users/{user['id']}/enrolments",
        files=files,
        data={"transcripts": list(texts), **fields},
        headers=bearer(user["api_key"]),
    )


async def listed(client: httpx.AsyncClient, user: dict[str, str]) -> list[dict[str, object]]:
    response = await client.get(recordings_path(user), headers=bearer(user["api_key"]))
    assert response.status_code == 200, response.text
    data: list[dict[str, object]] = response.json()["data"]
    return data


async def test_a_correction_is_a_recording_with_its_audio(client: httpx.AsyncClient) -> None:
    alice = await create_user(client)
    added = await add(client, alice, SENTENCES[0])
    assert added.status_code == 201, added.text
    recording = added.json()
    assert recording["origin"] == "correction"
    assert recording["transcript"] == SENTENCES[0]
    assert recording["enrolment_id"] is None
    assert await listed(client, alice) == [recording]

    audio = await client.get(
        f"{recordings_path(alice)}/{recording['id']}/audio", headers=bearer(alice["api_key"])
    )
    assert audio.headers["content-type"] == "audio/flac"
    samples, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 16_000
    assert abs(len(samples) / rate - recording["duration_seconds"]) < 0.001

    deleted = await client.delete(
        f"{recordings_path(alice)}/{recording['id']}", headers=bearer(alice["api_key"])
    )
    assert deleted.status_code == 204
    assert await listed(client, alice) == []
    gone = await client.get(f"{recordings_path(alice)}/{recording['id']}/audio", headers=ADMIN)
    assert_openai_error(gone, 404)


async def test_enrolment_uploads_are_recordings_of_origin_enrolment(
    client: httpx.AsyncClient,
) -> None:
    alice = await create_user(client)
    job = (await enrol(client, alice, SENTENCES[:4])).json()
    recordings = await listed(client, alice)
    assert sorted(str(r["transcript"]) for r in recordings) == sorted(SENTENCES[:4])
    assert {(r["origin"], r["enrolment_id"]) for r in recordings} == {("enrolment", job["id"])}


async def test_recordings_are_checked_as_enrolment_files(client: httpx.AsyncClient) -> None:
    alice = await create_user(client)
    too_long = assert_openai_error(await add(client, alice, SENTENCES[0], long_wav(31.0)), 400)
    assert too_long["param"] == "file"
    assert "longer than" in str(too_long["message"])
    assert "30 seconds" in str(too_long["message"])
    undecodable = assert_openai_error(await add(client, alice, "x", b"not audio at all"), 400)
    assert (undecodable["param"], undecodable["code"]) == ("file", "invalid_audio")
    blank = await add(client, alice, "   ", wav_of(SENTENCES[0]))
    assert assert_openai_error(blank, 400)["param"] == "transcript"
    control = await add(client, alice, "bad\x1b[31m", wav_of(SENTENCES[0]))
    assert assert_openai_error(control, 400)["param"] == "transcript"
    assert await listed(client, alice) == []


async def test_only_the_owner_or_the_admin_reach_recordings(client: httpx.AsyncClient) -> None:
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    recording = (await add(client, alice, SENTENCES[1])).json()
    as_bob = bearer(bob["api_key"])
    path = f"{recordings_path(alice)}/{recording['id']}"
    assert_openai_error(await client.get(recordings_path(alice), headers=as_bob), 404)
    assert_openai_error(await client.get(f"{path}/audio", headers=as_bob), 404)
    assert_openai_error(await client.delete(path, headers=as_bob), 404)
    other = await client.post(
        recordings_path(alice),
        files={"file": ("a.wav", wav_of(SENTENCES[1]))},
        data={"transcript": "x"},
        headers=as_bob,
    )
    assert_openai_error(other, 404)
    # Bob's own id with Alice's recording id: no such recording of his.
    assert_openai_error(
        await client.get(f"{recordings_path(bob)}/{recording['id']}/audio", headers=as_bob), 404
    )
    assert (await client.get(f"{path}/audio", headers=ADMIN)).status_code == 200


async def test_the_recordings_count_quota(client: httpx.AsyncClient) -> None:
    alice = await create_user(client)
    job = await enrol(client, alice, SENTENCES[:4] + SENTENCES[:4])
    assert job.status_code == 202
    await client.delete(f"/v1/enrolments/{job.json()['id']}", headers=ADMIN)
    assert (await add(client, alice, SENTENCES[5])).status_code == 201
    over = assert_openai_error(await add(client, alice, SENTENCES[4]), 403)
    assert (over["type"], over["code"]) == ("insufficient_quota", "recording_count_quota_exceeded")
    assert f"quota of {MAX_RECORDINGS}" in str(over["message"])
    job_over = assert_openai_error(await enrol(client, alice, SENTENCES[:4]), 403)
    assert job_over["code"] == "recording_count_quota_exceeded"
    assert len(await listed(client, alice)) == MAX_RECORDINGS


async def test_the_recorded_seconds_quota(app_with: AppWith) -> None:
    async with app_with(quotas={"max_recording_seconds": 5.0}) as client:
        alice = await create_user(client)
        assert (await add(client, alice, SENTENCES[3])).status_code == 201  # ~2.5 s
        over = assert_openai_error(await add(client, alice, SENTENCES[1]), 403)
        assert over["code"] == "recording_seconds_quota_exceeded"
        assert "quota of 5 s" in str(over["message"])


async def test_retraining_on_stored_recordings_all_or_since(
    client: httpx.AsyncClient, state: ServiceState
) -> None:
    alice = await create_user(client)
    as_alice = bearer(alice["api_key"])
    first = (await enrol(client, alice, SENTENCES[:4])).json()
    await client.delete(f"/v1/enrolments/{first['id']}", headers=as_alice)
    corrections = [(await add(client, alice, text)).json() for text in SENTENCES[2:6]]
    enrolments = f"/v1/users/{alice['id']}/enrolments"

    everything = await client.post(enrolments, headers=as_alice)
    assert everything.status_code == 202, everything.text
    assert everything.json()["utterance_count"] == 8
    assert everything.json()["params"]["retrain"] is True
    await client.delete(f"/v1/enrolments/{everything.json()['id']}", headers=as_alice)

    since = corrections[0]["created_at"]
    recent = await client.post(enrolments, data={"since": since}, headers=as_alice)
    assert recent.status_code == 202, recent.text
    async with state.sessions() as session:
        trained_on = await EnrolmentRepository(session).recordings(recent.json()["id"])
    assert [r.id for r in trained_on] == [c["id"] for c in corrections]

    jobs = (await client.get(enrolments, headers=as_alice)).json()["data"]
    assert [j["id"] for j in jobs] == [recent.json()["id"], everything.json()["id"], first["id"]]


async def test_a_retraining_needs_enough_stored_recordings(client: httpx.AsyncClient) -> None:
    alice = await create_user(client)
    as_alice = bearer(alice["api_key"])
    await add(client, alice, SENTENCES[0])
    enrolments = f"/v1/users/{alice['id']}/enrolments"
    few = assert_openai_error(await client.post(enrolments, headers=as_alice), 400)
    assert few["code"] == "too_few_recordings"
    assert "the user has stored 1" in str(few["message"])
    with_files = await enrol(client, alice, SENTENCES[:4], since="2026-01-01T00:00:00Z")
    assert assert_openai_error(with_files, 400)["param"] == "since"
