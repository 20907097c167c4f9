import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
MAX_KEY_LENGTH = 255
MAX_SEGMENT_LENGTH = 200
"""Per path segment: the filesystem store adds a `.sha256` sidecar and temp-file affixes to a
segment, and file names are limited to 255 bytes."""


class StoreError(Exception):
    """Base class for adapter-store failures."""


class InvalidKeyError(StoreError):
    pass


class BlobNotFoundError(StoreError):
    pass


class BlobCorruptedError(StoreError):
    """The stored bytes do not match the checksum recorded when they were written."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


class AdapterStore(Protocol):
    @property
    def joins_transactions(self) -> bool:
        """Whether a bound store's writes commit or roll back with the session's transaction
        (blobs in the database); False: they happen at once, outside it (files)."""
        ...

    async def put(self, key: str, data: bytes) -> StoredBlob:
        """Stores `data` atomically (readers see the old blob or the new one, never a mix)."""
        ...

    async def get(self, key: str) -> bytes:
        """Returns the blob, verified against its checksum."""
        ...

    async def delete(self, key: str) -> None:
        """Removes the blob; deleting a missing key is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Removes every blob whose key starts with `prefix` + "/"; returns how many."""
        ...

    def bind(self, session: AsyncSession) -> "AdapterStore":
        """The store as seen from inside `session`'s transaction (for backends that live in
        the database, writes then commit or roll back with it)."""
        ...


def validate_key(key: str) -> str:
    """Keys are slash-separated names such as `users/<id>/<adapter>.safetensors`."""
    segments = key.split("/")
    if (
        len(key) > MAX_KEY_LENGTH
        or not _KEY_PATTERN.fullmatch(key)
        or ".." in segments
        or any(len(segment) > MAX_SEGMENT_LENGTH for segment in segments)
    ):
        raise InvalidKeyError(f"invalid adapter store key {key!r}")
    return key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
