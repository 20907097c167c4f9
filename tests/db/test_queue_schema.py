"""Migration 0008: procrastinate's schema, on PostgreSQL only, is the one the installed
procrastinate ships (an upgrade of procrastinate needs a migration of its own: this fails first)."""

import importlib.util
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from types import ModuleType

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from app.db.job_queue import procrastinate_owns
from app.db.migrate import alembic_config, upgrade_to_head
from app.db.session import sync_url

MIGRATION = "2026_12_10_0900-0008_procrastinate.py"
PROCRASTINATE_TABLES = {
    "procrastinate_jobs",
    "procrastinate_workers",
    "procrastinate_events",
    "procrastinate_periodic_defers",
}


def _migration() -> ModuleType:
    path = Path(str(files("migrations"))) / "versions" / MIGRATION
    spec = importlib.util.spec_from_file_location("migration_0008", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _queue_tables(raw_url: str) -> set[str]:
    engine = create_engine(sync_url(raw_url))
    try:
        with engine.connect() as connection:
            names = inspect(connection).get_table_names()
    finally:
        engine.dispose()
    return {name for name in names if procrastinate_owns(name)}


def test_the_migration_applies_the_installed_procrastinates_schema() -> None:
    shipped = (files("procrastinate") / "sql" / "schema.sql").read_text()

    assert version("procrastinate").startswith("3.10.")
    assert shipped == _migration().PROCRASTINATE_3_10_0_SCHEMA


@pytest.mark.postgres
def test_procrastinates_tables_come_and_go_with_the_migration(database_url: str) -> None:
    upgrade_to_head(database_url)
    expected = PROCRASTINATE_TABLES if database_url.startswith("postgresql") else set()
    assert _queue_tables(database_url) == expected

    command.downgrade(alembic_config(database_url), "0007")

    assert _queue_tables(database_url) == set()
