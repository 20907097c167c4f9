"""GET /v1/auth/check: whether the request's key is valid, and nothing else.

For a reverse proxy's `auth_request` (docker/nginx/pqm.conf.template): the proxy asks it with the
caller's headers and no body before it reads the caller's body, so an unauthenticated upload
never reaches a replica."""

from fastapi import APIRouter, Response

from app.api.deps import PrincipalDep
from app.api.schemas import error_responses, success_response

router = APIRouter(prefix="/v1/auth", tags=["users"])


@router.get(
    "/check",
    status_code=204,
    response_class=Response,
    responses={**success_response(204), **error_responses(401, 503)},
)
async def check(_: PrincipalDep) -> Response:
    return Response(status_code=204)
