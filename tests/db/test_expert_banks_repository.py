"""`ExpertBankRepository`: builds share the enrolment jobs' claim and state machine; at most one
bank is active per base model; a withdrawn contributor deactivates every bank that learned from
them and cancels builds not finished, against real SQLite and PostgreSQL databases."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.enrolment_status import EnrolmentStatus
from app.db.models import ExpertBank, ExpertBankContributor, User
from app.db.repositories.expert_banks import ExpertBankRepository
from app.db.repositories.users import UserRepository
from app.db.session import transaction
from app.services.expert_banks import BankBuild, record_bank, withdraw_contributor
from tests.support.enrolments import migrated_sessions

pytestmark = pytest.mark.postgres

FINGERPRINT = "f" * 64


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_sessions(database_url) as sessions:
        yield sessions


async def _user(session: AsyncSession, name: str) -> str:
    user = User(name=name, api_key_hash=name.ljust(64, "0"), api_key_prefix="pqm-0")
    return (await UserRepository(session).add(user)).id


async def _bank(
    sessions: async_sessionmaker[AsyncSession], user_ids: list[str], status: EnrolmentStatus
) -> str:
    """A bank learning from `user_ids`, its build taken to `status` through the machine."""
    async with transaction(sessions) as session:
        contributors = [
            ExpertBankContributor(user_id=user_id, recordings=3, withdrawn=False)
            for user_id in user_ids
        ]
        bank = await record_bank(session, FINGERPRINT, BankBuild(experts=2), contributors)
        repository = ExpertBankRepository(session)
        if status is not EnrolmentStatus.QUEUED:
            claimed = await repository.claim_next("worker-1")
            assert claimed is not None
            assert claimed.id == bank.id
        if status.finished:
            assert await repository.finish(bank, status)
        return bank.id


async def _stored(sessions: async_sessionmaker[AsyncSession], bank_id: str) -> ExpertBank:
    async with sessions() as session:
        bank = await ExpertBankRepository(session).get(bank_id)
        assert bank is not None
        return bank


async def test_versions_count_per_base_model_and_one_bank_is_active(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    first = await _bank(sessions, [], EnrolmentStatus.SUCCEEDED)
    second = await _bank(sessions, [], EnrolmentStatus.SUCCEEDED)
    assert [(await _stored(sessions, b)).version for b in (first, second)] == [1, 2]
    for bank_id in (first, second):
        async with transaction(sessions) as session:
            repository = ExpertBankRepository(session)
            bank = await repository.get(bank_id)
            assert bank is not None
            await repository.activate(bank)
    assert [(await _stored(sessions, b)).active for b in (first, second)] == [False, True]
    async with sessions() as session:
        active = await ExpertBankRepository(session).active_for(FINGERPRINT)
        assert active is not None
        assert active.id == second


async def test_the_database_refuses_two_active_banks_for_one_base_model(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    banks = [await _bank(sessions, [], EnrolmentStatus.SUCCEEDED) for _ in range(2)]
    async with sessions() as session:
        for bank_id in banks[:-1]:
            bank = await ExpertBankRepository(session).get(bank_id)
            assert bank is not None
            bank.active = True
            await session.flush()
        last = await ExpertBankRepository(session).get(banks[-1])
        assert last is not None
        last.active = True
        with pytest.raises(IntegrityError):
            await session.flush()


async def test_a_withdrawn_contributor_deactivates_and_cancels_what_learned_from_them(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions) as session:
        alice, bob, carol = [await _user(session, name) for name in ("alice", "bob", "carol")]
    served = await _bank(sessions, [alice, bob], EnrolmentStatus.SUCCEEDED)
    untouched = await _bank(sessions, [bob, carol], EnrolmentStatus.SUCCEEDED)
    queued = await _bank(sessions, [alice, carol], EnrolmentStatus.QUEUED)
    async with transaction(sessions) as session:
        bank = await ExpertBankRepository(session).get(served)
        assert bank is not None
        await ExpertBankRepository(session).activate(bank)

    async with transaction(sessions) as session:
        await withdraw_contributor(session, alice)

    after = {b: await _stored(sessions, b) for b in (served, queued, untouched)}
    assert [(after[b].includes_withdrawn, after[b].active) for b in (served, queued)] == [
        (True, False),
        (True, False),
    ]
    assert after[queued].status == EnrolmentStatus.CANCELLED
    assert after[served].status == EnrolmentStatus.SUCCEEDED
    assert not after[untouched].includes_withdrawn
    async with sessions() as session:
        marks = [
            (c.user_id, c.withdrawn)
            for c in await ExpertBankRepository(session).contributors(served)
        ]
    assert sorted(marks) == sorted([(alice, True), (bob, False)])


async def test_a_running_build_is_asked_to_stop_when_a_contributor_withdraws(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions) as session:
        alice, bob = [await _user(session, name) for name in ("alice", "bob")]
    running = await _bank(sessions, [alice, bob], EnrolmentStatus.RUNNING)
    async with transaction(sessions) as session:
        await withdraw_contributor(session, bob)
    async with transaction(sessions) as session:
        assert not await ExpertBankRepository(session).heartbeat(running, "worker-1")
    bank = await _stored(sessions, running)
    assert (bank.status, bank.cancel_requested) == (EnrolmentStatus.RUNNING, True)


async def test_a_contributor_row_outlives_its_deleted_user(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(sessions) as session:
        alice, bob = [await _user(session, name) for name in ("alice", "bob")]
    bank_id = await _bank(sessions, [alice, bob], EnrolmentStatus.SUCCEEDED)
    async with transaction(sessions) as session:
        await withdraw_contributor(session, alice)
        assert await UserRepository(session).delete(alice)
    async with sessions() as session:
        contributors = await ExpertBankRepository(session).contributors(bank_id)
    assert sorted((c.user_id or "", c.withdrawn) for c in contributors) == sorted(
        [("", True), (bob, False)]
    )
