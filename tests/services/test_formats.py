"""The OpenAI `response_format` renderings of a hand-built transcription, to the character."""

import json

import pytest
from openai.types.audio import TranscriptionSegment, TranscriptionVerbose

from app.engine.types import Segment, Transcription
from app.services.formats import to_json, to_srt, to_text, to_verbose_json, to_vtt


def segment(index: int, start: float, end: float, text: str, **fields: object) -> Segment:
    values: dict[str, object] = {
        "id": index,
        "seek": 0,
        "start": start,
        "end": end,
        "text": text,
        "tokens": [50363, 100 + index, 50400],
        "temperature": 0.0,
        "avg_logprob": -0.25,
        "compression_ratio": 1.1,
        "no_speech_prob": 0.01,
        **fields,
    }
    return Segment(**values)  # type: ignore[arg-type]


TRANSCRIPTION = Transcription(
    text="Hello there. General Kenobi! The end.",
    language="en",
    duration=3663.0004,
    segments=[
        segment(0, 0.0, 2.5, " Hello there."),
        segment(1, 2.5, 61.25, " General Kenobi! ", seek=3000, temperature=0.2),
        segment(2, 3659.9996, 3661.5, "  The end.", seek=366000),
    ],
)
EMPTY = Transcription(text="", language="en", duration=0.0, segments=[])


def test_srt_exact() -> None:
    assert to_srt(TRANSCRIPTION) == (
        "1\n"
        "00:00:00,000 --> 00:00:02,500\n"
        "Hello there.\n"
        "\n"
        "2\n"
        "00:00:02,500 --> 00:01:01,250\n"
        "General Kenobi!\n"
        "\n"
        "3\n"
        "01:01:00,000 --> 01:01:01,500\n"
        "The end.\n"
    )


def test_vtt_exact() -> None:
    assert to_vtt(TRANSCRIPTION) == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:02.500\n"
        "Hello there.\n"
        "\n"
        "00:00:02.500 --> 00:01:01.250\n"
        "General Kenobi!\n"
        "\n"
        "01:01:00.000 --> 01:01:01.500\n"
        "The end.\n"
    )


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (0.001, "00:00:00,001", "00:00:00.001"),
        (59.999, "00:00:59,999", "00:00:59.999"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3599.9999, "01:00:00,000", "01:00:00.000"),
        (3661.5, "01:01:01,500", "01:01:01.500"),
        (36000.0, "10:00:00,000", "10:00:00.000"),
        (-0.2, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds: float, srt: str, vtt: str) -> None:
    one = Transcription(
        text="x", language="en", duration=seconds, segments=[segment(0, seconds, seconds, "x")]
    )
    assert to_srt(one) == f"1\n{srt} --> {srt}\nx\n"
    assert to_vtt(one) == f"WEBVTT\n\n{vtt} --> {vtt}\nx\n"


def test_empty_transcription_renders_valid_documents() -> None:
    assert to_srt(EMPTY) == ""
    assert to_vtt(EMPTY) == "WEBVTT\n"
    assert to_text(EMPTY) == "\n"
    assert to_json(EMPTY) == {"text": ""}
    verbose = to_verbose_json(EMPTY)
    assert verbose["segments"] == []
    assert verbose["text"] == ""
    TranscriptionVerbose.model_validate(verbose)


def test_json_and_text() -> None:
    assert to_json(TRANSCRIPTION) == {"text": "Hello there. General Kenobi! The end."}
    assert to_text(TRANSCRIPTION) == "Hello there. General Kenobi! The end.\n"


def test_verbose_json_has_openais_keys() -> None:
    verbose = to_verbose_json(TRANSCRIPTION)

    assert list(verbose) == ["task", "language", "duration", "text", "segments"]
    segment_keys = {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert segment_keys == set(TranscriptionSegment.model_fields), "OpenAI's own segment model"
    for rendered in verbose["segments"]:
        assert set(rendered) == segment_keys
    # The OpenAI SDK parses it, and it is plain JSON.
    parsed = TranscriptionVerbose.model_validate(json.loads(json.dumps(verbose)))
    assert parsed.segments is not None
    assert len(parsed.segments) == 3


def test_verbose_json_values() -> None:
    verbose = to_verbose_json(TRANSCRIPTION)

    assert verbose["task"] == "transcribe"
    assert verbose["language"] == "english"
    assert verbose["duration"] == 3663.0
    assert verbose["text"] == TRANSCRIPTION.text
    assert verbose["segments"][1] == {
        "id": 1,
        "seek": 3000,
        "start": 2.5,
        "end": 61.25,
        "text": " General Kenobi! ",
        "tokens": [50363, 101, 50400],
        "temperature": 0.2,
        "avg_logprob": -0.25,
        "compression_ratio": 1.1,
        "no_speech_prob": 0.01,
    }
    assert verbose["segments"][2]["start"] == 3660.0
    assert [s["id"] for s in verbose["segments"]] == [0, 1, 2]


@pytest.mark.parametrize(("code", "name"), [("de", "german"), ("el", "greek"), ("xx", "xx")])
def test_verbose_json_names_the_language(code: str, name: str) -> None:
    one = Transcription(text="", language=code, duration=1.0)
    assert to_verbose_json(one)["language"] == name
