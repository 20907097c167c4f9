"""POST /v1/audio/transcriptions and /v1/audio/translations, OpenAI-compatible."""

from typing import Annotated, Literal, get_args

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import Field

from app.api.deps import PrincipalDep, StateDep
from app.api.disconnect import cancel_on_disconnect
from app.api.schemas import (
    REQUEST_ID_HEADER,
    ErrorResponse,
    FormOmitted,
    TranscriptionJson,
    error_responses,
    success_response,
)
from app.services import formats
from app.services.formats import ResponseFormat
from app.services.transcription import (
    AdapterFallback,
    TranscriptionOutcome,
    TranscriptionRequest,
)

router = APIRouter(prefix="/v1/audio", tags=["audio"])

ADAPTER_HEADER = "X-Adapter-Id"
FALLBACK_HEADER = "X-Adapter-Fallback"
"""Present when the caller's adapter was not applied: `adapter_numeric_error` (its decode went
non-finite; the adapter is now quarantined) or `adapter_unavailable` (its weights could not be
loaded)."""
MAX_BEAM_SIZE = 8


_RESPONSES = {
    **success_response(
        headers={
            ADAPTER_HEADER: {
                "description": "The id of the adapter applied, or `none`.",
                "required": True,
                "schema": {"type": "string"},
            },
            FALLBACK_HEADER: {
                "description": "Why the caller's adapter was not applied, when it was not.",
                "schema": {"enum": list(get_args(AdapterFallback))},
            },
        },
        # The other response formats (`json` and `verbose_json` are JSON).
        content={"text/plain": {}, "text/vtt": {}, "application/x-subrip": {}},
    ),
    **error_responses(400, 401, 403, 404, 413, 422),
    503: {
        "model": ErrorResponse,
        "description": "Too many transcriptions queued; try again later.",
        "headers": {
            **REQUEST_ID_HEADER,
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "required": True,
                "schema": {"type": "integer"},
            },
        },
    },
}
AudioFile = Annotated[UploadFile, File(description="Audio: wav, flac, mp3, ogg, webm, m4a, ...")]
ModelName = Annotated[str, Form(min_length=1)]
Prompt = Annotated[Annotated[str, Field(max_length=4000)] | FormOmitted, Form()]
Format = Annotated[ResponseFormat, Form()]
Temperature = Annotated[float, Form(ge=0.0, le=1.0)]
AsUser = Annotated[
    str | FormOmitted, Form(description="Admin only: transcribe as this user, with their adapter.")
]
Personalise = Annotated[
    bool, Form(description="false: use the base model even if an adapter is active.")
]
BeamSize = Annotated[
    int, Form(ge=1, le=MAX_BEAM_SIZE, description="Beam search width (1: greedy).")
]


@router.post("/transcriptions", response_model=TranscriptionJson, responses=_RESPONSES)
async def create_transcription(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    file: AudioFile,
    model: ModelName,
    language: Annotated[Annotated[str, Field(max_length=16)] | FormOmitted, Form()] = None,
    prompt: Prompt = None,
    response_format: Format = "json",
    temperature: Temperature = 0.0,
    timestamp_granularities: Annotated[
        list[Literal["word", "segment"]] | FormOmitted, Form(alias="timestamp_granularities[]")
    ] = None,
    stream: Annotated[bool, Form()] = False,
    user: AsUser = None,
    personalise: Personalise = True,
    beam_size: BeamSize = 1,
) -> Response:
    transcription_request = TranscriptionRequest(
        audio=await file.read(),
        model=model,
        response_format=response_format,
        language=language,
        prompt=prompt,
        temperature=temperature,
        timestamp_granularities=list(timestamp_granularities or []),
        stream=stream,
        user=user,
        personalise=personalise,
        beam_size=beam_size,
    )
    return await _answer(request, state, principal, transcription_request)


@router.post(
    "/translations",
    response_model=TranscriptionJson,
    responses=_RESPONSES,
    description="English text from speech in any language (multilingual models; 400 on an "
    "English-only one).",
)
async def create_translation(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    file: AudioFile,
    model: ModelName,
    prompt: Prompt = None,
    response_format: Format = "json",
    temperature: Temperature = 0.0,
    user: AsUser = None,
    personalise: Personalise = True,
    beam_size: BeamSize = 1,
) -> Response:
    translation_request = TranscriptionRequest(
        audio=await file.read(),
        model=model,
        response_format=response_format,
        prompt=prompt,
        temperature=temperature,
        user=user,
        personalise=personalise,
        beam_size=beam_size,
        task="translate",
    )
    return await _answer(request, state, principal, translation_request)


async def _answer(
    request: Request, state: StateDep, principal: PrincipalDep, asked: TranscriptionRequest
) -> Response:
    outcome = await cancel_on_disconnect(request, state.transcription.transcribe(principal, asked))
    return _render(outcome, asked.response_format)


def _render(outcome: TranscriptionOutcome, response_format: ResponseFormat) -> Response:
    headers = {ADAPTER_HEADER: outcome.adapter_id or "none"}
    if outcome.fallback is not None:
        headers[FALLBACK_HEADER] = outcome.fallback
    transcription = outcome.transcription
    match response_format:
        case "json":
            return JSONResponse(formats.to_json(transcription), headers=headers)
        case "verbose_json":
            return JSONResponse(formats.to_verbose_json(transcription), headers=headers)
        case "text":
            return PlainTextResponse(formats.to_text(transcription), headers=headers)
        case "srt":
            return PlainTextResponse(
                formats.to_srt(transcription), media_type="application/x-subrip", headers=headers
            )
        case "vtt":
            return PlainTextResponse(
                formats.to_vtt(transcription), media_type="text/vtt", headers=headers
            )
