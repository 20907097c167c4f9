"""A user's data, theirs to take: one zip of their recordings (FLAC, with each transcript as
text), adapters (safetensors) and a `metadata.json` describing all of it.

The zip is streamed: the rows are read in the request's transaction, then each blob is read
from the store and written out one at a time, so memory holds one file, not the archive. A
blob missing or failing its checksum by then is left out and named in the metadata (written
last), never sent damaged.
"""

import io
import json
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore, BlobCorruptedError, BlobNotFoundError
from app.db.base import utcnow
from app.db.models import Adapter, EnrolmentJob, Recording
from app.db.repositories.adapters import AdapterRepository
from app.db.repositories.enrolments import EnrolmentRepository
from app.db.repositories.recordings import RecordingRepository
from app.services.auth import Principal
from app.services.users import get_speaker

FORMAT = "pqm-export/1"

__all__ = ["ExportPlan", "plan_export", "zip_stream"]


@dataclass(frozen=True, slots=True)
class _Blob:
    name: str
    key: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ExportPlan:
    filename: str
    blobs: list[_Blob]
    texts: dict[str, str]
    """Small text files (transcripts), by name in the zip."""
    metadata: dict[str, Any]


async def plan_export(session: AsyncSession, principal: Principal, user_id: str) -> ExportPlan:
    user = await get_speaker(session, principal, user_id)
    recordings = await RecordingRepository(session).list_for_user(user_id)
    adapters = await AdapterRepository(session).list_for_user(user_id)
    jobs = await EnrolmentRepository(session).list_for_user(user_id)
    blobs = [_Blob(f"recordings/{r.id}.flac", r.blob_key, r.created_at) for r in recordings]
    blobs += [_Blob(f"adapters/{a.id}.safetensors", a.blob_key, a.created_at) for a in adapters]
    return ExportPlan(
        filename=f"pqm-export-{user.id}.zip",
        blobs=blobs,
        texts={f"recordings/{r.id}.txt": r.transcript + "\n" for r in recordings},
        metadata={
            "format": FORMAT,
            "exported_at": _iso(utcnow()),
            "user": {"id": user.id, "name": user.name, "created_at": _iso(user.created_at)},
            "recordings": [_recording(r) for r in recordings],
            "adapters": [_adapter(a) for a in adapters],
            "enrolments": [_job(j) for j in jobs],
        },
    )


async def zip_stream(plan: ExportPlan, store: AdapterStore) -> AsyncIterator[bytes]:
    sink = _Sink()
    omitted: list[dict[str, str]] = []
    with zipfile.ZipFile(sink, "w") as archive:
        for name, text in plan.texts.items():
            archive.writestr(name, text, compress_type=zipfile.ZIP_DEFLATED)
        yield sink.drain()
        for blob in plan.blobs:
            try:
                data = await store.get(blob.key)
            except (BlobNotFoundError, BlobCorruptedError) as exc:
                reason = "missing" if isinstance(exc, BlobNotFoundError) else "checksum mismatch"
                omitted.append({"file": blob.name, "reason": reason})
                continue
            info = zipfile.ZipInfo(blob.name, _zip_time(blob.at))
            archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)  # already compact
            yield sink.drain()
        metadata = {**plan.metadata, "omitted": omitted}
        archive.writestr(
            "metadata.json", json.dumps(metadata, indent=2), compress_type=zipfile.ZIP_DEFLATED
        )
    yield sink.drain()


class _Sink(io.RawIOBase):
    """A write-only, unseekable file: zipfile then writes each entry's sizes after its data,
    so entries can be sent as soon as they are written."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        return len(chunk)

    def drain(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def _zip_time(value: datetime) -> tuple[int, int, int, int, int, int]:
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return (max(utc.year, 1980), utc.month, utc.day, utc.hour, utc.minute, utc.second)


def _recording(recording: Recording) -> dict[str, Any]:
    return {
        "id": recording.id,
        "file": f"recordings/{recording.id}.flac",
        "transcript": recording.transcript,
        "origin": recording.origin,
        "duration_seconds": recording.duration_seconds,
        "enrolment_id": recording.enrolment_id,
        "created_at": _iso(recording.created_at),
    }


def _adapter(adapter: Adapter) -> dict[str, Any]:
    return {
        "id": adapter.id,
        "file": f"adapters/{adapter.id}.safetensors",
        "version": adapter.version,
        "method": adapter.method,
        "rank": adapter.rank,
        "base_fingerprint": adapter.base_fingerprint,
        "sha256": adapter.sha256,
        "source": adapter.source,
        "enrolment_id": adapter.enrolment_id,
        "active": adapter.active,
        "status": adapter.status,
        "note": adapter.note,
        "metrics": adapter.metrics,
        "created_at": _iso(adapter.created_at),
    }


def _job(job: EnrolmentJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "method": job.method,
        "params": job.params,
        "utterance_count": job.utterance_count,
        "audio_seconds": job.audio_seconds,
        "adapter_id": job.adapter_id,
        "activated": job.activated,
        "activation_reason": job.activation_reason,
        "metrics": job.metrics,
        "created_at": _iso(job.created_at),
        "finished_at": _iso(job.finished_at),
    }
