"""A user's adapters: list, delete, activate."""

from fastapi import APIRouter, status

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import AdapterList, AdapterPublic, error_responses
from app.services import adapters

router = APIRouter(prefix="/v1/users/{user_id}/adapters", tags=["adapters"])


@router.get("", response_model=AdapterList, responses=error_responses(401, 404))
async def list_adapters(user_id: str, session: SessionDep, principal: PrincipalDep) -> AdapterList:
    rows = await adapters.list_adapters(session, principal, user_id)
    return AdapterList(data=[AdapterPublic.model_validate(row) for row in rows])


@router.delete(
    "/{adapter_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 404)
)
async def delete_adapter(
    user_id: str, adapter_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> None:
    await adapters.delete_adapter(session, state.adapter_store, principal, user_id, adapter_id)


@router.post(
    "/{adapter_id}/activate",
    response_model=AdapterPublic,
    responses=error_responses(401, 404, 409),
)
async def activate_adapter(
    user_id: str, adapter_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> AdapterPublic:
    adapter = await adapters.activate_adapter(
        session, principal, user_id, adapter_id, state.recognizer.info.fingerprint
    )
    return AdapterPublic.model_validate(adapter)
