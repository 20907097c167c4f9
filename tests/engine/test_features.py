"""`LogMelStream` gives `log_mel`'s features bit for bit, a range of frames at a time."""

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from app.engine.audio import DecodedAudio, decode_audio_spooled
from app.engine.features import (
    FIRST_SCAN_FRAMES,
    SCAN_FRAMES,
    WINDOW_FRAMES,
    LogMelStream,
    log_mel,
)
from tests.support.audio import SAMPLE_RATE, scale_to_dbfs, speech_16k, to_bytes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor()  # Whisper's 80-mel front end (tiny.en's)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return scale_to_dbfs(speech_16k("Please call me back tomorrow morning."), -6.0)


def _scanned(extractor: WhisperFeatureExtractor, audio: DecodedAudio) -> tuple[LogMelStream, int]:
    """Scanned as the engine scans: a first step that covers clips, then smaller ones."""
    stream = LogMelStream(extractor, audio)
    steps = 1
    scanned = stream.scan(FIRST_SCAN_FRAMES)
    while not scanned:
        steps += 1
        scanned = stream.scan()
    return stream, steps


def _ranges(total: int) -> list[tuple[int, int]]:
    """Whole windows, then the odd ranges long-form decoding asks for (any seek, any length)."""
    windows = [
        (start, min(start + WINDOW_FRAMES, total)) for start in range(0, total, WINDOW_FRAMES)
    ]
    odd = [(0, 1), (1, 2), (7, 8), (199, 215), (2999, 3001), (1234, 4234), (total - 1, total)]
    return windows + [(a, b) for a, b in odd if b <= total]


def test_long_spooled_audio_matches_the_whole_signal(
    extractor: WhisperFeatureExtractor, speech: np.ndarray
) -> None:
    rng = np.random.default_rng(0)
    room = rng.normal(0.0, 1e-3, SAMPLE_RATE * 20).astype(np.float32)
    pieces = [speech, room, speech * 0.1, np.zeros(SAMPLE_RATE * 15, np.float32)]
    signal = np.concatenate(pieces * 3)  # about 105 s: speech, room tone, digital silence
    data = to_bytes(signal, SAMPLE_RATE, "WAV", "FLOAT")
    with decode_audio_spooled(data, memory_s=5.0) as audio:
        assert audio.spilled
        reference = log_mel(extractor, audio.read(0, len(audio)), CPU)
        stream, steps = _scanned(extractor, audio)
        assert stream.total_frames == reference.shape[1]
        assert steps == 1 + -(-(stream.total_frames - FIRST_SCAN_FRAMES) // SCAN_FRAMES)
        for start, stop in _ranges(stream.total_frames):
            assert torch.equal(stream.frames(start, stop), reference[:, start:stop]), (start, stop)


@pytest.mark.parametrize("samples", [1, 150, 201, 16_000, 29 * SAMPLE_RATE + 17])
def test_clips_match_and_scan_in_one_step(
    extractor: WhisperFeatureExtractor, speech: np.ndarray, samples: int
) -> None:
    """Clips under 30 s (reflected from fewer samples than the STFT's half window, too)."""
    audio = np.resize(speech, samples)
    reference = log_mel(extractor, audio, CPU)
    stream, steps = _scanned(extractor, DecodedAudio.from_array(audio))
    assert steps == 1
    for start, stop in _ranges(stream.total_frames):
        assert torch.equal(stream.frames(start, stop), reference[:, start:stop]), (start, stop)


@pytest.mark.parametrize("zero", [0.0, -0.0])
def test_digital_silence_matches(extractor: WhisperFeatureExtractor, zero: float) -> None:
    audio = np.full(45 * SAMPLE_RATE, zero, np.float32)
    stream, _ = _scanned(extractor, DecodedAudio.from_array(audio))
    assert torch.equal(stream.frames(0, stream.total_frames), log_mel(extractor, audio, CPU))


def test_frames_need_the_whole_scan(extractor: WhisperFeatureExtractor) -> None:
    stream = LogMelStream(extractor, DecodedAudio.from_array(np.zeros(SAMPLE_RATE * 70)))
    assert not stream.scan()
    with pytest.raises(RuntimeError, match="scan"):
        stream.frames(0, 10)
    while not stream.scan():
        pass
    with pytest.raises(ValueError, match="outside"):
        stream.frames(0, stream.total_frames + 1)
