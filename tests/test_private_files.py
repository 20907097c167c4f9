"""Voice recordings, key hashes and adapters are readable by the service's user alone."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters_store import FilesystemStore
from app.engine.whisper import WhisperEngine
from app.main import create_app
from app.private_files import private_dir, private_file
from tests.conftest import bearer, make_settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual 022: what the service creates must be private without help from the umask."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("loose_umask")
async def test_a_new_data_dir_and_its_database_are_private(
    tmp_path: Path, nf4_engine: WhisperEngine
) -> None:
    data = tmp_path / "data"
    application = create_app(make_settings(data, admin_key=None), recognizer=nf4_engine)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        admin = bearer((data / "admin_key").read_text().strip())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            created = await client.post("/v1/users", json={"name": "alice"}, headers=admin)
            assert created.status_code == 201, created.text
        assert mode(data / "pqm.db-wal") == 0o600

    assert mode(data) == 0o700
    assert mode(data / "pqm.db") == 0o600
    assert mode(data / "admin_key") == 0o600


@pytest.mark.usefixtures("loose_umask")
def test_an_older_install_left_readable_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    database = data / "pqm.db"
    for path in (database, data / "pqm.db-wal"):
        path.write_bytes(b"")
        path.chmod(0o644)

    private_dir(data)
    private_file(database)

    assert mode(data) == 0o700
    assert mode(database) == mode(data / "pqm.db-wal") == 0o600


@pytest.mark.usefixtures("loose_umask")
async def test_the_filesystem_store_keeps_blobs_private(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    store = FilesystemStore(root)
    await store.put("users/alice/adapter-1", b"weights")

    written = [path for path in root.rglob("*") if path.is_file()]
    assert written
    for path in written:
        assert mode(path) == 0o600
        assert all(mode(parent) == 0o700 for parent in path.parents if root in parent.parents)
