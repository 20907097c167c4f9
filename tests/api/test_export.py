"""GET /v1/users/{id}/export: the user's recordings with transcripts, adapters and metadata in
one zip, streamed a file at a time; a blob gone missing is named, never sent damaged."""

import hashlib
import io
import json
import zipfile

import httpx
import pytest

from app.engine.whisper import WhisperEngine
from app.services import export
from app.services.auth import Principal, Role
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user
from tests.support.adapters import install_adapter, random_adapter
from tests.support.api import assert_openai_error
from tests.support.speech import SENTENCES, wav_of


async def user_with_data(
    client: httpx.AsyncClient, state: ServiceState, engine: WhisperEngine
) -> tuple[dict[str, str], list[dict[str, object]], str]:
    alice = await create_user(client)
    files = [("files", (f"{i}.wav", wav_of(text))) for i, text in enumerate(SENTENCES[:4])]
    enrolled = await client.post(
        f"/v1/users/{alice['id']}/enrolments",
        files=files,
        data={"transcripts": SENTENCES[:4]},
        headers=ADMIN,
    )
    assert enrolled.status_code == 202
    await client.post(
        f"/v1/users/{alice['id']}/recordings",
        files={"file": ("c.wav", wav_of(SENTENCES[4]))},
        data={"transcript": SENTENCES[4]},
        headers=ADMIN,
    )
    adapter_id = await install_adapter(state, alice["id"], random_adapter(engine, 3))
    listed = await client.get(f"/v1/users/{alice['id']}/recordings", headers=ADMIN)
    return alice, listed.json()["data"], adapter_id


async def test_the_export_holds_everything_of_the_user(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    alice, recordings, adapter_id = await user_with_data(client, state, nf4_engine)
    response = await client.get(f"/v1/users/{alice['id']}/export", headers=bearer(alice["api_key"]))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert f"pqm-export-{alice['id']}.zip" in response.headers["content-disposition"]

    archive = zipfile.ZipFile(io.BytesIO(response.content))
    metadata = json.loads(archive.read("metadata.json"))
    assert metadata["user"]["id"] == alice["id"]
    assert metadata["omitted"] == []
    assert len(metadata["enrolments"]) == 1
    assert {r["id"] for r in metadata["recordings"]} == {r["id"] for r in recordings}
    for recording in recordings:
        audio = await client.get(
            f"/v1/users/{alice['id']}/recordings/{recording['id']}/audio", headers=ADMIN
        )
        assert archive.read(f"recordings/{recording['id']}.flac") == audio.content
        text = archive.read(f"recordings/{recording['id']}.txt").decode()
        assert text == f"{recording['transcript']}\n"
    [adapter] = metadata["adapters"]
    weights = archive.read(f"adapters/{adapter_id}.safetensors")
    assert hashlib.sha256(weights).hexdigest() == adapter["sha256"]


async def test_a_missing_blob_is_named_not_sent(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    alice, recordings, _ = await user_with_data(client, state, nf4_engine)
    lost = str(recordings[0]["id"])
    async with state.sessions() as session:
        plan = await export.plan_export(session, Principal(Role.ADMIN), alice["id"])
    [key] = [blob.key for blob in plan.blobs if lost in blob.name]
    await state.adapter_store.delete(key)

    response = await client.get(f"/v1/users/{alice['id']}/export", headers=ADMIN)
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert f"recordings/{lost}.flac" not in archive.namelist()
    omitted = json.loads(archive.read("metadata.json"))["omitted"]
    assert omitted == [{"file": f"recordings/{lost}.flac", "reason": "missing"}]


async def test_the_zip_is_streamed_a_file_at_a_time(
    client: httpx.AsyncClient, state: ServiceState, nf4_engine: WhisperEngine
) -> None:
    alice, _, _ = await user_with_data(client, state, nf4_engine)
    async with state.sessions() as session:
        plan = await export.plan_export(session, Principal(Role.ADMIN), alice["id"])
    largest = max([len(await state.adapter_store.get(blob.key)) for blob in plan.blobs])
    chunks = [chunk async for chunk in export.zip_stream(plan, state.adapter_store)]
    assert len(chunks) >= len(plan.blobs)
    assert max(len(chunk) for chunk in chunks) < largest + 4096  # one file and its headers
    zipfile.ZipFile(io.BytesIO(b"".join(chunks))).testzip()


@pytest.mark.parametrize("who", ["other user", "nobody"])
async def test_nobody_else_exports_a_user(client: httpx.AsyncClient, who: str) -> None:
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    headers = bearer(bob["api_key"]) if who == "other user" else {}
    response = await client.get(f"/v1/users/{alice['id']}/export", headers=headers)
    assert_openai_error(response, 404 if who == "other user" else 401)
