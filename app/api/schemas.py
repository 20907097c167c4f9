"""Response and request bodies of the HTTP API (OpenAI field names where OpenAI defines them)."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.text_rules import unprintable_character


def _in_utc(value: datetime) -> datetime:
    """SQLite keeps no offset (its values were written in UTC); PostgreSQL answers in the
    session's time zone. Both go out the same way: UTC, with its offset."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Timestamp = Annotated[datetime, AfterValidator(_in_utc)]


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


def _printable_name(value: str) -> str:
    """Names are shown in logs, lists and pages: printable (see `unprintable_character`), not
    blank."""
    found = unprintable_character(value)
    if found is not None:
        raise ValueError(f"must not contain control characters (found {found})")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class UserCreate(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable_name)]


class UserPublic(BaseModel):
    id: str
    name: str
    api_key_prefix: str
    created_at: Timestamp


class UserCreated(UserPublic):
    api_key: str
    """Shown once: only its hash is stored."""


class OrmModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Health(BaseModel):
    status: Literal["ok", "ready", "unavailable"]
    model: str | None = None
    reason: str | None = None


class TranscriptionJson(BaseModel):
    text: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    return {status: {"model": ErrorResponse} for status in statuses}


class PromptList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


class EnrolmentJobPublic(OrmModel):
    id: str
    object: Literal["enrolment"] = "enrolment"
    user_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    method: str
    params: dict[str, Any]
    utterance_count: int
    audio_seconds: float
    progress: float
    eta_seconds: float | None
    message: str | None
    error: str | None
    metrics: dict[str, Any] | None
    adapter_id: str | None
    activated: bool | None
    activation_reason: str | None
    cancel_requested: bool
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class AdapterPublic(OrmModel):
    id: str
    object: Literal["adapter"] = "adapter"
    user_id: str
    version: int
    method: str
    rank: int
    target_modules: list[str]
    base_fingerprint: str
    encoder_window: str
    size_bytes: int
    sha256: str
    parameter_count: int
    metrics: dict[str, Any]
    source: str
    enrolment_id: str | None
    active: bool
    note: str | None
    status: Literal["ready", "quarantined"]
    """`quarantined`: found unsafe (see `note`); never served, cannot be activated."""
    created_at: Timestamp


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterPublic]
