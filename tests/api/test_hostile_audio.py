"""Hostile audio over HTTP: refused with a clean 400 before it costs memory, long audio served
spooled, and the queue bounded by the seconds of audio pending as well as by requests."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.engine.text import wer
from app.engine.whisper import WhisperEngine
from app.main import create_app
from tests.api.test_live_server import GatedRecognizer
from tests.conftest import ADMIN, make_settings
from tests.engine.test_audio import flac_declaring
from tests.support.api import assert_openai_error
from tests.support.audio import SAMPLE_RATE, silence, sine, speech_16k, to_bytes

FOX = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def fox() -> np.ndarray:
    return speech_16k(FOX, voice="en-us", speed=120)


async def _post(client: httpx.AsyncClient, audio: bytes) -> httpx.Response:
    return await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("audio.bin", audio)},
        data={"model": "whisper-1"},
        headers=ADMIN,
    )


async def test_refusals_are_clean_400s(client: httpx.AsyncClient) -> None:
    declared_5_hours = flac_declaring(sine(440.0, 2.0), 5 * 3600 * SAMPLE_RATE)
    error = assert_openai_error(await _post(client, declared_5_hours), 400)
    assert error["code"] == "invalid_audio"
    assert error["message"] == "The audio is longer than the maximum of 14400 seconds."
    one_hertz = to_bytes(sine(0.1, 3000.0, rate=1), 1)
    error = assert_openai_error(await _post(client, one_hertz), 400)
    assert "sample rate of 1 Hz" in str(error["message"])


async def test_long_audio_is_served_spooled(client: httpx.AsyncClient, fox: np.ndarray) -> None:
    three_minutes = np.concatenate([silence(170.0), fox])  # over the 2 minutes kept in memory
    response = await _post(client, to_bytes(three_minutes, SAMPLE_RATE, "FLAC", "PCM_16"))
    assert response.status_code == 200, response.text
    assert wer([FOX], [response.json()["text"]]) <= 0.3


@pytest.fixture
async def gated_app(
    tmp_path: Path, tiny_en_dir: Path, nf4_engine: WhisperEngine
) -> AsyncIterator[tuple[FastAPI, GatedRecognizer]]:
    settings = make_settings(
        tmp_path / "data",
        model={"path": tiny_en_dir},
        queue={"max_pending_audio_s": 5.0},
        enrolment={"worker": False},
    )
    gated = GatedRecognizer(nf4_engine)
    application = create_app(settings, recognizer=gated)  # type: ignore[arg-type]
    async with application.router.lifespan_context(application):
        yield application, gated
    gated.gate.set()


async def test_the_queue_is_bounded_by_pending_audio_seconds(
    gated_app: tuple[FastAPI, GatedRecognizer], fox: np.ndarray
) -> None:
    app, gated = gated_app
    three_seconds = to_bytes(np.resize(fox, 3 * SAMPLE_RATE), SAMPLE_RATE)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as http:
        first = asyncio.create_task(_post(http, three_seconds))
        await asyncio.to_thread(gated.started.wait, 30)  # counted as pending: 3 s of 5
        refused = await _post(http, three_seconds)
        assert_openai_error(refused, 503)
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "2"
        gated.gate.set()
        assert (await first).status_code == 200
        assert (await _post(http, three_seconds)).status_code == 200  # room again
