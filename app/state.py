"""Everything the running service holds, created once by the lifespan and kept in `app.state`."""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from adapters_store import AdapterStore
from app.config import Settings
from app.engine.facade import SpeechEngine
from app.metrics import Metrics
from app.services.transcription import TranscriptionService


@dataclass(slots=True)
class ServiceState:
    settings: Settings
    db_engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    admin_key: str
    engine: SpeechEngine
    transcription: TranscriptionService
    adapter_store: AdapterStore
    metrics: Metrics
    started_at: int
    """Unix time the service started (reported as the model's `created`)."""
