"""What an enrolment asks for, and the job that records it (shared by the enrolment use cases
and the auto-retrain policy)."""

import hashlib
from dataclasses import dataclass
from datetime import datetime

from app.db.models import EnrolmentJob, Recording
from app.engine.adaptation.registry import method_names
from app.services.recording_checks import UploadedRecording

AUTO = "auto"
"""Train LoRA, and SAML too when an expert bank exists; offer the better one (`method_choice`)."""
ENROLMENT_METHODS = (*method_names(), AUTO)
DEFAULT_METHOD = AUTO
"""On speechocean762's evaluation half SAML served 3.7 points more than LoRA and `auto` never
served a speaker worse than the base (docs/benchmarks/enrolment_methods.json); without an active
expert bank `auto` is LoRA alone."""

__all__ = ["AUTO", "DEFAULT_METHOD", "ENROLMENT_METHODS", "EnrolmentRequest", "new_job"]


@dataclass(frozen=True, slots=True)
class EnrolmentRequest:
    recordings: list[UploadedRecording]
    """Empty (with no transcripts): retrain on the user's stored recordings."""
    transcripts: list[str]
    method: str = DEFAULT_METHOD
    rank: int | None = None
    epochs: int | None = None
    seed: int = 0
    since: datetime | None = None
    """A retraining uses the stored recordings made at or after this time (None: all)."""

    idempotency_key: str | None = None
    """The client's `Idempotency-Key` header: a retry with it gets the first job back."""

    @property
    def retrains(self) -> bool:
        return not self.recordings and not self.transcripts

    def digest(self) -> str:
        """sha256 of everything the request asks for (files, transcripts, options)."""
        sha = hashlib.sha256()
        since = self.since.isoformat() if self.since else ""
        options = f"{self.method}|{self.rank}|{self.epochs}|{self.seed}|{since}"
        for part in (options, *self.transcripts):
            sha.update(hashlib.sha256(part.encode()).digest())
        for recording in self.recordings:
            sha.update(hashlib.sha256(recording.data).digest())
        return sha.hexdigest()


def new_job(
    job_id: str,
    user_id: str,
    request: EnrolmentRequest,
    recordings: list[Recording],
    *,
    automatic: bool = False,
) -> EnrolmentJob:
    """The job to record (not added) that trains on `recordings`."""
    params: dict[str, object] = {"rank": request.rank, "epochs": request.epochs}
    params["seed"] = request.seed
    if request.retrains:
        params["retrain"] = True
        params["since"] = request.since.isoformat() if request.since else None
    keyed = request.idempotency_key is not None
    return EnrolmentJob(
        id=job_id,
        user_id=user_id,
        idempotency_key=request.idempotency_key,
        request_digest=request.digest() if keyed else None,
        method=request.method,
        params=params,
        utterance_count=len(recordings),
        audio_seconds=round(sum(r.duration_seconds for r in recordings), 3),
        progress=0.0,
        cancel_requested=False,
        automatic=automatic,
        attempts=0,
    )
