"""A user's recordings: what enrolments upload, corrections, and prompts read one at a time."""

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from app.api.deps import PrincipalDep, SessionDep, StateDep
from app.api.schemas import (
    FormOmitted,
    RecordingList,
    RecordingPublic,
    error_responses,
    success_response,
)
from app.db.models import RecordingOrigin
from app.services import recordings
from app.services.recording_checks import UploadedRecording
from app.services.recordings import NewRecording

router = APIRouter(prefix="/v1/users/{user_id}/recordings", tags=["recordings"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RecordingPublic,
    responses={**success_response(201), **error_responses(400, 401, 403, 404, 413, 422)},
)
async def add_recording(
    user_id: str,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    file: Annotated[UploadFile, File(description="The audio (the per-file limits apply).")],
    transcript: Annotated[str, Form(min_length=1, description="What the audio says.")],
    origin: Annotated[RecordingOrigin, Form()] = RecordingOrigin.CORRECTION,
    request_id: Annotated[
        str | FormOmitted,
        Form(
            max_length=64,
            description="A correction's transcription: its X-Request-Id (counted in /metrics).",
        ),
    ] = None,
) -> RecordingPublic:
    upload = UploadedRecording(filename=file.filename or "file", data=await file.read())
    recording = await recordings.add_recording(
        session,
        state.adapter_store,
        principal,
        user_id,
        NewRecording(upload, transcript, origin, request_id),
        state.settings.enrolment,
        state.settings.quotas,
        state.transcription.served,
    )
    return RecordingPublic.model_validate(recording)


@router.get(
    "",
    response_model=RecordingList,
    responses={**success_response(), **error_responses(401, 404, 422)},
)
async def list_recordings(
    user_id: str, session: SessionDep, principal: PrincipalDep
) -> RecordingList:
    found = await recordings.list_recordings(session, principal, user_id)
    return RecordingList(data=[RecordingPublic.model_validate(r) for r in found])


@router.get(
    "/{recording_id}/audio",
    response_class=Response,
    responses={
        **success_response(content={"audio/flac": {}}),
        **error_responses(401, 404, 422, 500),
    },
)
async def get_recording_audio(
    user_id: str, recording_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> Response:
    data = await recordings.recording_audio(
        session, state.adapter_store, principal, user_id, recording_id
    )
    disposition = f'attachment; filename="{recording_id}.flac"'
    return Response(data, media_type="audio/flac", headers={"Content-Disposition": disposition})


@router.delete(
    "/{recording_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**success_response(204), **error_responses(401, 403, 404, 422)},
)
async def delete_recording(
    user_id: str, recording_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> None:
    await recordings.delete_recording(
        session, state.adapter_store, principal, user_id, recording_id
    )
