"""Over a real socket: the official openai client, backpressure, and dropping abandoned work."""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from openai import OpenAI

from app.engine.adaptation.lora.file import AdapterWeights
from app.engine.text import wer
from app.engine.types import TranscriptionOptions
from app.engine.whisper import TranscriptionTask, WhisperEngine
from app.main import create_app
from tests.conftest import ADMIN, ADMIN_KEY, make_settings
from tests.support.audio import speech_16k, to_bytes

FOX = "The quick brown fox jumps over the lazy dog."


class GatedRecognizer:
    """The real engine behind a gate the test opens, to hold requests in flight on purpose:
    a request starts (`open`) only once the gate is open."""

    def __init__(self, engine: WhisperEngine) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def open(
        self,
        audio: np.ndarray,
        options: TranscriptionOptions,
        adapter: AdapterWeights | None = None,
    ) -> TranscriptionTask | None:
        self.calls += 1
        self.started.set()
        assert self.gate.wait(timeout=60)
        return self._engine.open(audio, options, adapter)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LiveServer:
    def __init__(self, recognizer: object, data_dir: Path, max_pending: int) -> None:
        settings = make_settings(data_dir, queue={"max_pending": max_pending})
        self.port = _free_port()
        config = uvicorn.Config(
            create_app(settings, recognizer=recognizer),  # type: ignore[arg-type]
            host="127.0.0.1",
            port=self.port,
            log_config=None,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def fox_wav() -> bytes:
    return to_bytes(speech_16k(FOX, voice="en-us", speed=120), 16_000)


@pytest.fixture
def gated(nf4_engine: WhisperEngine) -> GatedRecognizer:
    return GatedRecognizer(nf4_engine)


@pytest.fixture
def live(gated: GatedRecognizer, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(gated, tmp_path / "data", max_pending=2) as server:
        yield server
    gated.gate.set()


def test_official_openai_client_unchanged(
    live: LiveServer, gated: GatedRecognizer, fox_wav: bytes
) -> None:
    gated.gate.set()
    created = httpx.post(f"{live.url}/v1/users", json={"name": "alice"}, headers=ADMIN).json()
    client = OpenAI(base_url=f"{live.url}/v1", api_key=created["api_key"])
    result = client.audio.transcriptions.create(model="whisper-tiny.en", file=("fox.wav", fox_wav))
    assert wer([FOX], [result.text]) <= 0.3
    srt = client.audio.transcriptions.create(
        model="whisper-1", file=("fox.wav", fox_wav), response_format="srt"
    )
    assert "-->" in str(srt)
    assert [model.id for model in client.models.list()] == ["whisper-tiny.en", "whisper-1"]


async def _post(url: str, wav: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )


async def test_full_queue_answers_503_with_retry_after(
    live: LiveServer, gated: GatedRecognizer, fox_wav: bytes
) -> None:
    first = asyncio.create_task(_post(live.url, fox_wav))
    await asyncio.to_thread(gated.started.wait, 30)
    second = asyncio.create_task(_post(live.url, fox_wav))
    await asyncio.sleep(0.5)  # let it reach the queue
    refused = await _post(live.url, fox_wav)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "overloaded"
    gated.gate.set()
    assert (await first).status_code == 200
    assert (await second).status_code == 200


async def test_abandoned_request_is_never_computed(
    live: LiveServer, gated: GatedRecognizer, fox_wav: bytes
) -> None:
    first = asyncio.create_task(_post(live.url, fox_wav))
    await asyncio.to_thread(gated.started.wait, 30)
    abandoned = asyncio.create_task(_post(live.url, fox_wav))
    await asyncio.sleep(0.5)  # queued behind the first
    abandoned.cancel()  # the client hangs up
    await asyncio.sleep(0.5)  # the server notices within its poll interval
    gated.gate.set()
    assert (await first).status_code == 200
    await asyncio.sleep(0.5)
    assert gated.calls == 1
    # The freed slot is usable again.
    assert (await _post(live.url, fox_wav)).status_code == 200
    assert gated.calls == 2
