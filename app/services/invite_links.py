"""Use cases for invite links: a short-lived token that lets a speaker enrol, try and correct
through the page without handling an API key (what it may do: `Principal.require_access_to`)."""

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import InviteLinkSettings
from app.db.base import utcnow
from app.db.models import InviteLink
from app.db.repositories.invite_links import InviteLinkRepository
from app.errors import BadRequestError, NotFoundError
from app.services.auth import LINK_TOKEN_PREFIX, Principal, hash_api_key
from app.services.users import get_user


@dataclass(frozen=True, slots=True)
class CreatedLink:
    link: InviteLink
    token: str
    """Returned once: only its hash is stored."""
    url: str


async def create_link(
    session: AsyncSession,
    principal: Principal,
    user_id: str,
    expires_in_s: int | None,
    settings: InviteLinkSettings,
    public_url: str,
) -> CreatedLink:
    """Admin only (an app backend holds the admin key). The token travels in the URL's
    fragment, which browsers do not send to servers or in `Referer`."""
    principal.require_admin()
    await get_user(session, principal, user_id)
    lifetime = settings.expires_after_s if expires_in_s is None else expires_in_s
    if lifetime > settings.max_expires_after_s:
        raise BadRequestError(
            f"An invite link may last at most {settings.max_expires_after_s} s.",
            param="expires_in",
        )
    token = LINK_TOKEN_PREFIX + secrets.token_urlsafe(32)
    link = InviteLink(
        user_id=user_id,
        token_hash=hash_api_key(token),
        expires_at=utcnow() + timedelta(seconds=lifetime),
    )
    await InviteLinkRepository(session).add(link)
    return CreatedLink(link=link, token=token, url=f"{public_url.rstrip('/')}/#link={token}")


async def list_links(session: AsyncSession, principal: Principal, user_id: str) -> list[InviteLink]:
    principal.require_admin()
    await get_user(session, principal, user_id)
    return await InviteLinkRepository(session).list_for_user(user_id)


async def revoke_link(
    session: AsyncSession, principal: Principal, user_id: str, link_id: str
) -> InviteLink:
    """The link stops working with this transaction."""
    principal.require_admin()
    links = InviteLinkRepository(session)
    link = await links.get_for_user(user_id, link_id)
    if link is None:
        raise NotFoundError(f"No invite link with id {link_id!r}.", param="link_id")
    await links.revoke(link, utcnow())
    return link
