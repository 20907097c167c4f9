"""`pqm serve` and `pqm worker` started, as compose starts them, before their database accepts
connections: they wait (one log line per attempt, no password shown), then either go on once
PostgreSQL appears or exit non-zero with one line naming the database."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import (
    ADMIN_KEY,
    START_WITHIN_S,
    Postgres,
    Process,
    compose_command,
    compose_environment,
    postgres_bin,
    spawn,
)
from tests.support.live import free_port
from tests.support.waiting import until

EXIT_WITHIN_S = 120.0
PASSWORD = "not-to-be-logged"


def _environment(service: str, database_url: str, data_dir: Path, wait_s: float) -> dict[str, str]:
    return {
        **compose_environment(service),
        "PQM_ADMIN_KEY": ADMIN_KEY,
        "PQM_LOG_JSON": "true",
        "PQM_DATABASE_URL": database_url,
        "PQM_DATA_DIR": str(data_dir),
        "PQM_DATABASE_WAIT_S": str(wait_s),
    }


def _log_entries(process: Process, logger: str) -> list[dict[str, Any]]:
    entries = []
    for line in process.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry: dict[str, Any] = json.loads(line)
            if entry.get("logger") == logger:
                entries.append(entry)
    return entries


def _attempts(process: Process) -> list[dict[str, Any]]:
    return [e for e in _log_entries(process, "app.db.wait") if e["level"] == "warning"]


@pytest.mark.parametrize("service", ["api", "worker"])
def test_gives_up_after_the_bound_naming_the_database(service: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://pqm:{PASSWORD}@127.0.0.1:{port}/pqm"
    shown = f"postgresql://pqm@127.0.0.1:{port}/pqm"
    options = {"host": "127.0.0.1", "port": str(free_port())} if service == "api" else {}
    command = compose_command(service, **options)
    process = spawn(service, command, tmp_path, _environment(service, url, tmp_path / "data", 2))
    try:
        returncode = process.popen.wait(timeout=EXIT_WITHIN_S)
    finally:
        process.stop()

    output = process.log.read_text(errors="replace")
    assert returncode == 1, output
    assert PASSWORD not in output
    attempts = _attempts(process)
    assert [entry["attempt"] for entry in attempts] == list(range(1, len(attempts) + 1))
    assert len(attempts) >= 2, output  # 0.5 s, then 1 s, ... within 2 s
    for entry in attempts:
        assert entry["database"] == shown
        assert entry["msg"].startswith(f"database {shown} not reachable (attempt ")
        assert "Connection refused" in entry["msg"]
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith(
        f"error: database {shown} not reachable after 2 s ({len(attempts) + 1} attempts): "
    ), output
    assert "Traceback" not in output


@pytest.mark.slow
async def test_serves_once_postgres_appears(tiny_en_dir: Path, tmp_path: Path) -> None:
    """Started against a port where PostgreSQL is not yet: it waits, and is ready (migrated,
    model loaded) once a server starts there, with no restart."""
    try:
        postgres_bin("initdb")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    postgres = Postgres(tmp_path)
    port = free_port()
    command = compose_command("api", host="127.0.0.1", port=str(port))
    environment = {
        **_environment("api", postgres.url, tmp_path / "data", START_WITHIN_S),
        "PQM_MODEL__PATH": str(tiny_en_dir),
        "PQM_MODEL__THREADS": "1",
    }
    process = spawn("api", command, tmp_path, environment)
    try:

        async def waiting() -> bool:
            assert process.alive, process.tail()
            return len(_attempts(process)) >= 1

        await until(waiting, EXIT_WITHIN_S, "a first attempt logged")
        # initdb, start, CREATE DATABASE: the replica keeps trying meanwhile.
        await asyncio.to_thread(postgres.create)

        async def ready() -> bool:
            assert process.alive, process.tail()
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    response = await client.get(f"http://127.0.0.1:{port}/readyz")
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await until(ready, START_WITHIN_S, "the replica ready")
        reached = [e for e in _log_entries(process, "app.db.wait") if e["level"] == "info"]
        assert len(reached) == 1, process.tail()
        assert reached[0]["attempt"] == len(_attempts(process)) + 1 >= 2
        assert (
            reached[0]["msg"]
            == f"database {postgres.url} reachable (attempt {reached[0]['attempt']})"
        )
    finally:
        await asyncio.to_thread(process.stop)
        await asyncio.to_thread(postgres.destroy)


def test_sqlite_is_not_waited_for(tmp_path: Path) -> None:
    """A file, no server: nothing to wait for, whatever the bound."""
    from app.db.wait import wait_for_database

    wait_for_database(f"sqlite:///{tmp_path / 'pqm.db'}", within_s=0)


def test_printable_url_drops_the_password() -> None:
    from app.db.wait import printable_url

    assert (
        printable_url(f"postgres://pqm:{PASSWORD}@db:5432/pqm?password={PASSWORD}&sslmode=require")
        == "postgresql://pqm@db:5432/pqm?sslmode=require"
    )
