"""The expert-bank routes: a build from contributing users' recordings (admin only), and what a
contributor withdrawing does to the banks that learned from them."""

import httpx
from fastapi import FastAPI

from app.db.enrolment_status import EnrolmentStatus
from app.db.repositories.expert_banks import ExpertBankRepository
from app.db.session import transaction
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user
from tests.support.api import assert_openai_error
from tests.support.speech import wav_of

BANKS = "/v1/expert-banks"


async def _contributor(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    user = await create_user(client, name)
    own_key = bearer(user["api_key"])
    changed = await client.patch(
        f"/v1/users/{user['id']}", json={"contribute_recordings": True}, headers=own_key
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["contribute_recordings"] is True
    added = await client.post(
        f"/v1/users/{user['id']}/recordings",
        files={"file": ("clip.wav", wav_of("hello world"))},
        data={"transcript": "hello world"},
        headers=own_key,
    )
    assert added.status_code == 201, added.text
    return user


async def _succeed(state: ServiceState, bank_id: str) -> None:
    """Takes the queued build to succeeded as a worker would (the build itself is the worker's
    and the CLI's tests' business)."""
    async with transaction(state.sessions) as session:
        repository = ExpertBankRepository(session)
        bank = await repository.claim_next("worker-1")
        assert bank is not None
        assert bank.id == bank_id
        assert await repository.finish(bank, EnrolmentStatus.SUCCEEDED)


async def test_a_build_needs_two_contributing_users(client: httpx.AsyncClient) -> None:
    await _contributor(client, "alice")
    await create_user(client, "bob")  # not contributing
    refused = await client.post(BANKS, json={}, headers=ADMIN)
    error = assert_openai_error(refused, 400)
    assert "at least 2 users who contribute recordings" in str(error["message"])
    assert "1 do" in str(error["message"])


async def test_only_the_admin_reaches_expert_banks(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    assert_openai_error(await client.get(BANKS, headers=bearer(user["api_key"])), 403)
    assert_openai_error(await client.post(BANKS, json={}, headers=bearer(user["api_key"])), 403)


async def test_a_build_is_queued_listed_activated_once_built_and_deleted(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    for name in ("alice", "bob"):
        await _contributor(client, name)
    created = await client.post(BANKS, json={"experts": 2, "epochs": 1}, headers=ADMIN)
    assert created.status_code == 202, created.text
    bank = created.json()
    assert (bank["status"], bank["contributors"], bank["version"]) == ("queued", 2, 1)
    assert (bank["experts"], bank["params"]["epochs"]) == (2, 1)
    not_built = await client.post(f"{BANKS}/{bank['id']}/activate", headers=ADMIN)
    assert "queued" in str(assert_openai_error(not_built, 409)["message"])

    await _succeed(app.state.pqm, bank["id"])
    activated = await client.post(f"{BANKS}/{bank['id']}/activate", headers=ADMIN)
    assert activated.status_code == 200, activated.text
    assert activated.json()["active"] is True
    listed = (await client.get(BANKS, headers=ADMIN)).json()["data"]
    assert [(b["id"], b["active"]) for b in listed] == [(bank["id"], True)]

    deleted = await client.delete(f"{BANKS}/{bank['id']}", headers=ADMIN)
    assert deleted.status_code == 204
    assert_openai_error(await client.get(f"{BANKS}/{bank['id']}", headers=ADMIN), 404)


async def test_a_contributor_who_withdraws_deactivates_the_bank_for_good(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    alice, _ = [await _contributor(client, name) for name in ("alice", "bob")]
    bank = (await client.post(BANKS, json={}, headers=ADMIN)).json()
    await _succeed(app.state.pqm, bank["id"])
    assert (await client.post(f"{BANKS}/{bank['id']}/activate", headers=ADMIN)).is_success

    withdrawn = await client.patch(
        f"/v1/users/{alice['id']}", json={"contribute_recordings": False}, headers=ADMIN
    )
    assert withdrawn.json()["contribute_recordings"] is False

    after = (await client.get(f"{BANKS}/{bank['id']}", headers=ADMIN)).json()
    assert (after["active"], after["includes_withdrawn"], after["withdrawn_contributors"]) == (
        False,
        True,
        1,
    )
    again = await client.post(f"{BANKS}/{bank['id']}/activate", headers=ADMIN)
    assert "withdrew" in str(assert_openai_error(again, 409)["message"])


async def test_deleting_a_contributor_cancels_a_queued_build(client: httpx.AsyncClient) -> None:
    alice, _ = [await _contributor(client, name) for name in ("alice", "bob")]
    bank = (await client.post(BANKS, json={}, headers=ADMIN)).json()
    assert (await client.delete(f"/v1/users/{alice['id']}", headers=ADMIN)).status_code == 204
    after = (await client.get(f"{BANKS}/{bank['id']}", headers=ADMIN)).json()
    assert (after["status"], after["includes_withdrawn"]) == ("cancelled", True)
    assert (after["contributors"], after["withdrawn_contributors"]) == (2, 1)
