"""GET /v1/me says who a key stands for; POST /v1/users/{id}/key rotates a user's key."""

import httpx
import pytest

from tests.conftest import ADMIN, bearer, create_user
from tests.support.api import assert_openai_error


async def test_me_for_the_admin_and_a_user(client: httpx.AsyncClient) -> None:
    admin = (await client.get("/v1/me", headers=ADMIN)).json()
    assert admin == {
        "object": "me",
        "role": "admin",
        "user_id": None,
        "name": None,
        "link_id": None,
        "link_expires_at": None,
    }
    alice = await create_user(client)
    me = (await client.get("/v1/me", headers=bearer(alice["api_key"]))).json()
    assert (me["role"], me["user_id"], me["name"]) == ("user", alice["id"], "alice")
    assert_openai_error(await client.get("/v1/me"), 401)


@pytest.mark.parametrize("by", ["owner", "admin"])
async def test_a_rotated_key_replaces_the_old_one_at_once(
    client: httpx.AsyncClient, by: str
) -> None:
    alice = await create_user(client)
    old = bearer(alice["api_key"])
    rotated = await client.post(
        f"/v1/users/{alice['id']}/key", headers=old if by == "owner" else ADMIN
    )
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["api_key"]
    assert new_key != alice["api_key"]
    assert rotated.json()["api_key_prefix"] == new_key[:12]

    assert_openai_error(await client.get("/v1/me", headers=old), 401)
    me = (await client.get("/v1/me", headers=bearer(new_key))).json()
    assert me["user_id"] == alice["id"]


async def test_nobody_rotates_another_users_key(client: httpx.AsyncClient) -> None:
    alice, bob = await create_user(client, "alice"), await create_user(client, "bob")
    refused = await client.post(f"/v1/users/{alice['id']}/key", headers=bearer(bob["api_key"]))
    assert_openai_error(refused, 404)
    assert (await client.get("/v1/me", headers=bearer(alice["api_key"]))).status_code == 200
