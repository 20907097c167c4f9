"""Use case for observability: the service's metrics, with the gauges read at request time."""

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.enrolment_status import EnrolmentStatus
from app.db.repositories.enrolments import EnrolmentRepository
from app.engine.facade import SpeechEngine
from app.metrics import Metrics
from app.services.auth import Principal


async def render_metrics(
    session: AsyncSession,
    principal: Principal,
    metrics: Metrics,
    engine: SpeechEngine,
) -> bytes:
    """The Prometheus text exposition, for the admin only (counts reveal usage). Enrolment jobs
    by status, the transcription queue and the model's adapter slots are read now; the rest was
    counted as it happened."""
    principal.require_admin()
    counts = await EnrolmentRepository(session).count_by_status()
    for status in EnrolmentStatus:
        metrics.enrolment_jobs.labels(status).set(counts.get(status, 0))
    metrics.queue_pending.set(engine.pending)
    slots = engine.slot_stats()
    if slots is not None:
        metrics.adapters_resident.labels("slots").set(slots.resident)
        metrics.adapter_cache_bytes.labels("slots").set(slots.bank_bytes)
        metrics.count_slot_events(slots.hits, slots.misses, slots.evictions)
    return metrics.render()
