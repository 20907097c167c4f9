"""Invite links: the admin (or an app backend holding its key) lets a speaker in by link."""

from typing import Annotated

from fastapi import APIRouter, Body, Request, status

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import (
    InviteLinkCreate,
    InviteLinkCreated,
    InviteLinkList,
    InviteLinkPublic,
    error_responses,
    success_response,
)
from app.services import invite_links

router = APIRouter(prefix="/v1/users/{user_id}/links", tags=["invite links"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=InviteLinkCreated,
    responses={**success_response(201), **error_responses(400, 401, 403, 404, 413, 422)},
)
async def create_link(
    user_id: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    body: Annotated[InviteLinkCreate | None, Body()] = None,
) -> InviteLinkCreated:
    created = await invite_links.create_link(
        session,
        principal,
        user_id,
        body.expires_in if body is not None else None,
        state.settings.links,
        state.settings.public_url or str(request.base_url),
    )
    public = InviteLinkPublic.model_validate(created.link)
    return InviteLinkCreated(**public.model_dump(), url=created.url, token=created.token)


@router.get(
    "",
    response_model=InviteLinkList,
    responses={**success_response(), **error_responses(401, 403, 404, 422)},
)
async def list_links(user_id: str, session: SessionDep, principal: PrincipalDep) -> InviteLinkList:
    links = await invite_links.list_links(session, principal, user_id)
    return InviteLinkList(data=[InviteLinkPublic.model_validate(link) for link in links])


@router.delete(
    "/{link_id}",
    response_model=InviteLinkPublic,
    responses={**success_response(), **error_responses(401, 403, 404, 422)},
)
async def revoke_link(
    user_id: str, link_id: str, session: SessionDep, principal: PrincipalDep
) -> InviteLinkPublic:
    link = await invite_links.revoke_link(session, principal, user_id, link_id)
    return InviteLinkPublic.model_validate(link)
