"""The shipped Alembic migrations build the schema the ORM expects, on SQLite and PostgreSQL."""

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy import create_engine as create_sync_engine

from app.db import models  # noqa: F401  (registers the tables on Base.metadata)
from app.db.base import Base
from app.db.job_queue import procrastinate_owns
from app.db.migrate import alembic_config, upgrade_to_head
from app.db.session import async_url, sync_url

APP_TABLES = {
    "users",
    "adapter_blobs",
    "adapters",
    "enrolment_jobs",
    "recordings",
    "enrolment_recordings",
    "invite_links",
    "expert_banks",
    "expert_bank_contributors",
}


@contextmanager
def connect(raw_url: str) -> Iterator[Connection]:
    engine = create_sync_engine(sync_url(raw_url))
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def table_names(raw_url: str) -> set[str]:
    """The tables besides procrastinate's (PostgreSQL only: `test_queue_schema.py`)."""
    with connect(raw_url) as connection:
        names = inspect(connection).get_table_names()
    return {name for name in names if not procrastinate_owns(name)}


def current_revision(raw_url: str) -> str | None:
    with connect(raw_url) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(raw_url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(raw_url)).get_current_head()
    assert head is not None
    return head


def schema_diffs(raw_url: str) -> list[object]:
    with connect(raw_url) as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": lambda name, *_: not procrastinate_owns(name)}
        )
        return list(compare_metadata(context, Base.metadata))


@pytest.mark.postgres
def test_upgrade_creates_the_tables(database_url: str) -> None:
    assert table_names(database_url) == set()

    upgrade_to_head(database_url)

    assert table_names(database_url) == APP_TABLES | {"alembic_version"}
    assert current_revision(database_url) == head_revision(database_url)
    with connect(database_url) as connection:
        inspector = inspect(connection)
        users = {column["name"] for column in inspector.get_columns("users")}
        blobs = {column["name"] for column in inspector.get_columns("adapter_blobs")}
        unique = inspector.get_unique_constraints("users")
    assert users == {
        "id",
        "name",
        "api_key_hash",
        "api_key_prefix",
        "contribute_recordings",
        "created_at",
    }
    assert blobs == {"key", "data", "size", "sha256", "created_at"}
    assert [constraint["column_names"] for constraint in unique] == [["api_key_hash"]]


@pytest.mark.postgres
def test_upgrade_is_idempotent(database_url: str) -> None:
    upgrade_to_head(database_url)
    with connect(database_url) as connection, connection.begin():
        connection.execute(
            text(
                "INSERT INTO users (id, name, api_key_hash, api_key_prefix, created_at) "
                "VALUES ('u1', 'alice', 'h1', 'pqm-abc', CURRENT_TIMESTAMP)"
            )
        )

    upgrade_to_head(database_url)

    assert table_names(database_url) == APP_TABLES | {"alembic_version"}
    assert current_revision(database_url) == head_revision(database_url)
    with connect(database_url) as connection:
        names = connection.execute(text("SELECT name FROM users")).scalars().all()
    assert names == ["alice"], "a second upgrade must not touch existing data"


@pytest.mark.postgres
def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    config = alembic_config(database_url)
    upgrade_to_head(database_url)

    command.downgrade(config, "base")
    assert table_names(database_url) <= {"alembic_version"}
    assert current_revision(database_url) is None

    command.upgrade(config, "head")
    assert table_names(database_url) == APP_TABLES | {"alembic_version"}
    assert current_revision(database_url) == head_revision(database_url)
    assert schema_diffs(database_url) == []


@pytest.mark.postgres
def test_orm_metadata_matches_the_migrations(database_url: str) -> None:
    upgrade_to_head(database_url)

    assert schema_diffs(database_url) == []


@pytest.mark.postgres
def test_comparison_detects_a_schema_that_drifted(database_url: str) -> None:
    """Guards the test above: the comparison does see a difference when there is one."""
    upgrade_to_head(database_url)
    with connect(database_url) as connection, connection.begin():
        connection.execute(text("ALTER TABLE users ADD COLUMN stray INTEGER"))

    diffs = schema_diffs(database_url)

    assert any(diff[0] == "remove_column" for diff in diffs if isinstance(diff, tuple)), diffs


@pytest.mark.parametrize(
    ("raw", "async_driver", "sync_driver"),
    [
        ("sqlite:///x", "sqlite+aiosqlite", "sqlite"),
        ("sqlite:////abs/dir/pqm.db", "sqlite+aiosqlite", "sqlite"),
        ("postgresql://u:p@db.example:5433/pqm", "postgresql+psycopg", "postgresql+psycopg"),
        ("postgres://u:p@db.example:5433/pqm", "postgresql+psycopg", "postgresql+psycopg"),
    ],
)
def test_urls_map_to_drivers(raw: str, async_driver: str, sync_driver: str) -> None:
    for mapped, driver in ((async_url(raw), async_driver), (sync_url(raw), sync_driver)):
        assert mapped.drivername == driver
        if raw.startswith("sqlite"):
            assert mapped.database == raw.removeprefix("sqlite:///")
        else:
            assert (mapped.username, mapped.password) == ("u", "p")
            assert (mapped.host, mapped.port, mapped.database) == ("db.example", 5433, "pqm")


@pytest.mark.parametrize("raw", ["mysql://u:p@localhost/pqm", "mysql+pymysql://u@h/db"])
def test_unsupported_databases_are_rejected(raw: str) -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        async_url(raw)
    with pytest.raises(ValueError, match="unsupported database"):
        sync_url(raw)


def _upgrade_after(barrier: Any, raw_url: str) -> None:
    barrier.wait()
    upgrade_to_head(raw_url)


def test_simultaneous_starters_all_come_up_on_one_schema(database_url: str) -> None:
    """Compose starts every replica and worker at once against a fresh database."""
    starters = 4
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(starters)
    processes = [
        spawn.Process(target=_upgrade_after, args=(barrier, database_url)) for _ in range(starters)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    assert [process.exitcode for process in processes] == [0] * starters
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert current_revision(database_url) == head
    assert table_names(database_url) >= APP_TABLES


@pytest.mark.postgres
def test_enrolment_recordings_survive_the_recordings_resource_migration(database_url: str) -> None:
    """0005: recordings stored by an enrolment before it become recordings of origin
    `enrolment`, still what their job trains on, in their order; and a downgrade brings back
    the positions."""
    config = alembic_config(database_url)
    command.upgrade(config, "0004")
    with connect(database_url) as connection, connection.begin():
        connection.execute(
            text(
                "INSERT INTO users (id, name, api_key_hash, api_key_prefix, created_at) "
                "VALUES ('u1', 'alice', 'h1', 'pqm-abc', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO enrolment_jobs (id, user_id, status, method, params, "
                "utterance_count, audio_seconds, progress, cancel_requested, attempts, "
                "created_at) VALUES ('j1', 'u1', 'succeeded', 'lora', '{}', 2, 4.0, 1.0, "
                "false, 1, CURRENT_TIMESTAMP)"
            )
        )
        for rid, position in (("r2", 1), ("r1", 0)):
            connection.execute(
                text(
                    "INSERT INTO recordings (id, user_id, enrolment_id, position, transcript, "
                    "blob_key, duration_seconds, created_at) VALUES (:id, 'u1', 'j1', :p, "
                    "'hello', :key, 2.0, CURRENT_TIMESTAMP)"
                ),
                {"id": rid, "p": position, "key": f"users/u1/recordings/j1/{position:04d}.flac"},
            )

    command.upgrade(config, "head")

    with connect(database_url) as connection:
        links = connection.execute(
            text("SELECT recording_id FROM enrolment_recordings ORDER BY position")
        ).scalars()
        assert list(links) == ["r1", "r2"]
        origins = connection.execute(text("SELECT DISTINCT origin FROM recordings")).scalars()
        assert list(origins) == ["enrolment"]

    command.downgrade(config, "0004")

    with connect(database_url) as connection:
        rows = connection.execute(text("SELECT id, position FROM recordings ORDER BY id"))
        assert [tuple(row) for row in rows] == [("r1", 0), ("r2", 1)]
