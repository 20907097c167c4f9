import asyncio
import os
import tempfile
from pathlib import Path

from adapters_store.base import (
    BlobCorruptedError,
    BlobNotFoundError,
    StoredBlob,
    sha256_hex,
    validate_key,
)

_CHECKSUM_SUFFIX = ".sha256"


class FilesystemStore:
    """Blobs as files under `root`, each with a `.sha256` sidecar written after the data."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, key: str) -> Path:
        return self._root / validate_key(key)

    async def put(self, key: str, data: bytes) -> StoredBlob:
        path = self._path(key)
        digest = sha256_hex(data)
        await asyncio.to_thread(self._write, path, data, digest)
        return StoredBlob(key=key, size=len(data), sha256=digest)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._read, key, self._path(key))

    async def delete(self, key: str) -> None:
        path = self._path(key)
        for target in (Path(f"{path}{_CHECKSUM_SUFFIX}"), path):
            await asyncio.to_thread(target.unlink, missing_ok=True)

    async def exists(self, key: str) -> bool:
        checksum_path = Path(f"{self._path(key)}{_CHECKSUM_SUFFIX}")
        return await asyncio.to_thread(checksum_path.exists)

    @staticmethod
    def _write(path: Path, data: bytes, digest: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data)
        _atomic_write(Path(f"{path}{_CHECKSUM_SUFFIX}"), digest.encode())

    @staticmethod
    def _read(key: str, path: Path) -> bytes:
        checksum_path = Path(f"{path}{_CHECKSUM_SUFFIX}")
        try:
            expected = checksum_path.read_text().strip()
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(key) from exc
        if sha256_hex(data) != expected:
            raise BlobCorruptedError(f"checksum mismatch for {key!r}")
        return data


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
