"""A bank asked for over HTTP is built by the worker from two contributing users' recordings
(espeak-ng voices, 2 experts, 1 epoch of each stage: a real build in the child process),
activated, and then the bank new SAML adapters start from; a queued build deleted or cancelled by
a withdrawal is never run."""

import httpx
import pytest

from app.db.enrolment_status import EnrolmentStatus
from app.db.models import ExpertBank
from app.db.session import transaction
from app.engine.adaptation.saml.file import load_saml
from app.services.active_bank import active_bank
from app.services.expert_bank_worker import ExpertBankWorker
from app.services.job_worker import WorkerContext
from app.state import ServiceState
from tests.conftest import ADMIN, bearer, create_user
from tests.support.audio import speech_16k, to_bytes

BANKS = "/v1/expert-banks"
TEXTS = ("the cat sat on the mat", "seven green apples", "open the kitchen door")


async def _contributor(client: httpx.AsyncClient, name: str, voice: str) -> dict[str, str]:
    """A user who lets banks learn from their recordings, with a recording of each of TEXTS."""
    user = await create_user(client, name)
    own_key = bearer(user["api_key"])
    changed = await client.patch(
        f"/v1/users/{user['id']}", json={"contribute_recordings": True}, headers=own_key
    )
    assert changed.status_code == 200, changed.text
    for text in TEXTS:
        added = await client.post(
            f"/v1/users/{user['id']}/recordings",
            files={"file": ("clip.wav", to_bytes(speech_16k(text, voice=voice), 16_000))},
            data={"transcript": text},
            headers=own_key,
        )
        assert added.status_code == 201, added.text
    return user


async def _ask_for_tiny_build(client: httpx.AsyncClient, state: ServiceState) -> str:
    """A build of 2 experts and 1 epoch of each stage, as the request asks."""
    tiny = {"experts": 2, "epochs": 1, "expert_epochs": 1}
    created = await client.post(BANKS, json=tiny, headers=ADMIN)
    assert created.status_code == 202, created.text
    bank_id: str = created.json()["id"]
    async with transaction(state.sessions) as session:
        bank = await session.get(ExpertBank, bank_id)
        assert bank is not None
        assert (bank.experts, bank.params["expert_epochs"]) == (2, 1)
    return bank_id


def _worker(state: ServiceState) -> ExpertBankWorker:
    context = WorkerContext.create(
        state.settings, state.sessions, state.adapter_store, state.engine
    )
    return ExpertBankWorker(context, "worker-1")


@pytest.mark.slow
async def test_a_bank_asked_for_is_built_activated_and_then_the_active_bank(
    client: httpx.AsyncClient, state: ServiceState
) -> None:
    await _contributor(client, "alice", "en-us")
    await _contributor(client, "bob", "en-gb")
    bank_id = await _ask_for_tiny_build(client, state)

    assert await _worker(state).run_once()
    built = (await client.get(f"{BANKS}/{bank_id}", headers=ADMIN)).json()
    assert (built["status"], built["progress"], built["error"]) == ("succeeded", 1.0, None)
    assert (built["contributors"], built["withdrawn_contributors"], built["experts"]) == (2, 0, 2)
    assert built["metrics"]["source"] == "contributors"
    assert built["metrics"]["speakers"] == 2

    activated = await client.post(f"{BANKS}/{bank_id}/activate", headers=ADMIN)
    assert activated.status_code == 200, activated.text
    assert activated.json()["active"] is True
    fingerprint = state.engine.info.fingerprint
    async with state.sessions() as session:
        active = await active_bank(session, state.adapter_store, fingerprint)
    assert active is not None
    assert active[0] == bank_id
    weights = load_saml(active[1])
    assert (weights.kind, weights.experts, weights.base_fingerprint) == ("bank", 2, fingerprint)


async def test_a_queued_build_deleted_is_never_run(
    client: httpx.AsyncClient, state: ServiceState
) -> None:
    for name, voice in (("alice", "en-us"), ("bob", "en-gb")):
        await _contributor(client, name, voice)
    bank_id = await _ask_for_tiny_build(client, state)
    assert (await client.delete(f"{BANKS}/{bank_id}", headers=ADMIN)).status_code == 204
    assert not await _worker(state).run_once()


async def test_a_build_whose_contributor_withdrew_before_it_ran_is_cancelled(
    client: httpx.AsyncClient, state: ServiceState
) -> None:
    alice = await _contributor(client, "alice", "en-us")
    await _contributor(client, "bob", "en-gb")
    bank_id = await _ask_for_tiny_build(client, state)
    withdrawn = await client.patch(
        f"/v1/users/{alice['id']}", json={"contribute_recordings": False}, headers=ADMIN
    )
    assert withdrawn.status_code == 200, withdrawn.text

    assert not await _worker(state).run_once()
    bank = (await client.get(f"{BANKS}/{bank_id}", headers=ADMIN)).json()
    assert (bank["status"], bank["includes_withdrawn"], bank["withdrawn_contributors"]) == (
        EnrolmentStatus.CANCELLED,
        True,
        1,
    )
    assert bank["sha256"] is None
