"""Engines as `create_engine` makes them: the SQLite connection settings the service relies on."""

from pathlib import Path

from sqlalchemy import text

from app.db.session import SQLITE_PAGE_CACHE_KIB, create_engine


async def test_every_sqlite_connection_gets_the_service_settings(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'service.db'}")
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.execute(text(f"PRAGMA {name}"))).scalar_one()
                for name in ("foreign_keys", "journal_mode", "busy_timeout", "cache_size")
            }
    finally:
        await engine.dispose()
    assert pragmas == {
        "foreign_keys": 1,
        "journal_mode": "wal",
        "busy_timeout": 5000,
        "cache_size": -SQLITE_PAGE_CACHE_KIB,  # negative: KiB, not pages
    }
