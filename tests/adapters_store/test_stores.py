"""One contract, every adapter-store backend: the filesystem and SQL blobs on SQLite/PostgreSQL."""

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from adapters_store import (
    AdapterStore,
    BlobCorruptedError,
    BlobNotFoundError,
    FilesystemStore,
    InvalidKeyError,
    SqlBlobStore,
    StoredBlob,
    StoreError,
)
from adapters_store.base import sha256_hex
from app.db.migrate import upgrade_to_head
from app.db.session import create_engine, create_sessionmaker

KEY = "users/0123456789abcdef/voice-v1.safetensors"
INVALID_KEYS = [
    pytest.param("../x", id="parent"),
    pytest.param("/abs", id="absolute"),
    pytest.param("a//b", id="empty-segment"),
    pytest.param("", id="empty"),
    pytest.param("a" * 300, id="300-chars"),
    pytest.param("a/" + "b" * 254, id="256-chars"),
    pytest.param("c" * 201, id="201-char-segment"),
    pytest.param("a/../b", id="dot-dot-inside"),
    pytest.param("a/./b", id="dot-segment"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a b", id="space"),
    pytest.param("a/\x00b", id="nul"),
]


@dataclass
class Backend:
    store: AdapterStore
    corrupt: Callable[[str], Awaitable[None]]
    """Changes the stored bytes of a key behind the store's back."""
    root: Path | None = None
    """The filesystem store's directory (None for SQL)."""


def payload(size: int = 300 * 1024) -> bytes:
    return os.urandom(size)


@pytest.fixture(
    params=[
        "filesystem",
        "sql-sqlite",
        pytest.param("sql-postgresql", marks=pytest.mark.postgres),
    ]
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "filesystem":
        root = tmp_path / "adapters"

        async def flip_a_byte(key: str) -> None:
            path = root / key
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))

        yield Backend(store=FilesystemStore(root), corrupt=flip_a_byte, root=root)
        return

    if request.param == "sql-sqlite":
        url = f"sqlite:///{tmp_path / 'pqm.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade_to_head(url)
    engine = create_engine(url)

    async def overwrite_data_column(key: str) -> None:
        async with engine.begin() as connection:
            result = await connection.execute(
                text('UPDATE adapter_blobs SET data = :data WHERE "key" = :key'),
                {"data": b"not the weights that were stored", "key": key},
            )
            assert result.rowcount == 1

    try:
        yield Backend(
            store=SqlBlobStore(create_sessionmaker(engine)), corrupt=overwrite_data_column
        )
    finally:
        await engine.dispose()


async def test_put_get_round_trip(backend: Backend) -> None:
    data = payload()

    stored = await backend.store.put(KEY, data)

    assert stored == StoredBlob(key=KEY, size=len(data), sha256=sha256_hex(data))
    got = await backend.store.get(KEY)
    assert type(got) is bytes
    assert got == data


async def test_empty_blob_round_trips(backend: Backend) -> None:
    await backend.store.put("empty.bin", b"")

    assert await backend.store.exists("empty.bin")
    assert await backend.store.get("empty.bin") == b""


async def test_keys_are_independent(backend: Backend) -> None:
    blobs = {f"users/{user}/{name}": payload(1024) for user in "ab" for name in ("x", "y.st")}
    for key, data in blobs.items():
        await backend.store.put(key, data)

    for key, data in blobs.items():
        assert await backend.store.get(key) == data


async def test_overwrite_replaces(backend: Backend) -> None:
    first, second = payload(), payload(100 * 1024)
    await backend.store.put(KEY, first)

    stored = await backend.store.put(KEY, second)

    assert stored.size == len(second)
    assert stored.sha256 == sha256_hex(second)
    assert await backend.store.get(KEY) == second


async def test_exists(backend: Backend) -> None:
    assert not await backend.store.exists(KEY)
    await backend.store.put(KEY, payload(1024))
    assert await backend.store.exists(KEY)
    assert not await backend.store.exists(KEY + ".other")
    await backend.store.delete(KEY)
    assert not await backend.store.exists(KEY)


async def test_delete_is_idempotent(backend: Backend) -> None:
    await backend.store.put(KEY, payload(1024))
    await backend.store.put("keep", b"keep me")

    await backend.store.delete(KEY)
    await backend.store.delete(KEY)
    await backend.store.delete("never/stored")

    with pytest.raises(BlobNotFoundError):
        await backend.store.get(KEY)
    assert await backend.store.get("keep") == b"keep me"


async def test_missing_key_is_not_found(backend: Backend) -> None:
    with pytest.raises(BlobNotFoundError):
        await backend.store.get("users/nobody/nothing.safetensors")


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_invalid_keys_are_rejected(backend: Backend, key: str) -> None:
    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: backend.store.put(key, b"data"),
        lambda: backend.store.get(key),
        lambda: backend.store.delete(key),
        lambda: backend.store.exists(key),
    ]
    for operation in operations:
        with pytest.raises(InvalidKeyError):
            await operation()
    if backend.root is not None:
        assert not backend.root.exists() or not any(backend.root.rglob("*"))


async def test_longest_valid_key_is_accepted(backend: Backend) -> None:
    key = "k" * 200 + "/" + "j" * 54
    assert len(key) == 255
    await backend.store.put(key, b"data")
    assert await backend.store.get(key) == b"data"


async def test_corruption_is_detected_on_read(backend: Backend) -> None:
    await backend.store.put(KEY, payload())
    await backend.store.put("neighbour", b"fine")

    await backend.corrupt(KEY)

    with pytest.raises(BlobCorruptedError):
        await backend.store.get(KEY)
    assert await backend.store.get("neighbour") == b"fine"
    # A fresh write heals the blob.
    fresh = payload(2048)
    await backend.store.put(KEY, fresh)
    assert await backend.store.get(KEY) == fresh


async def test_errors_share_a_base_class(backend: Backend) -> None:
    with pytest.raises(StoreError):
        await backend.store.get("missing")
    with pytest.raises(StoreError):
        await backend.store.get("../escape")


async def test_concurrent_puts_of_different_keys(backend: Backend) -> None:
    blobs = {f"users/u{index}/adapter.safetensors": payload(20 * 1024) for index in range(8)}

    await asyncio.gather(*(backend.store.put(key, data) for key, data in blobs.items()))

    for key, data in blobs.items():
        assert await backend.store.get(key) == data


# ------------------------------------------------------------------ filesystem specifics


async def test_filesystem_store_leaves_no_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    store = FilesystemStore(root)
    for round_ in range(3):
        await store.put(KEY, payload(64 * 1024))
        await store.put(f"other/{round_}.bin", payload(1024))
    await store.delete("other/0.bin")

    files = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())

    assert files == sorted(
        [
            KEY,
            "other/1.bin",
            "other/2.bin",
        ]
    )


async def test_filesystem_store_writes_inside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    store = FilesystemStore(root)
    data = payload(1024)

    await store.put(KEY, data)

    assert (root / KEY).read_bytes() == sha256_hex(data).encode() + b"\n" + data
    assert sorted(os.listdir(tmp_path)) == ["adapters"]


async def test_filesystem_blob_without_checksum_header_is_corrupted(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    store = FilesystemStore(root)
    data = payload(1024)
    await store.put(KEY, data)

    (root / KEY).write_bytes(data)  # e.g. copied in by hand, without the checksum header

    with pytest.raises(BlobCorruptedError):
        await store.get(KEY)


async def test_keys_that_look_like_sidecars_do_not_collide(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "adapters")
    await store.put("a", b"first")
    await store.put("a.sha256", b"second")
    assert await store.get("a") == b"first"
    assert await store.get("a.sha256") == b"second"
