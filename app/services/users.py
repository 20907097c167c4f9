"""Use cases for managing users."""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore
from app.db.models import InviteLink, User
from app.db.repositories.invite_links import InviteLinkRepository
from app.db.repositories.users import UserRepository
from app.errors import NotFoundError
from app.services.auth import (
    DISPLAY_PREFIX_LENGTH,
    Principal,
    generate_user_key,
    hash_api_key,
)
from app.services.blob_keys import user_prefix
from app.services.expert_banks import withdraw_contributor


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
    """The user, for the admin or the user's own key (an invite link is refused)."""
    principal.require_access_to(user_id)
    return await _existing(session, user_id)


async def get_speaker(session: AsyncSession, principal: Principal, user_id: str) -> User:
    """The user, for what an invite link may do too (see `require_speaker_access_to`)."""
    principal.require_speaker_access_to(user_id)
    return await _existing(session, user_id)


async def _existing(session: AsyncSession, user_id: str) -> User:
    user = await UserRepository(session).get(user_id)
    if user is None:
        raise NotFoundError(f"No user with id {user_id!r}.", param="user_id")
    return user


async def delete_user(
    session: AsyncSession, store: AdapterStore, principal: Principal, user_id: str
) -> None:
    """Erases the user with everything kept for them: adapters, recordings, jobs (rows cascade;
    a job still training notices at its next heartbeat and stops). Expert banks that learned
    from them are withdrawn (`withdraw_contributor`)."""
    principal.require_access_to(user_id)
    await withdraw_contributor(session, user_id)
    if not await UserRepository(session).delete(user_id):
        raise NotFoundError(f"No user with id {user_id!r}.", param="user_id")
    await store.bind(session).delete_prefix(user_prefix(user_id))


async def update_user(
    session: AsyncSession, principal: Principal, user_id: str, contribute: bool | None
) -> User:
    """Sets whether expert banks may learn from the user's recordings (None: unchanged);
    turning it off withdraws the user from every bank that did (`withdraw_contributor`)."""
    user = await get_user(session, principal, user_id)
    if contribute is None or contribute == user.contribute_recordings:
        return user
    user.contribute_recordings = contribute
    if not contribute:
        await withdraw_contributor(session, user_id)
    await session.flush()
    return user


async def rotate_key(session: AsyncSession, principal: Principal, user_id: str) -> CreatedUser:
    """A new key for the user, returned once; the old one stops working with this transaction
    (every request looks its key up)."""
    user = await get_user(session, principal, user_id)
    api_key = generate_user_key()
    await UserRepository(session).replace_key(
        user, hash_api_key(api_key), api_key[:DISPLAY_PREFIX_LENGTH]
    )
    return CreatedUser(user=user, api_key=api_key)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request's key stands for."""

    principal: Principal
    user: User | None
    """None for the admin."""
    link: InviteLink | None
    """The invite link a link token came with."""


async def identify(session: AsyncSession, principal: Principal) -> Identity:
    if principal.user_id is None:
        return Identity(principal, None, None)
    user = await get_speaker(session, principal, principal.user_id)
    link = None
    if principal.link_id is not None:
        link = await InviteLinkRepository(session).get_for_user(user.id, principal.link_id)
    return Identity(principal, user, link)
