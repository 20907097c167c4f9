"""Batched long-form through the API: srt, vtt and verbose_json place every sentence of a long
recording where it was said, across windows cut at pauses."""

import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.engine.whisper import LongformPolicy, WhisperEngine
from app.main import create_app
from tests.conftest import ADMIN
from tests.support.audio import SAMPLE_RATE, to_bytes
from tests.support.speech import ReadAloud, read_aloud

SENTENCES = (
    "Please close the kitchen window before you go to bed tonight.",
    "Could you help me carry these heavy boxes up to the attic?",
    "We painted the living room a pale shade of green last spring.",
    "Remember to take the rubbish out on Tuesday evening.",
    "Where did you put the spare key for the garden shed?",
    "I need to fix the dripping tap in the upstairs bathroom.",
    "Please fold the towels and put them in the second drawer.",
    "We finally bought a new sofa after looking for three months.",
)
CUE = re.compile(r"(\d\d):(\d\d):(\d\d)[.,](\d\d\d) --> (\d\d):(\d\d):(\d\d)[.,](\d\d\d)")


@pytest.fixture(scope="module")
def recording() -> ReadAloud:
    return read_aloud(SENTENCES, pause_s=2.0)


@pytest.fixture(scope="module")
def batched_engine(tiny_en_dir: Path) -> WhisperEngine:
    return WhisperEngine.load(
        tiny_en_dir, precision="nf4", device="cpu", threads=2, longform=LongformPolicy("batched")
    )


@pytest.fixture
async def client(
    settings: Settings, batched_engine: WhisperEngine
) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings, recognizer=batched_engine)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=300) as http:
            yield http


async def _transcribe(
    client: httpx.AsyncClient, recording: ReadAloud, **form: str
) -> httpx.Response:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("long.wav", to_bytes(recording.audio, SAMPLE_RATE))},
        data={"model": "whisper-1", **form},
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    return response


def _cues(text: str) -> list[tuple[float, float]]:
    def seconds(h: str, m: str, s: str, ms: str) -> float:
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(seconds(*g[:4]), seconds(*g[4:])) for g in CUE.findall(text)]


def _assert_each_sentence_placed(spans: list[tuple[float, float]], recording: ReadAloud) -> None:
    """Cues in order, none overlapping, and every sentence's start inside a cue (within 1 s)."""
    assert spans == sorted(spans)
    assert all(end <= after + 1e-6 for (_, end), (after, _) in itertools.pairwise(spans))
    for start, _ in recording.spans:
        assert any(a - 1.0 <= start <= b for a, b in spans), (start, spans)


async def test_subtitles_place_every_sentence_across_windows(
    client: httpx.AsyncClient, recording: ReadAloud
) -> None:
    assert len(recording.audio) / SAMPLE_RATE > 45.0  # more than one window
    srt = await _transcribe(client, recording, response_format="srt")
    vtt = await _transcribe(client, recording, response_format="vtt")

    assert srt.text.startswith("1\n")
    assert vtt.text.startswith("WEBVTT")
    _assert_each_sentence_placed(_cues(srt.text), recording)
    assert _cues(vtt.text) == _cues(srt.text)


async def test_verbose_json_segments_carry_their_window(
    client: httpx.AsyncClient, recording: ReadAloud
) -> None:
    body = (await _transcribe(client, recording, response_format="verbose_json")).json()

    segments = body["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    _assert_each_sentence_placed([(s["start"], s["end"]) for s in segments], recording)
    assert len({s["seek"] for s in segments}) > 1  # decoded in more than one window
    assert segments[-1]["end"] <= body["duration"]
