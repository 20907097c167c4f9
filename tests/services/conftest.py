"""Fixtures the service tests share: a migrated database (SQLite and PostgreSQL) and a worker
context over it (its settings are the requesting module's `settings` fixture)."""

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters_store.sql import SqlBlobStore
from app.config import Settings
from app.engine.whisper import WhisperEngine
from app.services.job_worker import WorkerContext
from app.services.model_loading import load_engine
from tests.support.enrolments import migrated_sessions


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with migrated_sessions(database_url) as sessions:
        yield sessions


@pytest.fixture
async def context(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], nf4_engine: WhisperEngine
) -> AsyncIterator[WorkerContext]:
    engine = await load_engine(settings, nf4_engine)
    try:
        yield WorkerContext.create(settings, sessions, SqlBlobStore(sessions), engine)
    finally:
        engine.shutdown()
