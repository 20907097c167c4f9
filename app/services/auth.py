"""API keys and the principal a request acts as."""

import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.repositories.invite_links import InviteLinkRepository
from app.db.repositories.users import UserRepository
from app.errors import ForbiddenError, NotFoundError, UnauthorizedError

logger = logging.getLogger(__name__)

USER_KEY_PREFIX = "pqm-"
ADMIN_KEY_PREFIX = "pqm-admin-"
LINK_TOKEN_PREFIX = "pqm-link-"  # noqa: S105 (a prefix that names the kind of token)
DISPLAY_PREFIX_LENGTH = 12


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    LINK = "link"
    """An invite link's token: the speaker's page, without the user's API key."""


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    user_id: str | None = None
    link_id: str | None = None
    """The invite link a `LINK` principal came with."""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ForbiddenError("This operation needs the admin key.")

    def require_speaker_access_to(self, user_id: str) -> None:
        """What an invite link may do besides the user's own key and the admin: enrol,
        transcribe, add corrections and read the user's own things. Others get 404."""
        if not self.is_admin and self.user_id != user_id:
            raise NotFoundError(f"No user with id {user_id!r}.", param="user_id")

    def require_access_to(self, user_id: str) -> None:
        """Everything else on a user: the admin, or the user's own key; another user's id gets
        404, never 403. An invite link for the user gets 403 (it is deny by default: a new
        route allows links only by asking `require_speaker_access_to`)."""
        self.require_speaker_access_to(user_id)
        if self.role is Role.LINK:
            raise ForbiddenError(
                "An invite link may only enrol, transcribe, add corrections and read the "
                "user's own things; this needs the user's API key.",
                code="not_allowed_for_invite_link",
            )


def generate_user_key() -> str:
    return USER_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def authenticate(session: AsyncSession, token: str | None, admin_key: str) -> Principal:
    if not token:
        raise UnauthorizedError(
            "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    if hmac.compare_digest(token.encode(), admin_key.encode()):
        return Principal(role=Role.ADMIN)
    if token.startswith(LINK_TOKEN_PREFIX):
        return await _link_principal(session, token)
    user = await UserRepository(session).get_by_key_hash(hash_api_key(token))
    if user is None:
        raise UnauthorizedError("Incorrect API key provided.")
    return Principal(role=Role.USER, user_id=user.id)


async def _link_principal(session: AsyncSession, token: str) -> Principal:
    link = await InviteLinkRepository(session).usable_by_token_hash(hash_api_key(token), utcnow())
    if link is None:
        raise UnauthorizedError(
            "This invite link is unknown, revoked or expired; ask for a new one.",
            code="invalid_invite_link",
        )
    return Principal(role=Role.LINK, user_id=link.user_id, link_id=link.id)


def load_or_create_admin_key(configured: str | None, key_file: Path) -> str:
    """Returns the configured key, else the one stored in `key_file`, else a new stored one."""
    if configured:
        return configured
    if key_file.exists():
        return key_file.read_text().strip()
    key = ADMIN_KEY_PREFIX + secrets.token_urlsafe(32)
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    # Printed once, on purpose: it is the operator's only way to learn the generated key
    # besides reading the 0600 file.
    print(f"PQM: generated admin key (stored in {key_file}): {key}", flush=True)
    logger.warning("generated a new admin key", extra={"key_file": str(key_file)})
    return key
