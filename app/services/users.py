"""Use cases for managing users."""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore
from app.db.models import User
from app.db.repositories.users import UserRepository
from app.errors import NotFoundError
from app.services.auth import (
    DISPLAY_PREFIX_LENGTH,
    Principal,
    generate_user_key,
    hash_api_key,
)
from app.services.blob_keys import user_prefix


@dataclass(frozen=True, slots=True)
class CreatedUser:
    user: User
    api_key: str
    """Plain-text key: returned once at creation and never stored."""


async def create_user(session: AsyncSession, principal: Principal, name: str) -> CreatedUser:
    principal.require_admin()
    api_key = generate_user_key()
    user = User(
        name=name,
        api_key_hash=hash_api_key(api_key),
        api_key_prefix=api_key[:DISPLAY_PREFIX_LENGTH],
    )
    await UserRepository(session).add(user)
    return CreatedUser(user=user, api_key=api_key)


async def get_user(session: AsyncSession, principal: Principal, user_id: str) -> User:
    principal.require_access_to(user_id)
    user = await UserRepository(session).get(user_id)
    if user is None:
        raise NotFoundError(f"No user with id {user_id!r}.", param="user_id")
    return user


async def delete_user(
    session: AsyncSession, store: AdapterStore, principal: Principal, user_id: str
) -> None:
    """Erases the user with everything kept for them: adapters, recordings, jobs (rows cascade;
    a job still training notices at its next heartbeat and stops)."""
    principal.require_access_to(user_id)
    if not await UserRepository(session).delete(user_id):
        raise NotFoundError(f"No user with id {user_id!r}.", param="user_id")
    await store.bind(session).delete_prefix(user_prefix(user_id))
