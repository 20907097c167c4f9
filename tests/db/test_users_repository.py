"""`UserRepository` against real SQLite and PostgreSQL databases, through an `AsyncSession`."""

from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.migrate import upgrade_to_head
from app.db.models import User, new_id
from app.db.repositories.users import UserRepository
from app.db.session import create_engine, create_sessionmaker, transaction
from app.services.auth import generate_user_key, hash_api_key

pytestmark = pytest.mark.postgres


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    upgrade_to_head(database_url)
    engine = create_engine(database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


def new_user(name: str = "alice") -> tuple[User, str]:
    key = generate_user_key()
    user = User(name=name, api_key_hash=hash_api_key(key), api_key_prefix=key[:12])
    return user, key


async def test_add_then_get_in_a_new_session(sessions: async_sessionmaker[AsyncSession]) -> None:
    user, key = new_user()
    async with transaction(sessions) as session:
        added = await UserRepository(session).add(user)
        user_id = added.id
    assert isinstance(user_id, str)
    assert len(user_id) == 32

    async with sessions() as session:
        found = await UserRepository(session).get(user_id)
    assert found is not None
    assert found is not user, "must come from the database, not the identity map"
    assert (found.id, found.name) == (user_id, "alice")
    assert found.api_key_hash == hash_api_key(key)
    assert found.api_key_prefix == key[:12]
    assert isinstance(found.created_at, datetime)


async def test_get_missing_user_is_none(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        assert await UserRepository(session).get("0" * 32) is None


async def test_get_by_key_hash(sessions: async_sessionmaker[AsyncSession]) -> None:
    alice, alice_key = new_user("alice")
    bob, bob_key = new_user("bob")
    async with transaction(sessions) as session:
        repository = UserRepository(session)
        await repository.add(alice)
        await repository.add(bob)

    async with sessions() as session:
        repository = UserRepository(session)
        found_alice = await repository.get_by_key_hash(hash_api_key(alice_key))
        found_bob = await repository.get_by_key_hash(hash_api_key(bob_key))
        assert await repository.get_by_key_hash(hash_api_key("pqm-not-a-key")) is None
        assert await repository.get_by_key_hash(alice_key) is None, "lookup is by hash only"
    assert found_alice is not None
    assert found_bob is not None
    assert (found_alice.id, found_alice.name) == (alice.id, "alice")
    assert (found_bob.id, found_bob.name) == (bob.id, "bob")


async def test_delete(sessions: async_sessionmaker[AsyncSession]) -> None:
    alice, alice_key = new_user("alice")
    bob, _ = new_user("bob")
    async with transaction(sessions) as session:
        await UserRepository(session).add(alice)
        await UserRepository(session).add(bob)

    async with transaction(sessions) as session:
        assert await UserRepository(session).delete(alice.id) is True
    async with transaction(sessions) as session:
        assert await UserRepository(session).delete(alice.id) is False
        assert await UserRepository(session).delete("no-such-user") is False

    async with sessions() as session:
        repository = UserRepository(session)
        assert await repository.get(alice.id) is None
        assert await repository.get_by_key_hash(hash_api_key(alice_key)) is None
        remaining = await repository.get(bob.id)
    assert remaining is not None, "deleting one user must leave the others"
    assert remaining.name == "bob"


async def test_rolled_back_add_is_not_stored(sessions: async_sessionmaker[AsyncSession]) -> None:
    user, _ = new_user()

    async def add_then_fail() -> None:
        async with transaction(sessions) as session:
            await UserRepository(session).add(user)
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        await add_then_fail()

    async with sessions() as session:
        assert await UserRepository(session).get(user.id) is None


async def test_api_key_hash_is_unique(sessions: async_sessionmaker[AsyncSession]) -> None:
    first, key = new_user("first")
    async with transaction(sessions) as session:
        await UserRepository(session).add(first)

    duplicate = User(
        id=new_id(), name="second", api_key_hash=hash_api_key(key), api_key_prefix=key[:12]
    )
    with pytest.raises(IntegrityError):
        async with transaction(sessions) as session:
            await UserRepository(session).add(duplicate)

    async with sessions() as session:
        found = await UserRepository(session).get_by_key_hash(hash_api_key(key))
        assert await UserRepository(session).get(duplicate.id) is None
    assert found is not None
    assert found.name == "first"
