"""Liveness and readiness probes (no authentication: they reveal nothing)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import StateDep
from app.api.schemas import REQUEST_ID_HEADER, Health, success_response

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses=success_response())
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={
        **success_response(),
        503: {"model": Health, "headers": REQUEST_ID_HEADER, "description": "Not ready."},
    },
)
async def readyz(state: StateDep) -> JSONResponse:
    try:
        async with state.db_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:  # any failure to reach the database means not ready
        body = Health(status="unavailable", reason="database unreachable")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return JSONResponse(Health(status="ready", model=state.transcription.model_id).model_dump())
