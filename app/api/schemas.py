"""Response and request bodies of the HTTP API (OpenAI field names where OpenAI defines them)."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pqm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class UserPublic(BaseModel):
    id: str
    name: str
    api_key_prefix: str
    created_at: datetime


class UserCreated(UserPublic):
    api_key: str
    """Shown once: only its hash is stored."""


class Health(BaseModel):
    status: Literal["ok", "ready", "unavailable"]
    model: str | None = None
    reason: str | None = None


class TranscriptionJson(BaseModel):
    text: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    return {status: {"model": ErrorResponse} for status in statuses}
