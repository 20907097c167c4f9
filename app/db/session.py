"""Database engines and sessions. URLs are accepted in their plain form and mapped to drivers."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.private_files import private_dir, private_file

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


def _backend(url: URL) -> str:
    backend = url.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")
    return backend


def _normalise(raw_url: str) -> str:
    # `postgres://` is what many hosting providers hand out; SQLAlchemy only knows `postgresql`.
    return (
        "postgresql://" + raw_url.removeprefix("postgres://")
        if raw_url.startswith("postgres://")
        else raw_url
    )


def async_url(raw_url: str) -> URL:
    url = make_url(_normalise(raw_url))
    return url.set(drivername=_ASYNC_DRIVERS[_backend(url)])


def sync_url(raw_url: str) -> URL:
    url = make_url(_normalise(raw_url))
    return url.set(drivername=_SYNC_DRIVERS[_backend(url)])


def ensure_sqlite_file(url: URL) -> None:
    """A SQLite database file (and its directory) that only this user can read."""
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)
        private_dir(path.parent)
        private_file(path)


SQLITE_PAGE_CACHE_KIB = 256
"""Page cache per SQLite connection. SQLite's default (2 MiB) ends up full of adapter blob
pages on every pooled connection once many users' adapters are read: memory that grows with
the pool, outside the adapter cache's budget (measured: 8 connections reading 200 distinct
1.2 MB blobs kept +20 MiB with the default, +6 MiB with 256 KiB). The other tables are small."""


def _enable_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_PAGE_CACHE_KIB}")
    cursor.close()


def create_engine(raw_url: str) -> AsyncEngine:
    url = async_url(raw_url)
    ensure_sqlite_file(url)
    engine = create_async_engine(url, pool_pre_ping=url.get_backend_name() != "sqlite")
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _enable_sqlite_pragmas)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits on success, rolls back on any error."""
    async with sessions() as session, session.begin():
        yield session


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database is out of reach (stopped, restarting, the network, a
    connection it closed) rather than that a statement is wrong."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated
