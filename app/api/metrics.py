"""GET /metrics in the Prometheus text format (admin key: counts reveal usage)."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import error_responses, success_response
from app.services.observability import render_metrics

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
    text = await render_metrics(session, principal, state.metrics, state.engine)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
