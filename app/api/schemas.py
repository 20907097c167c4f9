"""Response and request bodies of the HTTP API (OpenAI field names where OpenAI defines them)."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool
from pydantic.json_schema import SkipJsonSchema

from app.db.enrolment_status import EnrolmentStatus
from app.db.models import AdapterStatus, RecordingOrigin
from app.services.auth import Role
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
    description: str | None = None
    """What the served weights are (an extension of OpenAI's model object)."""


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


_REFUSED_IN_NAMES = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_BLANK = r"\x20\xa0\u1680\u2000-\u200a\u202f\u205f\u3000"
"""The other characters `str.strip` removes (spelled out: `\\s` means other sets to other
regular expression engines)."""
PRINTABLE_NAME_PATTERN = (
    rf"^[^{_REFUSED_IN_NAMES}]*[^{_REFUSED_IN_NAMES}{_BLANK}][^{_REFUSED_IN_NAMES}]*$"
)
"""What `_printable_name` accepts, for the schema (the validator decides; this tells clients):
no character `unprintable_character` refuses, one at least not blank. Lone surrogates, refused
too, are left out: no Unicode text holds them, and schemathesis ignores a pattern naming them."""


class UserCreate(BaseModel):
    name: Annotated[
        str,
        Field(min_length=1, max_length=200, json_schema_extra={"pattern": PRINTABLE_NAME_PATTERN}),
        AfterValidator(_printable_name),
    ]


class UserPublic(BaseModel):
    id: str
    name: str
    api_key_prefix: str
    contribute_recordings: bool
    """Expert banks (which every speaker's SAML adapter starts from) may learn from the user's
    stored recordings."""
    created_at: Timestamp


class UserUpdate(BaseModel):
    contribute_recordings: StrictBool | None = None  # as JSON Schema: 0.0 is not `false`
    """false withdraws the user: every bank that learned from them is deactivated for good."""


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


REQUEST_ID_HEADER: dict[str, object] = {
    "X-Request-Id": {
        "description": "This request's id, also in the server's log lines about it.",
        "required": True,
        "schema": {"type": "string"},
    }
}
"""Sent with every response (`AccessLogMiddleware`): the request's own, when it offers a
well-formed one (8 to 64 of `A-Za-z0-9._-`), else a new one."""

FormOmitted = SkipJsonSchema[None]
"""The default of an optional form field, which a client gets by leaving the field out: a
multipart form has no null, so the schema offers none. Constraints go on the other member
(`Annotated[Annotated[int, Field(ge=1)] | FormOmitted, Form()]`): put on the union, they
reach the schema as keys JSON Schema does not know."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    return {status: {"model": ErrorResponse, "headers": REQUEST_ID_HEADER} for status in statuses}


def success_response(
    status: int = 200, headers: dict[str, object] | None = None, **extra: object
) -> dict[int | str, dict[str, object]]:
    """What the route's own success response does not say: its headers (and `extra`, such as
    other content types); FastAPI merges it into that response."""
    return {status: {"headers": {**REQUEST_ID_HEADER, **(headers or {})}, **extra}}


class PromptList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


class EnrolmentJobPublic(OrmModel):
    id: str
    object: Literal["enrolment"] = "enrolment"
    user_id: str
    status: EnrolmentStatus
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
    automatic: bool
    """Queued by the service itself after enough new recordings (the auto-retrain policy)."""
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
    status: AdapterStatus
    """`quarantined`: found unsafe (see `note`); never served, cannot be activated."""
    created_at: Timestamp


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterPublic]


class EnrolmentJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EnrolmentJobPublic]


class Me(BaseModel):
    object: Literal["me"] = "me"
    role: Role
    """`admin`, `user` (the user's API key) or `link` (an invite link's token)."""
    user_id: str | None
    name: str | None
    link_id: str | None = None
    link_expires_at: Timestamp | None = None


class RecordingPublic(OrmModel):
    id: str
    object: Literal["recording"] = "recording"
    user_id: str
    origin: RecordingOrigin
    transcript: str
    duration_seconds: float
    enrolment_id: str | None
    """The enrolment whose upload brought it, if one did."""
    created_at: Timestamp


class RecordingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RecordingPublic]


class InviteLinkCreate(BaseModel):
    expires_in: int | None = Field(default=None, ge=60)
    """Seconds the link works; unset: `PQM_LINKS__EXPIRES_AFTER_S`."""


class InviteLinkPublic(OrmModel):
    id: str
    object: Literal["invite_link"] = "invite_link"
    user_id: str
    expires_at: Timestamp
    revoked_at: Timestamp | None
    created_at: Timestamp


class InviteLinkCreated(InviteLinkPublic):
    url: str
    """The page's address with the token in its fragment; shown once."""
    token: str
    """The bearer token itself (what the page sends); shown once, stored hashed."""


class InviteLinkList(BaseModel):
    object: Literal["list"] = "list"
    data: list[InviteLinkPublic]


class ExpertBankCreate(BaseModel):
    experts: int | None = Field(default=None, ge=2, le=64)
    """At most this many experts (one per speaker, most recordings first); default 10."""
    epochs: int | None = Field(default=None, ge=1, le=100)
    """Epochs of routers and experts together over every contributor's recordings."""
    expert_epochs: int | None = Field(default=None, ge=1, le=100)
    """Epochs of each expert's own rank-1 LoRA on its speaker, first; default 4."""


class ExpertBankPublic(OrmModel):
    id: str
    object: Literal["expert_bank"] = "expert_bank"
    version: int
    base_fingerprint: str
    status: EnrolmentStatus
    progress: float
    message: str | None
    error: str | None
    experts: int
    router: str
    params: dict[str, Any]
    sha256: str | None
    size_bytes: int | None
    metrics: dict[str, Any] | None
    active: bool
    includes_withdrawn: bool
    """A contributor withdrew: never activated again."""
    contributors: int
    withdrawn_contributors: int
    cancel_requested: bool
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None


class ExpertBankList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ExpertBankPublic]
