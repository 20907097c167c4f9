"""The adapter store the settings name (shared by `pqm serve`, `pqm worker` and the CLI)."""

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters_store import AdapterStore, FilesystemStore, SqlBlobStore
from app.config import Settings

__all__ = ["adapter_store_for"]


def adapter_store_for(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> AdapterStore:
    if settings.adapter_store == "filesystem":
        return FilesystemStore(settings.data_dir / "adapters")
    return SqlBlobStore(sessions)
