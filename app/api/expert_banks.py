"""Expert banks (admin only): build one from contributors' recordings, inspect, activate,
delete."""

from fastapi import APIRouter, status

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import (
    ExpertBankCreate,
    ExpertBankList,
    ExpertBankPublic,
    error_responses,
    success_response,
)
from app.services import expert_banks
from app.services.expert_banks import BankBuild, BankView

router = APIRouter(prefix="/v1/expert-banks", tags=["expert-banks"])


_COUNTED = {"object", "contributors", "withdrawn_contributors"}
"""Fields of `ExpertBankPublic` that are not the bank row's columns."""


def _public(view: BankView) -> ExpertBankPublic:
    columns = {
        name: getattr(view.bank, name)
        for name in ExpertBankPublic.model_fields
        if name not in _COUNTED
    }
    return ExpertBankPublic(
        **columns,
        contributors=view.contributors,
        withdrawn_contributors=view.withdrawn_contributors,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExpertBankPublic,
    responses={**success_response(202), **error_responses(400, 401, 403, 413, 422)},
)
async def create_bank(
    body: ExpertBankCreate, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> ExpertBankPublic:
    """Queues a build from the stored recordings of every user with
    `contribute_recordings=true` (at least 2 of them)."""
    build = BankBuild(experts=body.experts, epochs=body.epochs, expert_epochs=body.expert_epochs)
    fingerprint = state.engine.info.fingerprint
    return _public(await expert_banks.request_build(session, principal, fingerprint, build))


@router.get(
    "",
    response_model=ExpertBankList,
    responses={**success_response(), **error_responses(401, 403)},
)
async def list_banks(session: SessionDep, principal: PrincipalDep) -> ExpertBankList:
    """Newest first."""
    views = await expert_banks.list_banks(session, principal)
    return ExpertBankList(data=[_public(view) for view in views])


@router.get(
    "/{bank_id}",
    response_model=ExpertBankPublic,
    responses={**success_response(), **error_responses(401, 403, 404, 422)},
)
async def get_bank(bank_id: str, session: SessionDep, principal: PrincipalDep) -> ExpertBankPublic:
    return _public(await expert_banks.get_bank(session, principal, bank_id))


@router.post(
    "/{bank_id}/activate",
    response_model=ExpertBankPublic,
    responses={**success_response(), **error_responses(401, 403, 404, 409, 422)},
)
async def activate_bank(
    bank_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> ExpertBankPublic:
    """New SAML adapters start from this bank; 409 unless it was built for the served base
    model and learned from no one who withdrew."""
    fingerprint = state.engine.info.fingerprint
    return _public(await expert_banks.activate_bank(session, principal, bank_id, fingerprint))


@router.delete(
    "/{bank_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**success_response(204), **error_responses(401, 403, 404, 422)},
)
async def delete_bank(
    bank_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> None:
    """The bank's file and row; SAML adapters keep their own copies, so nothing served breaks."""
    await expert_banks.delete_bank(session, state.adapter_store, principal, bank_id)
