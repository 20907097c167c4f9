"""After the served model changed: every user whose active adapter was trained for another base
model (its fingerprint does not match) is re-enrolled from their stored recordings, as a job
each (`pqm adapters retrain`), which the gate decides as any enrolment."""

import asyncio
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adapters_store import AdapterStore
from app.config import Settings
from app.db.migrate import upgrade_to_head
from app.db.models import Adapter, AdapterStatus
from app.db.session import create_engine, create_sessionmaker, transaction
from app.engine.model_import import describe_model_dir
from app.errors import AppError
from app.services.auth import Principal, Role
from app.services.enrolment import EnrolmentRequest, create_enrolment
from app.services.model_loading import resolve_model_dir
from app.services.stores import adapter_store_for

__all__ = ["Retraining", "retrain_for_model", "retrain_served_model"]


@dataclass(slots=True)
class Retraining:
    queued: dict[str, str] = field(default_factory=dict)
    """user id -> the job queued for them."""
    skipped: dict[str, str] = field(default_factory=dict)
    """user id -> why no job was queued (no stored recordings, a job already waiting, ...)."""


async def retrain_for_model(
    sessions: async_sessionmaker[AsyncSession],
    store: AdapterStore,
    settings: Settings,
    fingerprint: str,
) -> Retraining:
    """Queues a retraining (the default method, every stored recording) for each user whose
    active adapter does not fit the model with `fingerprint`; each in its own transaction, so
    one user's refusal leaves the others' jobs."""
    async with sessions() as session:
        users = await _users_to_retrain(session, fingerprint)
    outcome = Retraining()
    admin = Principal(Role.ADMIN)
    request = EnrolmentRequest(recordings=[], transcripts=[])
    for user_id in users:
        try:
            async with transaction(sessions) as session:
                job = await create_enrolment(
                    session,
                    store,
                    admin,
                    user_id,
                    request,
                    settings.enrolment,
                    settings.quotas,
                    fingerprint,
                )
            outcome.queued[user_id] = job.id
        except AppError as exc:
            outcome.skipped[user_id] = exc.message
    return outcome


async def _users_to_retrain(session: AsyncSession, fingerprint: str) -> list[str]:
    rows = await session.scalars(
        select(Adapter.user_id)
        .where(
            Adapter.active.is_(True),
            Adapter.status == AdapterStatus.READY,
            Adapter.base_fingerprint != fingerprint,
        )
        .order_by(Adapter.user_id)
    )
    return list(rows)


async def retrain_served_model(settings: Settings) -> Retraining:
    """`retrain_for_model` against the model `settings` serve, in their database and store."""
    model_dir = await asyncio.to_thread(resolve_model_dir, settings)
    fingerprint = describe_model_dir(model_dir).fingerprint
    database_url = settings.resolved_database_url
    await asyncio.to_thread(upgrade_to_head, database_url)
    engine = create_engine(database_url)
    try:
        sessions = create_sessionmaker(engine)
        store = adapter_store_for(settings, sessions)
        return await retrain_for_model(sessions, store, settings, fingerprint)
    finally:
        await engine.dispose()
