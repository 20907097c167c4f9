"""Long audio through the engine: spooled to a file, featurised a window at a time, and the
scan for the features' maximum spread over rounds so that nobody waits for it."""

import numpy as np
import pytest

from app.engine.audio import DecodedAudio, decode_audio_spooled
from app.engine.text import wer
from app.engine.types import TranscriptionOptions
from app.engine.whisper import SCANNING, WhisperEngine, WindowJob
from tests.engine.conftest import QUICK_BROWN_FOX
from tests.support.audio import SAMPLE_RATE, silence, speech_16k, to_bytes

GREEDY = TranscriptionOptions(language="en", with_timestamps=False)


@pytest.fixture(scope="module")
def fox() -> np.ndarray:
    return speech_16k(QUICK_BROWN_FOX, voice="en-us", speed=120)  # tiny.en's best pace


def test_spooled_audio_transcribes_exactly_like_the_array(
    nf4_engine: WhisperEngine, fox: np.ndarray
) -> None:
    rng = np.random.default_rng(0)
    quiet = rng.normal(0.0, 3e-3, 70 * SAMPLE_RATE).astype(np.float32)  # room tone, not zeros
    signal = np.concatenate([fox, quiet, silence(60.0), fox])
    data = to_bytes(signal, SAMPLE_RATE, "WAV", "FLOAT")
    with decode_audio_spooled(data, memory_s=10.0) as spooled:
        assert spooled.spilled
        expected = nf4_engine.transcribe(spooled.read(0, len(spooled)), GREEDY)
        assert nf4_engine.transcribe(spooled, GREEDY) == expected  # segments, floats and all
    assert expected.text.lower().count("lazy dog") == 2, expected.text


def test_a_long_request_scans_between_rounds_while_others_decode(
    nf4_engine: WhisperEngine, fox: np.ndarray
) -> None:
    ten_minutes = DecodedAudio.from_array(silence(600.0))
    long_task = nf4_engine.open(ten_minutes, GREEDY)
    short_task = nf4_engine.open(fox, GREEDY)
    assert long_task is not None
    assert short_task is not None
    assert long_task.job is SCANNING
    assert [type(job) for job in short_task.jobs()] == [WindowJob]

    nf4_engine.run_round([long_task, short_task])
    assert long_task.job is SCANNING  # one part of its scan per round
    assert short_task.decoding  # its decode started in the first round

    rounds = 1
    while not (long_task.done and short_task.done):
        nf4_engine.run_round([task for task in (long_task, short_task) if not task.done])
        rounds += 1
    assert wer([QUICK_BROWN_FOX], [short_task.outcome().text]) <= 0.3
    long = long_task.outcome()
    assert long.text == ""
    assert long.duration == 600.0
    assert rounds > 50  # 63000 frames: 6000 scanned in `open`, then 1000 a round
