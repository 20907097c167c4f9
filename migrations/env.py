"""Alembic environment: the URL comes from the caller (`app.db.migrate`) or PQM_DATABASE_URL."""

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from app.config import Settings
from app.db import models  # noqa: F401  (registers the tables on Base.metadata)
from app.db.base import Base
from app.db.job_queue import procrastinate_owns
from app.db.session import sync_url

config = context.config
url = config.attributes.get("sqlalchemy_url") or sync_url(Settings().resolved_database_url)
MIGRATION_LOCK = 0x50514D  # "PQM": the advisory lock key every starter waits on


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            include_name=_ours,
        )
        with context.begin_transaction():
            _wait_for_other_starters(connection)
            context.run_migrations()
    engine.dispose()


def _ours(name: str | None, *_: object) -> bool:
    """procrastinate's tables (0008) are not in the ORM's metadata: autogenerate leaves them."""
    return not procrastinate_owns(name)


def _wait_for_other_starters(connection: Connection) -> None:
    """Replicas and workers started at once would each create the same tables: on PostgreSQL the
    first takes a transaction-scoped advisory lock, the others wait for its commit and then find
    the schema at head. SQLite serialises writers by itself."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})


if context.is_offline_mode():
    run_offline()
else:
    run_online()
