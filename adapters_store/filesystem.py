import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store.base import (
    BlobCorruptedError,
    BlobNotFoundError,
    StoredBlob,
    sha256_hex,
    validate_key,
)

_HEADER_LENGTH = 65
"""Each file starts with the hex sha256 of its payload and a newline."""


class FilesystemStore:
    """Blobs as files under `root`, each one file holding its checksum and its bytes.

    One file per blob means one atomic rename per write: a reader sees the old blob or the new
    one, never new bytes with an old checksum.
    """

    joins_transactions = False

    def __init__(self, root: Path) -> None:
        self._root = root

    def bind(self, session: AsyncSession) -> "FilesystemStore":
        """Files live outside the database: the same store, whatever the transaction."""
        return self

    def _path(self, key: str) -> Path:
        return self._root / validate_key(key)

    async def put(self, key: str, data: bytes) -> StoredBlob:
        path = self._path(key)
        digest = sha256_hex(data)
        await asyncio.to_thread(_atomic_write, path, digest.encode() + b"\n" + data)
        return StoredBlob(key=key, size=len(data), sha256=digest)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(_read, key, self._path(key))

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete_prefix(self, prefix: str) -> int:
        return await asyncio.to_thread(_remove_tree, self._path(prefix))


def _remove_tree(root: Path) -> int:
    if not root.is_dir():
        return 0
    count = sum(1 for path in root.rglob("*") if path.is_file() and not path.name.startswith("."))
    shutil.rmtree(root)
    return count


def _read(key: str, path: Path) -> bytes:
    try:
        content = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise BlobNotFoundError(key) from exc
    expected, data = content[: _HEADER_LENGTH - 1], content[_HEADER_LENGTH:]
    if len(content) < _HEADER_LENGTH or sha256_hex(data).encode() != expected:
        raise BlobCorruptedError(f"checksum mismatch for {key!r}")
    return data


def _private_dirs(path: Path) -> None:
    """Creates `path` and any missing parent 0700: the blobs are voices and adapters. (mkstemp
    makes the files 0600.)"""
    if not path.is_dir():
        _private_dirs(path.parent)
        path.mkdir(mode=0o700, exist_ok=True)


def _atomic_write(path: Path, content: bytes) -> None:
    _private_dirs(path.parent)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
