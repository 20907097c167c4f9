"""Users: created by the admin; readable and deletable by the admin or the user itself."""

from fastapi import APIRouter, status
from fastapi.responses import StreamingResponse

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import (
    UserCreate,
    UserCreated,
    UserPublic,
    UserUpdate,
    error_responses,
    success_response,
)
from app.db.models import User
from app.services import export, users

router = APIRouter(prefix="/v1/users", tags=["users"])


def _public(user: User) -> UserPublic:
    return UserPublic(
        id=user.id,
        name=user.name,
        api_key_prefix=user.api_key_prefix,
        contribute_recordings=user.contribute_recordings,
        created_at=user.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserCreated,
    responses={**success_response(201), **error_responses(400, 401, 403, 413, 422)},
)
async def create_user(
    body: UserCreate, session: SessionDep, principal: PrincipalDep
) -> UserCreated:
    created = await users.create_user(session, principal, body.name)
    return UserCreated(**_public(created.user).model_dump(), api_key=created.api_key)


@router.get(
    "/{user_id}",
    response_model=UserPublic,
    responses={**success_response(), **error_responses(401, 404, 422)},
)
async def get_user(user_id: str, session: SessionDep, principal: PrincipalDep) -> UserPublic:
    return _public(await users.get_speaker(session, principal, user_id))


@router.patch(
    "/{user_id}",
    response_model=UserPublic,
    responses={**success_response(), **error_responses(400, 401, 403, 404, 413, 422)},
)
async def update_user(
    user_id: str, body: UserUpdate, session: SessionDep, principal: PrincipalDep
) -> UserPublic:
    """Changes what is given (the admin or the user's own key)."""
    user = await users.update_user(session, principal, user_id, body.contribute_recordings)
    return _public(user)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**success_response(204), **error_responses(401, 404, 422)},
)
async def delete_user(
    user_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> None:
    await users.delete_user(session, state.adapter_store, principal, user_id)


@router.post(
    "/{user_id}/key",
    response_model=UserCreated,
    responses={**success_response(), **error_responses(401, 403, 404, 422)},
)
async def rotate_key(user_id: str, session: SessionDep, principal: PrincipalDep) -> UserCreated:
    """A new API key, shown once; the old one stops working at once."""
    rotated = await users.rotate_key(session, principal, user_id)
    return UserCreated(**_public(rotated.user).model_dump(), api_key=rotated.api_key)


@router.get(
    "/{user_id}/export",
    response_class=StreamingResponse,
    responses={
        **success_response(content={"application/zip": {}}),
        **error_responses(401, 404, 422),
    },
)
async def export_user(
    user_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> StreamingResponse:
    """A zip of the user's recordings with transcripts, adapters and `metadata.json`."""
    plan = await export.plan_export(session, principal, user_id)
    return StreamingResponse(
        export.zip_stream(plan, state.adapter_store),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{plan.filename}"'},
    )
