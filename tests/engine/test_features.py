"""`LogMelStream` gives `log_mel`'s features bit for bit, a range of frames at a time."""

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from app.engine.audio import DecodedAudio, decode_audio_spooled
from app.engine.features import SCAN_FRAMES, WINDOW_FRAMES, LogMelStream, log_mel
from tests.support.audio import SAMPLE_RATE, scale_to_dbfs, speech_16k, to_bytes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor()  # Whisper's 80-mel front end (tiny.en's)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return scale_to_dbfs(speech_16k("Please call me back tomorrow morning."), -6.0)


def _scanned(extractor: WhisperFeatureExtractor, audio: DecodedAudio) -> tuple[LogMelStream, int]:
    stream = LogMelStream(extractor, audio)
    steps = 1
    while not stream.scan():
        steps += 1
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
    pieces = [speech, np.zeros(SAMPLE_RATE * 20, np.float32), speech * 0.1]
    signal = np.concatenate(pieces * 3)
    signal += rng.normal(0.0, 1e-3, signal.shape).astype(np.float32)  # 95 s, never one level
    data = to_bytes(signal, SAMPLE_RATE, "WAV", "FLOAT")
    with decode_audio_spooled(data, memory_s=5.0) as audio:
        assert audio.spilled
        reference = log_mel(extractor, audio.read(0, len(audio)), CPU)
        stream, steps = _scanned(extractor, audio)
        assert stream.total_frames == reference.shape[1]
        assert steps == -(-stream.total_frames // SCAN_FRAMES)
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


def test_digital_silence_matches(extractor: WhisperFeatureExtractor) -> None:
    audio = np.zeros(45 * SAMPLE_RATE, np.float32)
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
