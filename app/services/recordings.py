"""Use cases for a user's recordings: add one (a correction, or a prompt read for enrolment),
list, fetch the audio, delete; and storing the audio of any recording."""

import asyncio
import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from sqlalchemy.ext.asyncio import AsyncSession

from adapters_store import AdapterStore, BlobCorruptedError, BlobNotFoundError
from app.config import EnrolmentSettings, QuotaSettings
from app.db.models import Recording, RecordingOrigin, new_id
from app.db.repositories.recordings import RecordingRepository
from app.engine.training import Utterance
from app.errors import DataIntegrityError, NotFoundError
from app.services.auth import Principal
from app.services.auto_retrain import queue_if_due
from app.services.blob_keys import recording_key
from app.services.quotas import check_room_for
from app.services.recording_checks import (
    CheckedRecording,
    UploadedRecording,
    check_file_size,
    checked_transcript,
    decode_recording,
    flac,
)
from app.services.served_transcripts import ServedTranscripts
from app.services.users import get_speaker


@dataclass(frozen=True, slots=True)
class NewRecording:
    upload: UploadedRecording
    transcript: str
    origin: RecordingOrigin = RecordingOrigin.CORRECTION
    request_id: str | None = None
    """For a correction: the `X-Request-Id` of the transcription it corrects, so that the word
    errors it reveals are counted (see `ServedTranscripts`)."""


async def add_recording(
    session: AsyncSession,
    store: AdapterStore,
    principal: Principal,
    user_id: str,
    new: NewRecording,
    limits: EnrolmentSettings,
    quotas: QuotaSettings,
    served: ServedTranscripts,
) -> Recording:
    """Checked as each file of an enrolment upload is (`recording_checks`), within the user's
    quotas; may queue an automatic retraining (`auto_retrain`)."""
    await get_speaker(session, principal, user_id)
    check_file_size(new.upload, "file", limits)
    transcript = checked_transcript(new.transcript, "transcript", limits)
    audio = await asyncio.to_thread(decode_recording, new.upload, "file", limits)
    checked = CheckedRecording(audio=audio, transcript=transcript)
    await check_room_for(session, user_id, 1, checked.seconds, quotas)
    store = store.bind(session)
    [recording] = await store_recordings(store, user_id, [checked], new.origin)
    try:
        await RecordingRepository(session).add(recording)
        await queue_if_due(session, user_id, limits)
    except Exception:
        await undo_stored(store, [recording])
        raise
    if new.request_id is not None and new.origin is RecordingOrigin.CORRECTION:
        served.count_correction(new.request_id, user_id, transcript)
    return recording


async def list_recordings(
    session: AsyncSession, principal: Principal, user_id: str
) -> list[Recording]:
    """Newest first."""
    await get_speaker(session, principal, user_id)
    return list(reversed(await RecordingRepository(session).list_for_user(user_id)))


async def recording_audio(
    session: AsyncSession, store: AdapterStore, principal: Principal, user_id: str, rid: str
) -> bytes:
    """The stored FLAC, verified against its checksum (500 when missing or damaged)."""
    recording = await _owned(session, principal, user_id, rid, speaker=True)
    try:
        return await store.bind(session).get(recording.blob_key)
    except BlobNotFoundError as exc:
        raise DataIntegrityError(
            f"The audio of recording {rid!r} is missing.", code="recording_audio_missing"
        ) from exc
    except BlobCorruptedError as exc:
        raise DataIntegrityError(
            f"The audio of recording {rid!r} fails its checksum.", code="recording_audio_corrupt"
        ) from exc


async def delete_recording(
    session: AsyncSession, store: AdapterStore, principal: Principal, user_id: str, rid: str
) -> None:
    """A job that was to train on it trains without it; adapters trained on it stay."""
    recording = await _owned(session, principal, user_id, rid, speaker=False)
    await RecordingRepository(session).delete(recording)
    await store.bind(session).delete(recording.blob_key)


async def _owned(
    session: AsyncSession, principal: Principal, user_id: str, rid: str, *, speaker: bool
) -> Recording:
    if speaker:
        principal.require_speaker_access_to(user_id)
    else:
        principal.require_access_to(user_id)
    recording = await RecordingRepository(session).get_for_user(user_id, rid)
    if recording is None:
        raise NotFoundError(f"No recording with id {rid!r}.", param="recording_id")
    return recording


async def store_recordings(
    store: AdapterStore,
    user_id: str,
    checked: list[CheckedRecording],
    origin: RecordingOrigin,
    enrolment_id: str | None = None,
) -> list[Recording]:
    """Writes each recording's audio to the store; returns the rows to record (not added)."""
    recordings = []
    for item in checked:
        recording_id = new_id()
        key = recording_key(user_id, recording_id)
        await store.put(key, await asyncio.to_thread(flac, item.audio))
        recordings.append(
            Recording(
                id=recording_id,
                user_id=user_id,
                enrolment_id=enrolment_id,
                origin=origin,
                transcript=item.transcript,
                blob_key=key,
                duration_seconds=round(item.seconds, 3),
            )
        )
    return recordings


async def undo_stored(store: AdapterStore, recordings: list[Recording]) -> None:
    """Removes what storing `recordings` wrote outside the database: a transaction that rolls
    back takes the rest with it (and may no longer be usable)."""
    if store.joins_transactions:
        return
    for recording in recordings:
        await store.delete(recording.blob_key)


async def stored_utterance(store: AdapterStore, recording: Recording) -> Utterance:
    """The recording's audio and transcript, as training reads them."""
    data = await store.get(recording.blob_key)
    audio, _ = sf.read(io.BytesIO(data), dtype="float32")
    return Utterance(audio=np.ascontiguousarray(audio), text=recording.transcript)
