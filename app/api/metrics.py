"""GET /metrics in the Prometheus text format (admin key: counts reveal usage)."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import error_responses, success_response
from app.db.enrolment_status import EnrolmentStatus
from app.db.repositories.enrolments import EnrolmentRepository

router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **success_response(content={CONTENT_TYPE_LATEST: {}}),
        **error_responses(401, 403),
    },
)
async def metrics(state: StateDep, session: SessionDep, principal: PrincipalDep) -> Response:
    principal.require_admin()
    counts = await EnrolmentRepository(session).count_by_status()
    for status in EnrolmentStatus:
        state.metrics.enrolment_jobs.labels(status).set(counts.get(status, 0))
    state.metrics.queue_pending.set(state.scheduler.pending)
    slots = state.recognizer.slot_stats()
    if slots is not None:
        state.metrics.adapters_resident.labels("slots").set(slots.resident)
        state.metrics.adapter_cache_bytes.labels("slots").set(slots.bank_bytes)
        state.metrics.count_slot_events(slots.hits, slots.misses, slots.evictions)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
