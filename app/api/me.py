"""GET /v1/me: who the request's key stands for."""

from fastapi import APIRouter

from app.api.deps import PrincipalDep, SessionDep
from app.api.schemas import Me, error_responses, success_response
from app.services import users

router = APIRouter(prefix="/v1", tags=["users"])


@router.get("/me", response_model=Me, responses={**success_response(), **error_responses(401)})
async def me(session: SessionDep, principal: PrincipalDep) -> Me:
    identity = await users.identify(session, principal)
    return Me(
        role=principal.role,
        user_id=identity.user.id if identity.user else None,
        name=identity.user.name if identity.user else None,
        link_id=identity.link.id if identity.link else None,
        link_expires_at=identity.link.expires_at if identity.link else None,
    )
