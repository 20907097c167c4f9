"""POST /v1/audio/translations: English text from speech in another language on a multilingual
model (the bundled base), a plain 400 on an English-only one."""

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from openai import BadRequestError

from app.config import Settings
from app.engine.text import normalise_text
from app.engine.whisper import WhisperEngine
from app.main import create_app
from tests.conftest import ADMIN, ADMIN_KEY, make_settings
from tests.support.api import assert_openai_error, openai_client
from tests.support.audio import SAMPLE_RATE, speech_16k, to_bytes

GERMAN = to_bytes(speech_16k("Das Wetter ist heute sehr schön und warm.", voice="de"), SAMPLE_RATE)


@pytest.fixture
async def base_client(
    base_dir: Path, base_engine: WhisperEngine, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings: Settings = make_settings(tmp_path / "data", model={"path": base_dir})
    application = create_app(settings, recognizer=base_engine)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as http:
            yield http


async def test_a_multilingual_model_translates_into_english(
    base_client: httpx.AsyncClient,
) -> None:
    response = await base_client.post(
        "/v1/audio/translations",
        files={"file": ("de.wav", GERMAN)},
        data={"model": "whisper-1", "response_format": "verbose_json"},
        headers=ADMIN,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["language"] == "german"  # what it was translated from
    assert set(normalise_text(body["text"]).split()) & {"the", "is", "and", "i", "my", "we"}


async def test_an_english_only_model_says_it_cannot_translate(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/audio/translations",
        files={"file": ("de.wav", GERMAN)},
        data={"model": "whisper-1"},
        headers=ADMIN,
    )

    error = assert_openai_error(response, 400)
    assert error["param"] == "model"
    assert "English-only" in str(error["message"])


async def test_the_openai_client_reaches_translations(app: FastAPI) -> None:
    openai = openai_client(app, ADMIN_KEY)
    with pytest.raises(BadRequestError, match="translation needs a multilingual"):
        await openai.audio.translations.create(model="whisper-1", file=("de.wav", GERMAN))
