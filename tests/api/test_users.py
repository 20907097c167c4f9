from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.engine.whisper import WhisperEngine
from app.main import create_app
from tests.conftest import ADMIN, bearer, create_user, make_settings
from tests.support.api import assert_openai_error


async def test_admin_creates_user_and_key_is_shown_once(client: httpx.AsyncClient) -> None:
    created = await create_user(client, "alice")
    assert created["name"] == "alice"
    assert created["api_key"].startswith("pqm-")
    assert created["api_key"].startswith(created["api_key_prefix"])

    fetched = await client.get(f"/v1/users/{created['id']}", headers=bearer(created["api_key"]))
    assert fetched.status_code == 200
    assert "api_key" not in fetched.json()
    assert fetched.json()["id"] == created["id"]


async def test_key_is_stored_hashed(app: FastAPI, client: httpx.AsyncClient) -> None:
    created = await create_user(client)
    from sqlalchemy import select

    from app.db.models import User

    async with app.state.pqm.sessions() as session:
        user = (await session.execute(select(User))).scalar_one()
    assert created["api_key"] not in (user.api_key_hash, user.api_key_prefix)
    assert len(user.api_key_hash) == 64


async def test_missing_and_wrong_keys_are_401(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/models"), 401)
    assert_openai_error(await client.get("/v1/models", headers=bearer("pqm-nope")), 401)
    error = assert_openai_error(
        await client.get("/v1/models", headers={"Authorization": "Basic abc"}), 401
    )
    assert error["type"] == "authentication_error"


async def test_user_key_on_admin_route_is_403(client: httpx.AsyncClient) -> None:
    alice = await create_user(client, "alice")
    response = await client.post(
        "/v1/users", json={"name": "mallory"}, headers=bearer(alice["api_key"])
    )
    assert assert_openai_error(response, 403)["type"] == "permission_error"


async def test_other_users_resources_are_404(client: httpx.AsyncClient) -> None:
    alice = await create_user(client, "alice")
    bob = await create_user(client, "bob")
    as_bob = bearer(bob["api_key"])
    assert_openai_error(await client.get(f"/v1/users/{alice['id']}", headers=as_bob), 404)
    assert_openai_error(await client.delete(f"/v1/users/{alice['id']}", headers=as_bob), 404)
    # Indistinguishable from a user that does not exist at all.
    missing = await client.get("/v1/users/0123456789abcdef0123456789abcdef", headers=as_bob)
    assert missing.json()["error"]["message"].startswith("No user with id")
    assert (await client.get(f"/v1/users/{alice['id']}", headers=ADMIN)).status_code == 200


async def test_user_deletes_itself_and_its_key_stops_working(client: httpx.AsyncClient) -> None:
    alice = await create_user(client)
    as_alice = bearer(alice["api_key"])
    assert (await client.delete(f"/v1/users/{alice['id']}", headers=as_alice)).status_code == 204
    assert_openai_error(await client.get(f"/v1/users/{alice['id']}", headers=as_alice), 401)
    assert_openai_error(await client.get(f"/v1/users/{alice['id']}", headers=ADMIN), 404)


async def test_bad_fields_are_422(client: httpx.AsyncClient) -> None:
    error = assert_openai_error(
        await client.post("/v1/users", json={"name": ""}, headers=ADMIN), 422
    )
    assert error["param"] == "name"
    assert_openai_error(await client.post("/v1/users", content=b"{not json", headers=ADMIN), 422)


async def test_unknown_route_is_openai_shaped_404(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nothing-here", headers=ADMIN), 404)


@pytest.mark.postgres
async def test_users_on_both_databases(
    database_url: str, tmp_path: Path, nf4_engine: WhisperEngine
) -> None:
    application = create_app(
        make_settings(tmp_path / "data", database_url=database_url), recognizer=nf4_engine
    )
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            alice = await create_user(client)
            response = await client.get(
                f"/v1/users/{alice['id']}", headers=bearer(alice["api_key"])
            )
            assert response.status_code == 200
            assert (await client.get("/readyz")).json()["status"] == "ready"


async def test_admin_key_is_generated_once_and_kept_private(
    tmp_path: Path, nf4_engine: WhisperEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path / "data", admin_key=None)
    for _ in range(2):
        application = create_app(settings, recognizer=nf4_engine)
        async with application.router.lifespan_context(application):
            key = application.state.pqm.admin_key
    key_file = settings.admin_key_file
    assert key_file.read_text().strip() == key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert capsys.readouterr().out.count(key) == 1


@pytest.mark.parametrize(
    "name",
    ["nul\x00byte", "esc\x1b[31mred", "two\nlines", "tab\there", "del\x7f", "rtl\u202eevil", " "],
)
async def test_names_with_control_characters_or_blank_are_refused(
    client: httpx.AsyncClient, name: str
) -> None:
    response = await client.post("/v1/users", json={"name": name}, headers=ADMIN)
    assert assert_openai_error(response, 422)["param"] == "name"


@pytest.mark.parametrize(
    "name", ["José Müller-Łukasz", "王小明", "👩‍👩‍👧 family", "O'Brien (home)"]
)
async def test_names_in_any_script_are_kept_as_given(client: httpx.AsyncClient, name: str) -> None:
    created = await create_user(client, name)
    response = await client.get(f"/v1/users/{created['id']}", headers=ADMIN)
    assert response.json()["name"] == name


async def test_timestamps_have_one_format_with_its_offset(client: httpx.AsyncClient) -> None:
    created = await create_user(client, "alice")
    fetched = await client.get(f"/v1/users/{created['id']}", headers=ADMIN)

    stamps = [created["created_at"], fetched.json()["created_at"]]
    assert stamps[0] == stamps[1]
    for stamp in stamps:
        assert stamp.endswith("Z"), stamp
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0)


@pytest.mark.parametrize("template", ["bearer {}", "BEARER {}", "Bearer   {}", "Bearer {}  "])
async def test_the_scheme_is_case_insensitive_and_blanks_are_tolerated(
    client: httpx.AsyncClient, template: str
) -> None:
    """RFC 7235: the auth scheme is case-insensitive."""
    alice = await create_user(client, "alice")
    headers = {"Authorization": template.format(alice["api_key"])}
    response = await client.get(f"/v1/users/{alice['id']}", headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("template", ["Bearer{}", "Token {}", "{}", "Bearer {} extra"])
async def test_malformed_authorization_is_401(client: httpx.AsyncClient, template: str) -> None:
    alice = await create_user(client, "alice")
    headers = {"Authorization": template.format(alice["api_key"])}
    assert_openai_error(await client.get(f"/v1/users/{alice['id']}", headers=headers), 401)
