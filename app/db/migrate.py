"""Runs the Alembic migrations that ship inside the installed package."""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import URL

from app.db.session import ensure_sqlite_file, sync_url
from app.private_files import private_file


def alembic_config(raw_url: str) -> Config:
    script_location = Path(str(files("migrations")))
    config = Config()
    config.set_main_option("script_location", str(script_location))
    url = sync_url(raw_url)
    config.attributes["sqlalchemy_url"] = url
    return config


def upgrade_to_head(raw_url: str) -> None:
    """Safe for any number of processes started at once (PostgreSQL: an advisory lock in
    migrations/env.py; SQLite: a lock file beside the database)."""
    url = sync_url(raw_url)
    ensure_sqlite_file(url)
    with _sqlite_starters_one_at_a_time(url):
        command.upgrade(alembic_config(raw_url), "head")


@contextmanager
def _sqlite_starters_one_at_a_time(url: URL) -> Iterator[None]:
    # SQLite runs DDL outside a transaction, so a second starter would create the tables again.
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield
        return
    path = Path(f"{url.database}.migrate-lock")
    private_file(path)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
