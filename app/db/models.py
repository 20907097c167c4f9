"""Typed SQLAlchemy 2 models. All SQL lives in `app.db`."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, TimestampMixin


def new_id() -> str:
    return uuid.uuid4().hex


class User(TimestampMixin, Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 of the key: keys are 256-bit random tokens, so a fast hash is not brute-forceable."""
    api_key_prefix: Mapped[str] = mapped_column(String(16))
    """The first characters of the key, for people to recognise which key is which."""
    contribute_recordings: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    """The user lets expert banks (shared by every speaker's SAML adapters) learn from their
    stored recordings; turning it off withdraws them (see `ExpertBankRepository.withdraw`)."""


class AdapterBlob(TimestampMixin, Base):
    """Adapter weights stored in the database (the default adapter-store backend)."""

    __tablename__ = "adapter_blobs"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))


class AdapterStatus(StrEnum):
    """Whether an adapter may serve. `ready` -> `quarantined` is the only transition: an
    adapter found unsafe (out of bounds, or its decode went non-finite) is never served again;
    the user activates another, or imports or trains a new one."""

    READY = "ready"
    QUARANTINED = "quarantined"


class Adapter(TimestampMixin, Base):
    """A speaker's LoRA adapter: metadata here, weights in the adapter store under `blob_key`."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("user_id", "version"),
        # At most one active adapter per user, enforced by the database itself.
        Index(
            "uq_adapters_one_active_per_user",
            "user_id",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(32))
    rank: Mapped[int] = mapped_column(Integer)
    target_modules: Mapped[list[str]] = mapped_column(JSON)
    base_fingerprint: Mapped[str] = mapped_column(String(64))
    encoder_window: Mapped[str] = mapped_column(String(8))
    blob_key: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    parameter_count: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(16))
    """`enrolment` (trained here) or `import` (uploaded)."""
    enrolment_id: Mapped[str | None] = mapped_column(String(32), default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(String(500), default=None)
    """Why the adapter is inactive, when the acceptance gate or a quarantine made it so."""
    status: Mapped[str] = mapped_column(
        String(16), default=AdapterStatus.READY, server_default=AdapterStatus.READY.value
    )
    """An `AdapterStatus`; a quarantined adapter is never active."""


class JobMixin(TimestampMixin):
    """What every kind of background job records, for `JobRepository`: its status (an
    `EnrolmentStatus`, changed only through its transitions), progress and outcome, and which
    worker runs it since when."""

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    message: Mapped[str | None] = mapped_column(String(500), default=None)
    error: Mapped[str | None] = mapped_column(String(2000), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(64), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    queue_job_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    """The procrastinate job that dispatches this job now (PostgreSQL); None on SQLite, where
    jobs run in-process (`app.db.job_queue`)."""


class EnrolmentJob(JobMixin, Base):
    __tablename__ = "enrolment_jobs"
    __table_args__ = (
        UniqueConstraint(
            "user_id", "idempotency_key", name="uq_enrolment_jobs_user_idempotency_key"
        ),
    )

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Training overrides the user asked for (rank, epochs, seed)."""
    utterance_count: Mapped[int] = mapped_column(Integer)
    audio_seconds: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    adapter_id: Mapped[str | None] = mapped_column(String(32), default=None)
    activated: Mapped[bool | None] = mapped_column(Boolean, default=None)
    activation_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    automatic: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Queued by the service itself (`enrolment.auto_retrain_after`), not asked for."""
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    """The client's `Idempotency-Key`: a retry with it gets this job, never a second one."""
    request_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    """sha256 of what the request asked for (`EnrolmentRequest.digest`), to tell a retry from
    a different request reusing the key."""


class RecordingOrigin(StrEnum):
    """How a recording came: uploaded to enrol, or a correction of a transcript (the audio that
    was transcribed with the text it should have given)."""

    ENROLMENT = "enrolment"
    CORRECTION = "correction"


class Recording(TimestampMixin, Base):
    """One utterance and what it says: 16 kHz FLAC in the blob store, kept so adapters can be
    (re)trained from it."""

    __tablename__ = "recordings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    enrolment_id: Mapped[str | None] = mapped_column(
        ForeignKey("enrolment_jobs.id", ondelete="CASCADE"), index=True, default=None
    )
    """The enrolment whose upload brought it; None for recordings added on their own."""
    origin: Mapped[str] = mapped_column(
        String(16),
        default=RecordingOrigin.ENROLMENT,
        server_default=RecordingOrigin.ENROLMENT.value,
    )
    """A `RecordingOrigin`."""
    transcript: Mapped[str] = mapped_column(Text)
    blob_key: Mapped[str] = mapped_column(String(255))
    duration_seconds: Mapped[float] = mapped_column(Float)


class EnrolmentRecording(Base):
    """Which recordings an enrolment job trains on, in order: those its upload brought, or, for
    a retraining, the user's stored ones."""

    __tablename__ = "enrolment_recordings"

    enrolment_id: Mapped[str] = mapped_column(
        ForeignKey("enrolment_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[str] = mapped_column(
        ForeignKey("recordings.id", ondelete="CASCADE"), index=True
    )


class InviteLink(TimestampMixin, Base):
    """A short-lived token that lets a speaker enrol, try and correct without an API key."""

    __tablename__ = "invite_links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 of the token (a 256-bit random string, like API keys)."""
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class ExpertBank(JobMixin, Base):
    """A SAML expert bank for one base model, and the job that builds it: the bank's file
    (`pqm-saml/1`, kind `bank`) lies in the adapter store under `blob_key` once it succeeded.
    Every speaker's SAML adapter starts from a copy of the active bank."""

    __tablename__ = "expert_banks"
    __table_args__ = (
        UniqueConstraint("base_fingerprint", "version"),
        # At most one active bank per base model, enforced by the database itself.
        Index(
            "uq_expert_banks_one_active_per_fingerprint",
            "base_fingerprint",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    base_fingerprint: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    experts: Mapped[int] = mapped_column(Integer)
    """Asked for at most; the built bank's own count once it succeeded."""
    router: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Build settings (epochs, expert epochs, seed)."""
    blob_key: Mapped[str | None] = mapped_column(String(255), default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    size_bytes: Mapped[int | None] = mapped_column(Integer, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    includes_withdrawn: Mapped[bool] = mapped_column(Boolean, default=False)
    """A contributor withdrew (deleted, or stopped contributing): never active again."""


class ExpertBankContributor(Base):
    """A user whose stored recordings a bank learns from. The row outlives the user (`user_id`
    then None) so that a bank keeps saying it learned from someone who withdrew."""

    __tablename__ = "expert_bank_contributors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    bank_id: Mapped[str] = mapped_column(
        ForeignKey("expert_banks.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    recordings: Mapped[int] = mapped_column(Integer)
    """How many of the user's recordings the build uses (those stored when it was asked for)."""
    withdrawn: Mapped[bool] = mapped_column(Boolean, default=False)
