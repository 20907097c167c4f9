"""Invite links over HTTP: created by the admin, stored hashed, revocable and expiring; a link's
token enrols, transcribes, adds corrections and reads its user's things, and nothing else."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from app.config import Settings
from app.db.base import utcnow
from app.db.models import InviteLink
from app.services.auth import hash_api_key
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user, make_settings
from tests.support.api import assert_openai_error
from tests.support.speech import SENTENCES, wav_of

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(database_url: str, tmp_path: Path, tiny_en_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url=database_url,
        model={"path": tiny_en_dir},
        enrolment={"worker": False, "min_utterances": 4, "gate_folds": 2},
        links={"expires_after_s": 600, "max_expires_after_s": 3600},
    )


async def new_link(
    client: httpx.AsyncClient, user: dict[str, str], **body: object
) -> dict[str, str]:
    response = await client.post(f"/v1/users/{user['id']}/links", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    created: dict[str, str] = response.json()
    return created


async def test_a_link_is_created_by_the_admin_and_stored_hashed(
    client: httpx.AsyncClient, state: ServiceState
) -> None:
    alice = await create_user(client)
    link = await new_link(client, alice)
    assert link["url"] == f"http://testserver/#link={link['token']}"
    expires = link["expires_at"]
    assert expires.endswith("Z")
    async with state.sessions() as session:
        stored = (await session.scalars(select(InviteLink))).one()
    assert stored.token_hash == hash_api_key(link["token"])
    assert link["token"] not in {stored.id, stored.token_hash}

    as_alice = bearer(alice["api_key"])
    refused = await client.post(f"/v1/users/{alice['id']}/links", headers=as_alice)
    assert_openai_error(refused, 403)
    too_long = await client.post(
        f"/v1/users/{alice['id']}/links", json={"expires_in": 3601}, headers=ADMIN
    )
    assert assert_openai_error(too_long, 400)["param"] == "expires_in"
    listed = (await client.get(f"/v1/users/{alice['id']}/links", headers=ADMIN)).json()["data"]
    assert [entry["id"] for entry in listed] == [link["id"]]
    assert "token" not in listed[0]


async def test_a_revoked_or_expired_link_stops_at_once(
    client: httpx.AsyncClient, state: ServiceState
) -> None:
    alice = await create_user(client)
    revoked, expiring = await new_link(client, alice), await new_link(client, alice)
    for link in (revoked, expiring):
        assert (await client.get("/v1/me", headers=bearer(link["token"]))).status_code == 200

    gone = await client.delete(f"/v1/users/{alice['id']}/links/{revoked['id']}", headers=ADMIN)
    assert gone.json()["revoked_at"] is not None
    async with state.sessions() as session, session.begin():
        await session.execute(
            update(InviteLink)
            .where(InviteLink.id == expiring["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )

    for link in (revoked, expiring):
        refused = await client.get("/v1/me", headers=bearer(link["token"]))
        assert assert_openai_error(refused, 401)["code"] == "invalid_invite_link"
    forged = await client.get("/v1/me", headers=bearer("pqm-link-" + "x" * 43))
    assert_openai_error(forged, 401)


async def test_what_a_link_may_do(client: httpx.AsyncClient) -> None:
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    as_link = bearer((await new_link(client, alice))["token"])
    user = f"/v1/users/{alice['id']}"

    me = (await client.get("/v1/me", headers=as_link)).json()
    assert (me["role"], me["user_id"], me["name"]) == ("link", alice["id"], "alice")
    assert me["link_expires_at"] is not None
    files = [("files", (f"{i}.wav", wav_of(text))) for i, text in enumerate(SENTENCES[:4])]
    enrolled = await client.post(
        f"{user}/enrolments", files=files, data={"transcripts": SENTENCES[:4]}, headers=as_link
    )
    assert enrolled.status_code == 202, enrolled.text
    tried = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_of(SENTENCES[0]))},
        data={"model": "whisper-1"},
        headers=as_link,
    )
    assert tried.status_code == 200, tried.text
    corrected = await client.post(
        f"{user}/recordings",
        files={"file": ("a.wav", wav_of(SENTENCES[0]))},
        data={"transcript": SENTENCES[0], "request_id": tried.headers["x-request-id"]},
        headers=as_link,
    )
    assert corrected.status_code == 201, corrected.text
    recording = corrected.json()["id"]
    for path in (
        user,
        f"{user}/recordings",
        f"{user}/recordings/{recording}/audio",
        f"{user}/enrolments",
        f"/v1/enrolments/{enrolled.json()['id']}",
        f"{user}/adapters",
        f"{user}/export",
        "/v1/prompts",
        "/v1/models",
    ):
        assert (await client.get(path, headers=as_link)).status_code == 200, path

    # Another user's things do not exist for it.
    assert_openai_error(await client.get(f"/v1/users/{bob['id']}", headers=as_link), 404)
    assert_openai_error(await client.get(f"/v1/users/{bob['id']}/recordings", headers=as_link), 404)


async def test_everything_else_is_forbidden_to_a_link(client: httpx.AsyncClient) -> None:
    alice = await create_user(client)
    as_link = bearer((await new_link(client, alice))["token"])
    user = f"/v1/users/{alice['id']}"
    recording = (
        await client.post(
            f"{user}/recordings",
            files={"file": ("a.wav", wav_of(SENTENCES[1]))},
            data={"transcript": SENTENCES[1]},
            headers=as_link,
        )
    ).json()["id"]
    files = [("files", (f"{i}.wav", wav_of(text))) for i, text in enumerate(SENTENCES[:4])]
    job = (
        await client.post(
            f"{user}/enrolments", files=files, data={"transcripts": SENTENCES[:4]}, headers=ADMIN
        )
    ).json()["id"]
    link_id = (await new_link(client, alice))["id"]
    forbidden: list[tuple[str, str, dict[str, Any]]] = [
        ("DELETE", user, {}),
        ("POST", f"{user}/key", {}),
        ("DELETE", f"{user}/recordings/{recording}", {}),
        ("DELETE", f"/v1/enrolments/{job}", {}),
        ("POST", f"{user}/adapters", {"files": {"file": ("a.safetensors", b"\0" * 16)}}),
        ("DELETE", f"{user}/adapters/any", {}),
        ("POST", f"{user}/adapters/any/activate", {}),
        ("POST", f"{user}/links", {"json": {}}),
        ("GET", f"{user}/links", {}),
        ("DELETE", f"{user}/links/{link_id}", {}),
        ("POST", "/v1/users", {"json": {"name": "mallory"}}),
        ("GET", "/metrics", {}),
    ]
    for method, path, extra in forbidden:
        response = await client.request(method, path, headers=as_link, **extra)
        assert_openai_error(response, 403)
    # All of it still there.
    assert (await client.get(f"{user}/recordings/{recording}/audio", headers=ADMIN)).is_success
    assert (await client.get(f"/v1/enrolments/{job}", headers=ADMIN)).json()["status"] == "queued"
    assert (await client.get(user, headers=bearer(alice["api_key"]))).status_code == 200
