"""Enrolment: upload recordings with their transcripts; a job trains the speaker's adapter."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, UploadFile, status
from pydantic import AwareDatetime, Field

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import (
    EnrolmentJobList,
    EnrolmentJobPublic,
    FormOmitted,
    error_responses,
    success_response,
)
from app.services import enrolment
from app.services.enrolment import DEFAULT_METHOD, EnrolmentRequest, UploadedRecording

router = APIRouter(prefix="/v1", tags=["enrolment"])


@router.post(
    "/users/{user_id}/enrolments",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EnrolmentJobPublic,
    responses={**success_response(202), **error_responses(400, 401, 403, 404, 409, 413, 422)},
)
async def create_enrolment(
    user_id: str,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    files: Annotated[
        list[UploadFile] | FormOmitted,
        File(description="Recordings, one per sentence read; none: retrain on stored ones."),
    ] = None,
    transcripts: Annotated[
        list[str] | FormOmitted, Form(description="What each file says, in file order.")
    ] = None,
    method: Annotated[
        str,
        Form(
            description="`auto` (the default: LoRA, and SAML too when an expert bank is active; "
            "the one with fewer held-out word errors is offered for activation), `lora` or "
            "`saml` (needs an active expert bank). `rank` shapes LoRA only: SAML takes the "
            "bank's experts."
        ),
    ] = DEFAULT_METHOD,
    rank: Annotated[Annotated[int, Field(ge=1, le=64)] | FormOmitted, Form()] = None,
    epochs: Annotated[Annotated[int, Field(ge=1, le=50)] | FormOmitted, Form()] = None,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    since: Annotated[
        AwareDatetime | FormOmitted,
        Form(description="With no files: retrain on the recordings stored since this time."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="A retry with the same key gets the first request's job back instead "
            "of starting a second; the same key with a different request is a 409.",
        ),
    ] = None,
) -> EnrolmentJobPublic:
    recordings = [
        UploadedRecording(filename=upload.filename or f"files[{index}]", data=await upload.read())
        for index, upload in enumerate(files or [])
    ]
    request = EnrolmentRequest(
        recordings, transcripts or [], method, rank, epochs, seed, _utc(since), idempotency_key
    )
    job = await enrolment.create_enrolment(
        session,
        state.adapter_store,
        principal,
        user_id,
        request,
        state.settings.enrolment,
        state.settings.quotas,
        state.engine.info.fingerprint,
    )
    return EnrolmentJobPublic.model_validate(job)


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


@router.get(
    "/users/{user_id}/enrolments",
    response_model=EnrolmentJobList,
    responses={**success_response(), **error_responses(401, 404, 422)},
)
async def list_enrolments(
    user_id: str, session: SessionDep, principal: PrincipalDep
) -> EnrolmentJobList:
    jobs = await enrolment.list_jobs(session, principal, user_id)
    return EnrolmentJobList(data=[EnrolmentJobPublic.model_validate(job) for job in jobs])


@router.get(
    "/enrolments/{job_id}",
    response_model=EnrolmentJobPublic,
    responses={**success_response(), **error_responses(401, 404, 422)},
)
async def get_enrolment(
    job_id: str, session: SessionDep, principal: PrincipalDep
) -> EnrolmentJobPublic:
    return EnrolmentJobPublic.model_validate(await enrolment.get_job(session, principal, job_id))


@router.delete(
    "/enrolments/{job_id}",
    response_model=EnrolmentJobPublic,
    responses={**success_response(), **error_responses(401, 403, 404, 409, 422)},
)
async def cancel_enrolment(
    job_id: str, session: SessionDep, principal: PrincipalDep
) -> EnrolmentJobPublic:
    return EnrolmentJobPublic.model_validate(await enrolment.cancel_job(session, principal, job_id))
