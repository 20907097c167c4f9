"""Hostile audio: hours of silence in every container, 255 channels, extreme sample rates,
declared durations that lie, truncated, corrupt and empty files.

Every input is generated here (sox, libsndfile, PyAV's ffmpeg, numpy). Each one must give a clean
`AudioDecodeError` (a 400 from the API) or audio that transcribes correctly, and decoding holds at
most a few blocks in memory whatever the duration: the traced peak (numpy's allocations
included) stays under `DECODE_PEAK_BYTES`, where holding 10 minutes whole would take 38 MiB and 4
hours 921 MB.
"""

import subprocess
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soxr

from app.engine.audio import DecodedAudio, decode_audio_spooled
from app.engine.errors import AudioDecodeError
from app.engine.text import wer
from app.engine.types import TranscriptionOptions
from app.engine.whisper import WhisperEngine
from tests.engine.test_audio import flac_declaring
from tests.support.audio import SAMPLE_RATE, encode_with_pyav, sine, speech_16k, to_bytes

LIMIT_S = 4 * 3600.0  # PQM_MAX_AUDIO_SECONDS's default
DECODE_PEAK_BYTES = 32 * 2**20
FOX = "The quick brown fox jumps over the lazy dog."
GREEDY = TranscriptionOptions(language="en", with_timestamps=False)

Build = Callable[[Path, np.ndarray], bytes]


@dataclass(frozen=True)
class Case:
    build: Build
    error: str = ""
    """What its refusal says; empty when it must decode."""
    seconds: float | None = None
    """The duration it decodes to; None: the fox's own."""
    prefix: bool = False
    """Whether it decodes to a part of `seconds` only (truncated files)."""
    limit_s: float = LIMIT_S
    transcript: bool = False
    """Whether its decode must also transcribe to the fox."""


@pytest.fixture(scope="module")
def fox() -> np.ndarray:
    return speech_16k(FOX, voice="en-us", speed=120)


def _sox_silence(path: Path, duration: str, *options: str) -> bytes:
    """Digital silence from sox (-D: no dither, so it stays silence and compresses)."""
    subprocess.run(
        ["sox", "-D", "-n", "-r", "16000", "-c", "1", *options, str(path), "trim", "0", duration],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


def _silence(seconds: float, fmt: str, subtype: str | None) -> Build:
    return lambda _, __: to_bytes(
        np.zeros(round(seconds * SAMPLE_RATE), np.float32), SAMPLE_RATE, fmt, subtype
    )


def _webm_silence(seconds: float) -> Build:
    return lambda _, __: encode_with_pyav(
        np.zeros(round(seconds * SAMPLE_RATE), np.float32), SAMPLE_RATE, bit_rate=16_000
    )


def _channels(count: int) -> Build:
    """The fox on each of `count` channels (WAV, 16 bit)."""
    return lambda _, fox: to_bytes(np.repeat(fox[:, None], count, axis=1), SAMPLE_RATE)


def _at_rate(rate: int) -> Build:
    def build(_: Path, fox: np.ndarray) -> bytes:
        return to_bytes(np.asarray(soxr.resample(fox, SAMPLE_RATE, rate), np.float32), rate)

    return build


def _wav_at_1_hz(_: Path, __: np.ndarray) -> bytes:
    return to_bytes(sine(0.1, 3000.0, rate=1), 1)  # 50 minutes of 3000 samples


def _wav_declaring_rate(rate: int) -> Build:
    def build(_: Path, fox: np.ndarray) -> bytes:
        data = bytearray(to_bytes(fox, SAMPLE_RATE))
        data[24:28] = rate.to_bytes(4, "little")
        return bytes(data)

    return build


def _flac_declaring(frames: int, seconds: float = 120.0) -> Build:
    """`seconds` of tone in a FLAC whose STREAMINFO claims `frames` frames (0: unknown)."""

    return lambda _, __: flac_declaring(sine(440.0, seconds), frames)


def _cut(build: Build, keep: float) -> Build:
    return lambda path, fox: (lambda data: data[: max(1, int(len(data) * keep))])(build(path, fox))


def _damaged(build: Build) -> Build:
    def damage(path: Path, fox: np.ndarray) -> bytes:
        data = bytearray(build(path, fox))
        rng = np.random.default_rng(0)
        for at in rng.integers(64, len(data), 50):
            data[at] = int(rng.integers(256))
        return bytes(data)

    return damage


def _flac(_: Path, fox: np.ndarray) -> bytes:
    return to_bytes(fox, SAMPLE_RATE, "FLAC", "PCM_16")


def _mp3(_: Path, fox: np.ndarray) -> bytes:
    return to_bytes(fox, SAMPLE_RATE, "MP3", "MPEG_LAYER_III")


def _webm(_: Path, fox: np.ndarray) -> bytes:
    return encode_with_pyav(fox, SAMPLE_RATE)


TOO_LONG = "longer than the maximum of"
CORRUPT = "corrupt"
HOURS = pytest.mark.slow

CASES: dict[str, Case] = {
    "255 channels": Case(_channels(255), transcript=True),
    "8 kHz": Case(_at_rate(8_000)),  # decoded right; tiny.en mishears band-limited espeak
    "384 kHz": Case(_at_rate(384_000), transcript=True),
    "768 kHz": Case(_at_rate(768_000), transcript=True),
    "1 Hz": Case(_wav_at_1_hz, error="sample rate of 1 Hz is outside"),
    "1 Hz declared by a 16 kHz file": Case(_wav_declaring_rate(1), error=TOO_LONG),
    "2**31-1 Hz declared": Case(_wav_declaring_rate(2**31 - 1), error="2147483647 Hz is outside"),
    "flac declaring 5 h, holding 2 min": Case(
        _flac_declaring(5 * 3600 * SAMPLE_RATE), error=TOO_LONG
    ),
    "flac declaring no length, 2 min over a 60 s limit": Case(
        _flac_declaring(0), error=TOO_LONG, limit_s=60.0
    ),
    "flac declaring 10 s, holding 2 min": Case(_flac_declaring(10 * SAMPLE_RATE), seconds=10.0),
    "flac truncated": Case(_cut(_flac, 0.5), error=CORRUPT),
    "flac damaged": Case(_damaged(_flac), error=CORRUPT),
    "mp3 truncated": Case(_cut(_mp3, 0.5), prefix=True),
    "mp3 damaged": Case(_damaged(_mp3), prefix=True),
    "webm truncated": Case(_cut(_webm, 0.5), prefix=True),
    "webm damaged": Case(_damaged(_webm), prefix=True),
    "zero bytes": Case(lambda _, __: b"", error="empty"),
    "wav without frames": Case(_silence(0.0, "WAV", "PCM_16"), error="contains no audio"),
    "ebml header only": Case(lambda _, __: b"\x1a\x45\xdf\xa3" + bytes(100), error="Invalid"),
}

LONG_CASES: dict[str, Case] = {
    "flac, 4 h of silence": Case(
        lambda path, _: _sox_silence(path / "4h.flac", "4:00:00", "-b", "16"), seconds=LIMIT_S
    ),
    "flac, 4 h 10 s of silence (declared)": Case(
        lambda path, _: _sox_silence(path / "4h10s.flac", "4:00:10", "-b", "16"), error=TOO_LONG
    ),
    "mp3, 1 h of silence": Case(_silence(3600.0, "MP3", "MPEG_LAYER_III"), seconds=3600.0),
    "mp3, 1 h of silence over a 30 min limit": Case(
        _silence(3600.0, "MP3", "MPEG_LAYER_III"), error=TOO_LONG, limit_s=1800.0
    ),
    "ogg/opus, 20 min of silence": Case(_silence(1200.0, "OGG", "OPUS"), seconds=1200.0),
    "webm/opus, 10 min of silence": Case(_webm_silence(600.0), seconds=600.0),
    "webm/opus, 10 min of silence over a 5 min limit": Case(
        _webm_silence(600.0), error=TOO_LONG, limit_s=300.0
    ),
}


def _decode(data: bytes, limit_s: float) -> tuple[DecodedAudio | AudioDecodeError, int]:
    """The decode (or its error) and the traced peak of memory while decoding."""
    tracemalloc.start()
    try:
        audio = decode_audio_spooled(data, max_duration_s=limit_s)
        return audio, tracemalloc.get_traced_memory()[1]
    except AudioDecodeError as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _check(case: Case, tmp_path: Path, fox: np.ndarray, engine: WhisperEngine | None) -> None:
    data = case.build(tmp_path, fox)
    outcome, peak = _decode(data, case.limit_s)
    assert peak < DECODE_PEAK_BYTES, f"{peak / 2**20:.1f} MiB traced while decoding"
    if isinstance(outcome, AudioDecodeError):
        assert case.error, f"refused: {outcome}"
        assert case.error in str(outcome)
        return
    assert not case.error, f"decoded {outcome.duration_s:.2f} s; expected {case.error!r}"
    with outcome:
        expected = fox.shape[0] / SAMPLE_RATE if case.seconds is None else case.seconds
        if case.prefix:
            assert 0 < outcome.duration_s < expected
        else:
            assert outcome.duration_s == pytest.approx(expected, abs=0.1)
        assert outcome.spilled == (outcome.duration_s > 120.0)
        if case.transcript:
            assert engine is not None
            text = engine.transcribe(outcome, GREEDY).text
            assert wer([FOX], [text]) <= 0.3, text


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_audio(
    name: str, tmp_path: Path, fox: np.ndarray, nf4_engine: WhisperEngine
) -> None:
    _check(CASES[name], tmp_path, fox, nf4_engine)


@HOURS
@pytest.mark.parametrize("name", list(LONG_CASES))
def test_hours_of_silence(name: str, tmp_path: Path, fox: np.ndarray) -> None:
    _check(LONG_CASES[name], tmp_path, fox, None)
