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

from app.db.repositories.users import UserRepository
from app.errors import ForbiddenError, NotFoundError, UnauthorizedError

logger = logging.getLogger(__name__)

USER_KEY_PREFIX = "pqm-"
ADMIN_KEY_PREFIX = "pqm-admin-"
DISPLAY_PREFIX_LENGTH = 12


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    user_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ForbiddenError("This operation needs the admin key.")

    def require_access_to(self, user_id: str) -> None:
        """Admins see every user; a user sees only itself. Others get 404, never 403."""
        if not self.is_admin and self.user_id != user_id:
            raise NotFoundError(f"No user with id {user_id!r}.", param="user_id")


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
    user = await UserRepository(session).get_by_key_hash(hash_api_key(token))
    if user is None:
        raise UnauthorizedError("Incorrect API key provided.")
    return Principal(role=Role.USER, user_id=user.id)


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
