"""The rules every uploaded recording meets, whether it comes with an enrolment or on its own
(a correction): size, transcript, decodable audio within the per-file length limits."""

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from app.config import EnrolmentSettings
from app.engine.audio import SAMPLE_RATE, decode_audio
from app.engine.errors import AudioDecodeError
from app.errors import BadRequestError, InvalidAudioError
from app.text_rules import unprintable_character


@dataclass(frozen=True, slots=True)
class UploadedRecording:
    filename: str
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckedRecording:
    audio: np.ndarray
    """16 kHz mono float32."""
    transcript: str
    """Stripped, with runs of whitespace made one space."""

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def check_file_size(recording: UploadedRecording, param: str, limits: EnrolmentSettings) -> None:
    if len(recording.data) > limits.max_file_bytes:
        raise BadRequestError(
            f"{param} is larger than {limits.max_file_bytes} bytes.",
            param=param,
            code="file_too_large",
        )


def checked_transcript(transcript: str, param: str, limits: EnrolmentSettings) -> str:
    text = transcript.strip()
    if not text:
        raise BadRequestError(f"{param} is empty.", param=param)
    found = unprintable_character(text, allow_whitespace=True)
    if found is not None:
        raise BadRequestError(f"{param} contains a control character ({found}).", param=param)
    if len(text) > limits.max_transcript_chars:
        raise BadRequestError(
            f"{param} is longer than {limits.max_transcript_chars} characters.", param=param
        )
    return " ".join(text.split())


def decode_recording(
    recording: UploadedRecording, param: str, limits: EnrolmentSettings
) -> np.ndarray:
    """The audio, refused when undecodable, shorter than `min_file_seconds` or longer than
    `max_file_seconds` (training sees one 30 s window per recording). Blocking: run it off the
    event loop."""
    try:
        audio = decode_audio(recording.data, max_duration_s=limits.max_file_seconds)
    except AudioDecodeError as exc:
        raise InvalidAudioError(f"{param} ({recording.filename!r}): {exc}", param=param) from exc
    seconds = len(audio) / SAMPLE_RATE
    if seconds < limits.min_file_seconds:
        raise InvalidAudioError(
            f"{param} is {seconds:.2f} s long; each recording needs at least "
            f"{limits.min_file_seconds} s of audio.",
            param=param,
        )
    return audio


def flac(audio: np.ndarray) -> bytes:
    """How recordings are kept: 16 kHz 16-bit FLAC."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
