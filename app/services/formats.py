"""Renders a transcription in the OpenAI `response_format`s."""

from typing import Any, Literal

from app.engine.types import Segment, Transcription

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


def to_json(transcription: Transcription) -> dict[str, Any]:
    return {"text": transcription.text}


def to_verbose_json(transcription: Transcription) -> dict[str, Any]:
    """With word timestamps (asked for with `timestamp_granularities[]=word`), `words` lists
    every segment's words in order, as OpenAI's API does."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": _language_name(transcription.language),
        "duration": round(transcription.duration, 3),
        "text": transcription.text,
        "segments": [_segment_json(segment) for segment in transcription.segments],
    }
    if any(segment.words is not None for segment in transcription.segments):
        body["words"] = [
            {"word": word.word.strip(), "start": word.start, "end": word.end}
            for segment in transcription.segments
            for word in segment.words or []
        ]
    return body


def to_text(transcription: Transcription) -> str:
    return transcription.text + "\n"


def to_srt(transcription: Transcription) -> str:
    blocks = [
        f"{index}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for index, s in enumerate(transcription.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcription: Transcription) -> str:
    blocks = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in transcription.segments
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def _segment_json(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": segment.tokens,
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def _timestamp(seconds: float, decimal_marker: str) -> str:
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


_LANGUAGE_NAMES = {
    "en": "english",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "nl": "dutch",
    "pt": "portuguese",
    "el": "greek",
}


def _language_name(code: str) -> str:
    # OpenAI reports the language by name in verbose_json.
    return _LANGUAGE_NAMES.get(code, code)
