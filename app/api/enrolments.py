"""Enrolment: upload recordings with their transcripts; a job trains the speaker's adapter."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from pydantic import Field

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import EnrolmentJobPublic, FormOmitted, error_responses, success_response
from app.services import enrolment
from app.services.enrolment import DEFAULT_METHOD, EnrolmentRequest, UploadedRecording

router = APIRouter(prefix="/v1", tags=["enrolment"])


@router.post(
    "/users/{user_id}/enrolments",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EnrolmentJobPublic,
    responses={**success_response(202), **error_responses(400, 401, 404, 409, 413, 422)},
)
async def create_enrolment(
    user_id: str,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    files: Annotated[
        list[UploadFile], File(min_length=1, description="Recordings, one per sentence read.")
    ],
    transcripts: Annotated[
        list[str], Form(min_length=1, description="What each file says, in file order.")
    ],
    method: Annotated[str, Form()] = DEFAULT_METHOD,
    rank: Annotated[Annotated[int, Field(ge=1, le=64)] | FormOmitted, Form()] = None,
    epochs: Annotated[Annotated[int, Field(ge=1, le=50)] | FormOmitted, Form()] = None,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
) -> EnrolmentJobPublic:
    recordings = [
        UploadedRecording(filename=upload.filename or f"files[{index}]", data=await upload.read())
        for index, upload in enumerate(files)
    ]
    job = await enrolment.create_enrolment(
        session,
        state.adapter_store,
        principal,
        user_id,
        EnrolmentRequest(recordings, transcripts, method, rank, epochs, seed),
        state.settings.enrolment,
    )
    return EnrolmentJobPublic.model_validate(job)


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
    responses={**success_response(), **error_responses(401, 404, 409, 422)},
)
async def cancel_enrolment(
    job_id: str, session: SessionDep, principal: PrincipalDep
) -> EnrolmentJobPublic:
    return EnrolmentJobPublic.model_validate(await enrolment.cancel_job(session, principal, job_id))
